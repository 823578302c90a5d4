"""python -m tests.times: a run's test seconds summed per file (setup, call and teardown of a
test together), slowest first."""

import json

from tests import times


def test_times_are_summed_per_test_and_per_file(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    rows = [
        ("tests/a.py::x", "setup", 30.0),
        ("tests/a.py::x", "call", 6.0),
        ("tests/b.py::y", "call", 90.0),
        ("tests/a.py::z", "call", 24.0),
    ]
    path.write_text(
        "".join(json.dumps({"test": t, "phase": p, "seconds": s}) + "\n" for t, p, s in rows)
    )
    times.main([str(path), "2"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "3 tests, 2.5 min"
    assert out[1:3] == ["    1.5 min  tests/b.py", "    1.0 min  tests/a.py"]
    assert out[-2:] == ["     90 s  tests/b.py::y", "     36 s  tests/a.py::x"]
