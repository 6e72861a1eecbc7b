"""The nightly flow end to end on the tiny model: real Prefect, real MLflow SQLite, real GX."""

import json

import pytest
from typer.testing import CliRunner

from prefdesk.drift import DRIFT_NAMES
from prefdesk.registry import CHALLENGER, CHAMPION, alias_version
from prefdesk.tracking import client

TINY = [
    "model.name=tiny",
    "model.dtype=fp32",
    "train.params.max_steps=3",
    "train.params.batch_size=2",
    "data.limit=12",
    "eval.max_new_tokens=6",
    "eval.max_prompts=3",
    "eval.batch_size=4",
    "registry.model_name=tiny-policy",
]
# Every gate dropped but one that any run passes: the promotion path.
LENIENT = [f"gates.{g}=null" for g in ("moved", "length_inflation", "length_collapse", "over_refusal",
                                        "under_refusal", "factuality", "pair_accuracy", "win_rate",
                                        "under_refusal_abs", "over_refusal_abs", "sycophancy", "distinguishable")] + [
    "gates.kl_budget.bound=100"]


def test_failed_gate_registers_challenger_only(harness, state_home):
    from prefdesk.flows.nightly import nightly

    s = nightly(overrides=TINY + ["gates.kl_budget.bound=-1"])  # KL can never be below -1
    assert s["status"] == "registered as challenger, not promoted"
    assert not s["promoted"] and not s["gates_passed"]
    assert {g["name"] for g in s["gates"] if not g["passed"]} >= {"kl_budget"}
    assert alias_version("tiny-policy", CHALLENGER) == s["registry"]["version"]
    assert alias_version("tiny-policy", CHAMPION) is None

    c = client()
    run = c.get_run(s["run_id"])
    m = run.data.metrics
    for name in DRIFT_NAMES:
        assert f"drift/{name}" in m and f"reference/drift/{name}" in m
    for name in ("data/pairs_in", "data/pairs_accepted", "data/pairs_quarantined", "train/loss", "gate/all", "gate/kl_budget"):
        assert name in m, name
    assert m["gate/all"] == 0.0 and m["gate/kl_budget"] == 0.0
    assert m["data/pairs_in"] == m["data/pairs_accepted"] + m["data/pairs_quarantined"]
    assert run.data.params["model.name"] == "tiny"
    assert run.inputs.dataset_inputs, "the accepted pairs are the run's dataset input"
    top = {a.path for a in c.list_artifacts(s["run_id"])}
    assert {"adapter", "data", "eval", "gates.json", "summary.json"} <= top
    mv = c.get_model_version("tiny-policy", s["registry"]["version"])
    assert mv.tags["gate_all"] == "0" and mv.tags["gate.kl_budget"].startswith("FAIL")

    from prefdesk.cli import app

    res = CliRunner().invoke(app, ["promote", s["registry"]["version"], "--model", "tiny-policy"])
    assert res.exit_code == 1 and "failed its gates" in res.output
    assert alias_version("tiny-policy", CHAMPION) is None


def test_passing_gates_promote_to_champion(harness, state_home):
    from prefdesk.flows.nightly import nightly

    s = nightly(overrides=TINY + LENIENT)
    assert s["gates_passed"] and s["promoted"]
    assert alias_version("tiny-policy", CHAMPION) == s["registry"]["version"]
    assert json.loads((state_home / "runs").joinpath(s["run_dir"].split("/")[-1], "summary.json").read_text())["promoted"]


def test_data_gate_failure_stops_before_training(harness, state_home, tmp_path):
    from prefdesk.flows.nightly import DataGateFailed, nightly

    rows = [{"prompt": f"Question number {i} about topic {i * 7}?", "chosen": "A much longer and more detailed answer " * 3 + str(i),
             "rejected": f"Short {i}."} for i in range(40)]
    f = tmp_path / "biased.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    before = len(client().search_model_versions("name='tiny-policy'"))
    run_dir = tmp_path / "run"
    state = nightly(overrides=TINY + [f"data.train=['{f}']"], run_dir=str(run_dir), return_state=True)
    assert state.is_failed()
    with pytest.raises(DataGateFailed, match="length_bias"):
        state.result()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped: data gates failed" and not summary["promoted"]
    assert len(client().search_model_versions("name='tiny-policy'")) == before
    assert not (run_dir / "train").exists()


def test_killed_nightly_resumes_from_its_checkpoint_with_the_same_adapter(harness, state_home, monkeypatch):
    import hashlib
    import logging

    from prefdesk.flows.nightly import nightly
    from prefdesk.engine.checkpoint import Checkpointer

    over = TINY + LENIENT + ["seed=11", "train.checkpoint_every=1"]  # a config no other test trains

    def adapter_digest():
        newest = max(state_home.glob("work/dpo-*/adapter/adapter_model.safetensors"), key=lambda p: p.stat().st_mtime)
        return hashlib.sha256(newest.read_bytes()).hexdigest()

    whole = nightly(overrides=over)  # uninterrupted: the adapter to match
    expected = adapter_digest()

    class Killed(RuntimeError):
        pass

    real_save = Checkpointer.save

    def save_then_die(self, step, *args, **kw):
        path = real_save(self, step, *args, **kw)
        if step == 2:
            raise Killed("killed right after the step-2 checkpoint")
        return path

    monkeypatch.setattr(Checkpointer, "save", save_then_die)
    state = nightly(overrides=over, return_state=True)
    assert state.is_failed()
    monkeypatch.setattr(Checkpointer, "save", real_save)

    seen: list[str] = []

    class Catch(logging.Handler):  # on the prefdesk logger itself: whatever Prefect did to the root
        def emit(self, record):
            seen.append(record.getMessage())

    ours = logging.getLogger("prefdesk")
    catch, level = Catch(), ours.level
    ours.addHandler(catch)
    ours.setLevel(logging.INFO)
    try:
        again = nightly(overrides=over)  # the operator starts it again
    finally:
        ours.removeHandler(catch)
        ours.setLevel(level)
    assert any("resuming dpo from" in m and "step-2" in m for m in seen)
    assert adapter_digest() == expected
    assert again["registry"]["version"] != whole["registry"]["version"]
