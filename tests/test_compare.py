"""`minigpt compare` says which data each run was validated on: bits per byte of runs on
different validation text are not comparable, and the table must not hide that."""

from __future__ import annotations

import json

from minigpt import cli

from .test_evaluate import made_up_text, make_dataset, train_ngram_run


def test_compare_shows_each_runs_data_and_warns_when_they_differ(tmp_path, capsys):
    a = make_dataset(tmp_path, "plays")
    b = make_dataset(tmp_path, "other", text=made_up_text()[::-1])
    runs = [
        train_ngram_run(a, tmp_path / "r1"),
        train_ngram_run(a, tmp_path / "r2", order=2),
        train_ngram_run(b, tmp_path / "r3"),
    ]
    names = [str(r) for r in runs]

    assert cli.main(["compare", *names, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    # The data recorded in each run's run.json (what training validated on).
    assert [r["data"] for r in rows] == [str(a), str(a), str(b)]
    for r, run in zip(rows, runs):
        assert r["data"] == json.loads((run / "last" / "run.json").read_text())["config"]["data"]["data"]

    assert cli.main(["compare", *names]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["run", "model", "data"]
    col = lines[0].index("data")
    for line, data in zip(lines[2:5], [a, a, b]):
        assert line[col:].split()[0] == str(data)
    assert lines[5].startswith("note: these runs were validated on 2 different datasets")
    assert str(a) in lines[5] and str(b) in lines[5]

    # Runs on the same data: no note.
    assert cli.main(["compare", *names[:2]]) == 0
    assert not any(line.startswith("note:") for line in capsys.readouterr().out.splitlines())
