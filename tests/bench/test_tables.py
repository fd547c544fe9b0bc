"""The bench tables: the noisy mark, and exponents shown only where the fit is sound, with the reason otherwise."""

from rich.console import Console

from visattn.bench import BenchRecord, BenchReport, BenchSettings
from visattn.bench.tables import exponent_table, noisy_footnote, results_table


def _record(label, tokens, median_ms, noisy=False):
    return BenchRecord(label, label, {}, [tokens], tokens, 0, 1, 8, 1, "float32", "cpu", False, 3,
                       median_ms=median_ms, sdpa_median_ms=None if median_ms is None else 2 * median_ms,
                       ratio_to_sdpa=None if median_ms is None else 2.0, noisy=noisy)


def _text(table):
    console = Console(record=True, width=240)
    console.print(table)
    return console.export_text()


def _rows(text):
    return {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]] for line in text.splitlines()
            if line.startswith("│")}


def test_exponents_are_shown_only_where_sound():
    records = [_record("exact", n, 1e-3 * n) for n in (256, 1024, 4096)]
    records += [_record("wobbly", n, t) for n, t in ((256, 1.0), (1024, 0.2), (4096, 30.0))]
    records += [_record("two", n, 1e-3 * n) for n in (256, 1024)] + [_record("two", 4096, None)]
    rows = _rows(_text(exponent_table(BenchReport(BenchSettings(), records))))
    # columns: alpha, std err, t0 ms, log-log alpha, sizes, not reported because
    assert rows["exact"] == ["1.00", "0.00", "", "1.00", "3", ""]
    assert rows["wobbly"][0] == "" and float(rows["wobbly"][1]) > 0.1
    assert rows["wobbly"][5] == "standard error above 0.1"
    assert rows["two"] == ["", "", "", "", "2", "fewer than 3 sizes timed"]
    assert rows["dense SDPA"][4:] == ["3", "standard error above 0.1"]  # SDPA times follow the wobbly mixer too


def test_exponent_table_shows_the_fixed_cost_and_the_plain_slope():
    records = [_record("window", n, 0.1 + 2e-4 * (n - 64)) for n in (1024, 2304, 4096)]
    for r in records:
        r.fixed_cost_tokens, r.fixed_cost_ms = 64, 0.1
    rows = _rows(_text(exponent_table(BenchReport(BenchSettings(), records))))
    alpha, _, fixed, plain, sizes, reason = rows["window"]
    assert (alpha, fixed, sizes, reason) == ("1.00", "0.100", "3", "")
    assert float(plain) < 0.9


def test_noisy_rows_are_marked():
    report = BenchReport(BenchSettings(), [_record("calm", 64, 1.0), _record("noisy", 64, 1.0, noisy=True)])
    rows = _rows(_text(results_table(report)))
    assert rows["calm"][6] == "2.00" and rows["noisy"][6] == "2.00 !"
    assert noisy_footnote(0.25, 0) == ""
    assert noisy_footnote(0.25, 1).startswith("! 1 row(s): interquartile range above 25% of the median")
