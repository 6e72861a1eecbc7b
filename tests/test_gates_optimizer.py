"""Optimizer gates (train-time figures from train.json) and the reward-hacking verdict they feed.

Pure logic, plus the gate task itself reading a run folder's train.json (the function the
task calls, and the real Prefect task under a test harness).
"""

from __future__ import annotations

import json

import pytest

from prefdesk.config import Gate, default_gates, load_config
from prefdesk.gates import GUARD_RAILS, evaluate_gates, merge_train_figures, reward_rises

HEALTHY = {
    "drift/kl_per_token": 0.05, "drift/length_ratio": 1.0, "drift/over_refusal_rate": 0.1,
    "drift/under_refusal_rate": 0.1, "drift/factuality_mc_accuracy": 0.6, "drift/pair_accuracy": 0.7,
    "drift/win_rate": 0.55, "drift/reward_mean": 0.0, "drift/mean_length": 40,
    "reference/drift/over_refusal_rate": 0.1, "reference/drift/under_refusal_rate": 0.1,
    "reference/drift/factuality_mc_accuracy": 0.6, "reference/drift/pair_accuracy": 0.6,
    "reference/drift/reward_mean": 0.0,
    "drift/sycophancy_rate": 0.5, "reference/drift/sycophancy_rate": 0.5,
    "drift/win_rate_lower": 0.53, "drift/pair_accuracy_gain_lower": 0.01,
}
OPTIMIZER_GATES = {"rm_pair_accuracy": "rm/pair_accuracy", "rm_length_bias": "rm/length_correlation",
                   "ppo_kl_budget": "ppo/kl"}
GOOD_TRAIN = {"rm/pair_accuracy": 0.8, "rm/length_correlation": 0.1, "ppo/kl": 0.04, "ppo/reward": 1.0}


def names(report) -> set[str]:
    return {r.name for r in report.results}


def test_optimizer_gates_are_absent_without_their_figures():
    report = evaluate_gates(default_gates(), HEALTHY)
    assert report.passed, [r.reason for r in report.failed]
    assert not names(report) & set(OPTIMIZER_GATES)
    assert not any(k.startswith(tuple(f"gate/{g}" for g in OPTIMIZER_GATES)) for k in report.metrics())


def test_optimizer_gates_apply_and_pass_with_healthy_figures():
    report = evaluate_gates(default_gates(), {**HEALTHY, **GOOD_TRAIN})
    assert set(OPTIMIZER_GATES) <= names(report)
    assert report.passed, [r.reason for r in report.failed]
    assert all(report.metrics()[f"gate/{g}"] == 1.0 for g in OPTIMIZER_GATES)


@pytest.mark.parametrize("figure, value, gate", [
    ("rm/pair_accuracy", 0.55, "rm_pair_accuracy"),  # barely above chance on held-out pairs
    ("rm/length_correlation", 0.8, "rm_length_bias"),  # longer is better
    ("rm/length_correlation", -0.7, "rm_length_bias"),  # shorter is better: bad the other way too
    ("ppo/kl", 0.3, "ppo_kl_budget"),  # the rollouts left the leash
])
def test_each_optimizer_gate_fails_out_of_bounds(figure, value, gate):
    report = evaluate_gates(default_gates(), {**HEALTHY, **GOOD_TRAIN, figure: value})
    assert [r.name for r in report.failed] == [gate]
    assert report.metrics()["gate/all"] == 0.0


def test_length_bias_bounds_the_magnitude_and_says_so():
    g = {"b": Gate(metric="rm/length_correlation", op="<=", bound=0.5, when_present=True, magnitude=True)}
    assert evaluate_gates(g, {"rm/length_correlation": -0.5}).passed  # the bound itself passes
    r = evaluate_gates(g, {"rm/length_correlation": -0.51}).results[0]
    assert not r.passed and r.value == pytest.approx(0.51) and r.reason.startswith("|rm/length_correlation|")


def test_a_drift_gate_on_a_missing_figure_still_fails():
    report = evaluate_gates({"x": Gate(metric="drift/nope", op="<=", bound=1)}, HEALTHY)
    assert not report.passed and "not measured" in report.results[0].reason


def test_new_guard_rails_and_reward_sources_name_reward_hacking():
    assert {"rm/length_correlation", "ppo/kl"} <= GUARD_RAILS
    # a length-loving judge, the held-out implicit reward flat: the PPO reward rose over its first rollout
    biased = {**HEALTHY, **GOOD_TRAIN, "rm/length_correlation": 0.9, "reference/ppo/reward": 0.2}
    report = evaluate_gates(default_gates(), biased)
    assert report.suspected_reward_hacking and "rm_length_bias" in report.notes[0] and "ppo/reward" in report.notes[0]
    # the rollouts left the leash while the learned reward model scores the policy above the reference
    loose = {**HEALTHY, **GOOD_TRAIN, "ppo/kl": 0.3, "drift/reward_model_score": 1.5,
             "reference/drift/reward_model_score": 0.5}
    report = evaluate_gates(default_gates(), loose)
    assert report.suspected_reward_hacking and "ppo_kl_budget" in report.notes[0]
    assert "drift/reward_model_score" in report.notes[0]


def test_no_rise_no_hacking_and_no_baseline_no_rise():
    # the guard rail broke but no reward rose over its baseline: a failed run, not hacking
    flat = {**HEALTHY, **GOOD_TRAIN, "ppo/kl": 0.3, "reference/ppo/reward": 1.0,
            "drift/reward_model_score": 0.5, "reference/drift/reward_model_score": 0.5}
    report = evaluate_gates(default_gates(), flat)
    assert not report.passed and not report.suspected_reward_hacking
    # a reward without a baseline says nothing about a rise
    assert reward_rises({"ppo/reward": 5.0, "drift/reward_model_score": 5.0}) == {}
    assert set(reward_rises({"drift/reward_mean": 0.3})) == {"drift/reward_mean"}
    # "KL too low" on PPO's figure is not hacking either
    low = {"moved_ppo": Gate(metric="ppo/kl", op=">=", bound=0.01, when_present=True)}
    report = evaluate_gates(low, {"ppo/kl": 0.0, "drift/reward_mean": 1.0})
    assert not report.passed and not report.suspected_reward_hacking


def test_config_overrides_an_optimizer_gate_and_keeps_its_flags(tmp_path):
    cfg = load_config(None, ["gates.rm_length_bias.bound=0.3", "gates.ppo_kl_budget=null"])
    g = cfg.gates["rm_length_bias"]
    assert g.bound == 0.3 and g.when_present and g.magnitude and g.metric == "rm/length_correlation"
    assert "ppo_kl_budget" not in cfg.gates
    with pytest.raises(ValueError):
        load_config(None, ["gates.rm_pair_accuracy.when_presnt=true"])  # a typo is refused


def test_train_figures_join_the_drift_figures_and_bad_ones_are_named():
    merged = merge_train_figures(HEALTHY, {"gated": {"rm/pair_accuracy": 0.7, "drift/win_rate": 0.0}})
    assert merged["rm/pair_accuracy"] == 0.7 and merged["drift/win_rate"] == HEALTHY["drift/win_rate"]
    assert merge_train_figures(HEALTHY, None) == HEALTHY
    with pytest.raises(ValueError, match="rm/pair_accuracy"):
        merge_train_figures(HEALTHY, {"gated": {"rm/pair_accuracy": "high"}})


def write_run(tmp_path, gated: dict, train_json: str | None = None):
    drift = tmp_path / "drift.json"
    drift.write_text(json.dumps(HEALTHY))
    (tmp_path / "train.json").write_text(train_json if train_json is not None else
                                         json.dumps({"artifacts": {"adapter": "x"}, "gated": gated, "steps": 3}))
    return drift


def test_gate_metrics_read_train_json(tmp_path):
    from prefdesk.tasks.gate import gate_metrics

    drift = write_run(tmp_path, {"rm/pair_accuracy": 0.52, "rm/length_correlation": 0.9})
    m = gate_metrics(drift, tmp_path)
    assert m["rm/pair_accuracy"] == 0.52 and m["drift/win_rate"] == HEALTHY["drift/win_rate"]
    report = evaluate_gates(default_gates(), m)
    assert {r.name for r in report.failed} == {"rm_pair_accuracy", "rm_length_bias"}
    (tmp_path / "train.json").unlink()  # no train.json (an older run): the drift figures alone
    assert gate_metrics(drift, tmp_path) == HEALTHY
    write_run(tmp_path, {}, train_json="{not json")
    with pytest.raises(ValueError, match="train.json"):
        gate_metrics(drift, tmp_path)


def test_ppo_reward_baseline_is_the_first_rollout_from_the_run_history(tmp_path):
    from prefdesk.tracking import Tracker, start_run
    from prefdesk.tasks.gate import gate_metrics

    run_id = start_run("gates-optimizer")
    for step, reward in enumerate([0.2, 0.6, 1.4], start=1):
        Tracker(run_id).log_metrics({"ppo/reward": reward}, step=step)
    drift = write_run(tmp_path, {**GOOD_TRAIN, "ppo/reward": 1.4})
    m = gate_metrics(drift, tmp_path, run_id)
    assert m["reference/ppo/reward"] == pytest.approx(0.2)
    assert reward_rises(m) == {"ppo/reward": pytest.approx(1.2)}
    assert "reference/ppo/reward" not in gate_metrics(drift, tmp_path, "")  # no run: no baseline


def test_the_gate_task_gates_on_train_json(tmp_path):
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    from prefdesk.tasks.gate import gate

    drift = write_run(tmp_path, {"rm/pair_accuracy": 0.9, "rm/length_correlation": 0.95, "ppo/kl": 0.02})
    config = load_config(None, ["model.name=tiny"]).model_dump(mode="json")

    @flow
    def only_gate() -> str:
        return gate(str(drift), config, str(tmp_path), "")

    with prefect_test_harness(server_startup_timeout=120):
        path = only_gate()
    report = json.loads(open(path).read())
    by_name = {r["name"]: r for r in report["results"]}
    assert by_name["rm_pair_accuracy"]["passed"] and by_name["ppo_kl_budget"]["passed"]
    assert not by_name["rm_length_bias"]["passed"] and not report["passed"]
