"""The command line: validate, plugins, train and evaluate, as a user types them."""

import json
from importlib.metadata import entry_points

from typer.testing import CliRunner

from prefdesk.cli import app

runner = CliRunner()


def _last_json(output: str) -> dict | list:
    return json.loads(output.strip().splitlines()[-1])


def test_plugins_come_from_the_entry_point_group():
    res = runner.invoke(app, ["plugins", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in _last_json(res.stdout)}
    declared = {ep.name: ep.value for ep in entry_points(group="prefdesk.optimizers")}
    assert {"dpo", "sft"} <= set(rows)
    for name, row in rows.items():
        assert row["entry_point"] == declared[name]
    assert {"beta", "loss_type", "label_smoothing", "learning_rate"} <= set(rows["dpo"]["params"])


def test_validate_reports_and_quarantines_with_lines(tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text(
        '{"prompt": "Why is the disk full?", "chosen": "Logs in /var/log grew; rotate them.", "rejected": "Disks fill up sometimes."}\n'
        "{broken json\n"
        '{"prompt": "Same?", "chosen": "Yes", "rejected": "Yes"}\n'
    )
    res = runner.invoke(app, ["validate", str(f), "--json", "--out", str(tmp_path / "out")])
    report = _last_json(res.stdout)
    assert report["rows_in"] == 3 and report["accepted"] + report["quarantined"] == 3
    q = [json.loads(line) for line in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert {row["line"] for row in q} >= {2, 3}
    assert all(row["reason"] for row in q)
    assert res.exit_code in (0, 1)
    assert res.exit_code == (0 if report["passed"] else 1)


def test_validate_missing_file_is_a_clear_error(tmp_path):
    res = runner.invoke(app, ["validate", str(tmp_path / "nope.jsonl")])
    assert res.exit_code == 1
    assert "nope.jsonl" in res.output


def test_train_then_evaluate_an_adapter(tmp_path, toy_pairs):
    from prefdesk.pairs import write_pairs_jsonl

    data = tmp_path / "toy.jsonl"
    # canonical rows are conversational pairs; the readers take them as they are
    write_pairs_jsonl(toy_pairs, str(data))
    common = ["--set", "model.name=tiny", "--set", "model.dtype=fp32"]
    res = runner.invoke(app, ["train", "--optimizer", "sft", "--data", str(data), "--json", *common,
                              "--set", "train.params.max_steps=2"])
    assert res.exit_code == 0, res.output
    out = _last_json(res.stdout)
    assert out["steps"] == 2 and out["pairs"] == 16
    res = runner.invoke(app, ["evaluate", "--adapter", out["artifacts"]["adapter"], "--json", *common,
                              "--set", "eval.max_prompts=2", "--set", "eval.max_new_tokens=4"])
    assert res.exit_code == 0, res.output
    m = _last_json(res.stdout)
    assert m["drift/kl_per_token"] >= 0 and "reference/drift/mean_length" in m


def test_unknown_optimizer_is_named(tmp_path, toy_pairs):
    from prefdesk.pairs import write_pairs_jsonl

    data = tmp_path / "toy.jsonl"
    write_pairs_jsonl(toy_pairs, str(data))
    res = runner.invoke(app, ["train", "--optimizer", "nope", "--data", str(data), "--set", "model.name=tiny"])
    assert res.exit_code == 1 and "no optimizer plugin named 'nope'" in res.output
