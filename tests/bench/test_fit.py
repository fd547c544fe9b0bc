"""The log-log least-squares scaling exponent."""

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.bench import fit_exponent


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
