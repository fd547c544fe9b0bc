"""The log-log least-squares scaling exponent and its standard error."""

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.bench import MAX_FIT_ERROR, fit_exponent, fit_exponent_with_error
from visattn.bench.fit import fit_exponent_above_fixed_cost


@settings(max_examples=40, deadline=None)
@given(
    alpha=st.floats(-1.0, 3.0),
    log_c=st.floats(-10.0, 5.0),
    tokens=st.lists(st.integers(1, 10**6), min_size=2, max_size=8, unique=True),
)
def test_recovers_the_exponent_of_a_power_law(alpha, log_c, tokens):
    times = [math.exp(log_c) * n**alpha for n in tokens]
    assert fit_exponent(tokens, times) == pytest.approx(alpha, abs=1e-9)


def test_least_squares_through_noisy_points():
    rng = random.Random(0)
    tokens = [1024 * 2**i for i in range(8)]
    times = [3e-6 * n**2 * math.exp(rng.gauss(0.0, 0.05)) for n in tokens]
    assert fit_exponent(tokens, times) == pytest.approx(2.0, abs=0.05)


def test_known_least_squares_slope():
    # log-log points (0, 0), (1, 1), (2, 3): slope of the least-squares line is 1.5
    e = math.e
    assert fit_exponent([1, e, e * e], [1, e, e**3]) == pytest.approx(1.5)


def test_needs_two_distinct_token_counts():
    assert fit_exponent([64], [1.0]) is None
    assert fit_exponent([64, 64], [1.0, 2.0]) is None
    assert fit_exponent([], []) is None


@pytest.mark.parametrize(
    "tokens, times, match",
    [([1, 2], [1.0], "same length"), ([0, 2], [1.0, 2.0], "tokens"), ([1, 2], [1.0, 0.0], "times")],
)
def test_rejects_bad_input(tokens, times, match):
    with pytest.raises(ValueError, match=match):
        fit_exponent(tokens, times)


def test_standard_error_of_a_known_fit():
    # log-log points (0, 0), (1, 1), (2, 3): slope 1.5, residuals (1/6, -1/3, 1/6), Sxx = 2
    e = math.e
    fit = fit_exponent_with_error([1, e, e * e], [1, e, e**3])
    assert fit.alpha == pytest.approx(1.5) and fit.points == 3
    assert fit.stderr == pytest.approx(math.sqrt((1 / 36 + 1 / 9 + 1 / 36) / 1 / 2))
    assert not fit.sound()  # 0.29 > 0.1


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_synthetic_timings_give_the_exponent_within_its_error(alpha):
    rng = random.Random(1)
    tokens = [1024, 2304, 4096, 6400, 9216]
    noise = 0.03
    hits = 0
    for _ in range(200):
        times = [2e-6 * n**alpha * math.exp(rng.gauss(0.0, noise)) for n in tokens]
        fit = fit_exponent_with_error(tokens, times)
        assert fit.sound()
        hits += abs(fit.alpha - alpha) <= 3.182 * fit.stderr  # the 95% quantile of Student's t, 3 degrees of freedom
    assert 180 <= hits <= 199  # 190 expected, binomial standard deviation 3


def test_noisy_or_short_fits_are_not_sound():
    rng = random.Random(2)
    tokens = [1024, 2304, 4096]
    noisy = fit_exponent_with_error(tokens, [n * math.exp(rng.gauss(0.0, 0.5)) for n in tokens])
    assert noisy.stderr > MAX_FIT_ERROR and not noisy.sound()
    two = fit_exponent_with_error([1024, 4096], [1.0, 4.0])
    assert two.alpha == pytest.approx(1.0) and two.stderr is None and not two.sound()
    exact = fit_exponent_with_error(tokens, [float(n) for n in tokens])
    assert exact.sound() and exact.stderr == pytest.approx(0.0, abs=1e-12)
    assert exact.sound(min_points=4) is False
    assert fit_exponent_with_error([64, 64, 64], [1.0, 2.0, 3.0]) is None


@settings(max_examples=40, deadline=None)
@given(
    alpha=st.floats(0.5, 2.5),
    log_c=st.floats(-12.0, -2.0),
    fixed=st.floats(1e-3, 10.0),
    tokens=st.lists(st.integers(100, 10**5), min_size=3, max_size=6, unique=True),
)
def test_recovers_the_exponent_above_a_fixed_cost(alpha, log_c, fixed, tokens):
    n0 = 64
    times = [fixed + math.exp(log_c) * (n**alpha - n0**alpha) for n in tokens]
    fit = fit_exponent_above_fixed_cost(tokens, times, n0, fixed)
    assert fit.alpha == pytest.approx(alpha, abs=1e-6)
    assert fit.stderr == pytest.approx(0.0, abs=1e-5) and fit.points == len(tokens)
    assert (fit.fixed_ms, fit.fixed_tokens) == (fixed, n0)


def test_fixed_cost_fit_against_a_written_out_least_squares():
    # residual sum of squares over a fine alpha grid, log c solved per alpha: the fit sits at its minimum
    tokens, times, n0, t0 = [1024, 2304, 4096], [0.34, 0.65, 1.14], 64, 0.104
    fit = fit_exponent_above_fixed_cost(tokens, times, n0, t0)

    def loss(a):
        d = [math.log(t - t0) - math.log(n**a - n0**a) for n, t in zip(tokens, times, strict=True)]
        mean = sum(d) / len(d)
        return sum((x - mean) ** 2 for x in d)

    best = min((loss(a / 10000), a / 10000) for a in range(5000, 15001))[1]
    assert fit.alpha == pytest.approx(best, abs=2e-4)
    assert 0.0 < fit.stderr < 0.1


def test_fixed_cost_fit_needs_times_above_the_fixed_cost():
    assert fit_exponent_above_fixed_cost([1024, 2304, 4096], [0.1, 0.5, 1.0], 64, 0.2) is None
    assert fit_exponent_above_fixed_cost([32, 1024], [0.1, 0.5], 64, 0.05) is None  # one size above N0
    fit = fit_exponent_above_fixed_cost([1024, 4096], [0.5, 1.0], 64, 0.05)
    assert fit.stderr is None and not fit.sound()
    with pytest.raises(ValueError, match="times"):
        fit_exponent_above_fixed_cost([1024, 4096], [0.5, 1.0], 64, 0.0)
