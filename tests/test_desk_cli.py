"""`prefdesk validate` with relative paths, as a user types them from their project folder:
Great Expectations' Data Docs site once crashed on a relative `--out` (after the checks
ran); paths are resolved before anything is written."""

import json

from typer.testing import CliRunner

from prefdesk.cli import app


def test_validate_with_relative_out_and_data_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    rows = [{"prompt": f"Question {i}: how do I rotate logs?", "chosen": f"Use logrotate, rule {i}.",
             "rejected": f"Delete them {i}."} for i in range(12)]
    (tmp_path / "data" / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    res = CliRunner().invoke(app, ["validate", "data/pairs.jsonl", "--json", "--out", "reports/run1"])
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    report = json.loads(res.stdout.strip().splitlines()[-1])
    out = tmp_path / "reports" / "run1"
    assert report["rows_in"] == 12 and report["accepted"] == 12
    assert report["accepted_path"] == str(out / "accepted_pairs.jsonl")
    assert (out / "quarantine.jsonl").exists() and (out / "data_report.json").exists()
    assert (out / "data_docs" / "index.html").exists()
    assert res.exit_code == (0 if report["passed"] else 1)
