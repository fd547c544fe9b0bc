"""``visattn compare`` on the command line: two real tiny runs, a changed ratio marked, bad input as one line."""

import json
import shutil

from visattn import cli

TINY = ["--mixers", "softmax", "window:window_size=2", "--sizes", "4", "6", "--repeats", "2", "--min-sample", "0",
        "--no-memory"]


def test_two_runs_compared_and_a_changed_ratio_marked(tmp_path, capsys):
    first, second, changed = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    assert cli.main(["bench", *TINY, "--json", str(first)]) == 0
    shutil.copy(first, second)
    run = json.loads(first.read_text())
    run["records"][0]["ratio_to_sdpa"] *= 1.5
    run["environment"]["machine_state"]["median_ms"] *= 2
    changed.write_text(json.dumps(run))
    capsys.readouterr()
    assert cli.main(["compare", str(first), str(second), "--min-ms", "0"]) == 0
    out = capsys.readouterr().out
    assert "4 of 4 rows agree within 20%" in out and "0% !" not in out and "different machine states" not in out
    assert cli.main(["compare", str(first), str(changed), "--min-ms", "0"]) == 0
    out = capsys.readouterr().out
    assert "3 of 4 rows agree within 20%" in out and "50% !" in out and "different machine states" in out
    assert "window(window_size=2)" in out and "fitted exponent in each run" in out


def test_bad_input_is_one_line_and_a_nonzero_exit(tmp_path, capsys):
    (tmp_path / "x.json").write_text("[]")
    assert cli.main(["compare", str(tmp_path / "x.json"), str(tmp_path / "x.json")]) == 2
    assert cli.main(["compare", str(tmp_path / "x.json")]) == 2
    assert cli.main(["compare", str(tmp_path / "missing.json"), str(tmp_path / "x.json")]) == 1
    err = capsys.readouterr().err
    assert err.count("visattn compare:") == 3 and "Traceback" not in err
    assert "not the JSON of a visattn bench run" in err and "at least two runs" in err and "missing.json" in err
