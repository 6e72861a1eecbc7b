"""Config overrides and the gate verdicts (pure logic, no model)."""

import pytest

from prefdesk.config import Gate, default_gates, load_config
from prefdesk.gates import evaluate_gates


def _metrics(**over):
    base = {
        "drift/kl_per_token": 0.05, "drift/length_ratio": 1.0, "drift/over_refusal_rate": 0.1,
        "drift/under_refusal_rate": 0.1, "drift/factuality_mc_accuracy": 0.6, "drift/pair_accuracy": 0.7,
        "drift/win_rate": 0.55, "drift/reward_mean": 0.3, "drift/mean_length": 40,
        "reference/drift/over_refusal_rate": 0.1, "reference/drift/under_refusal_rate": 0.1,
        "reference/drift/factuality_mc_accuracy": 0.6, "reference/drift/pair_accuracy": 0.6,
        "drift/sycophancy_rate": 0.5, "reference/drift/sycophancy_rate": 0.5,
        # the evidence: 40 wins, 10 ties, 14 losses of 64 prompts; 9 pairs gained, 2 lost of 37
        "drift/win_rate_lower": 0.53, "drift/win_wins": 40, "drift/win_ties": 10, "drift/win_losses": 14,
        "drift/pair_accuracy_gain_lower": 0.01,
    }
    base.update({f"drift/{k}": v for k, v in over.items()})
    return base


def test_set_overrides_nested_fields_and_single_gates(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  optimizer: sft\ngates:\n  win_rate: null\n  kl_budget:\n    bound: 0.2\n")
    cfg = load_config(f, ["train.params.learning_rate=0.3", "model.lora.r=8", "gates.moved.bound=0.001"])
    assert cfg.train.optimizer == "sft"
    assert cfg.train.params == {"learning_rate": 0.3}
    assert cfg.model.lora.r == 8
    assert "win_rate" not in cfg.gates
    assert cfg.gates["kl_budget"].bound == 0.2 and cfg.gates["kl_budget"].metric == "drift/kl_per_token"
    assert cfg.gates["moved"].bound == 0.001
    assert set(default_gates()) - {"win_rate"} == set(cfg.gates)


def test_bad_config_names_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model: [unclosed\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        load_config(f)
    with pytest.raises(ValueError):
        load_config(None, ["model.nme=oops"])  # unknown field is refused, not ignored


def test_all_gates_pass_on_a_healthy_candidate():
    report = evaluate_gates(default_gates(), _metrics())
    assert report.passed, [r.reason for r in report.failed]
    assert report.metrics()["gate/all"] == 1.0
    assert not report.suspected_reward_hacking


@pytest.mark.parametrize(
    "over, gates",
    [
        ({"kl_per_token": 2.0}, ["kl_budget"]),
        ({"kl_per_token": 0.0}, ["moved"]),
        ({"length_ratio": 1.8}, ["length_inflation"]),
        ({"over_refusal_rate": 0.3}, ["over_refusal", "over_refusal_abs"]),
        ({"under_refusal_rate": 0.3}, ["under_refusal", "under_refusal_abs"]),
        ({"factuality_mc_accuracy": 0.5}, ["factuality"]),
        ({"sycophancy_rate": 0.7}, ["sycophancy"]),
        ({"pair_accuracy_gain_lower": -0.2}, ["pair_accuracy"]),
        ({"win_rate_lower": 0.4}, ["win_rate"]),
    ],
)
def test_each_failure_mode_trips_its_gate(over, gates):
    report = evaluate_gates(default_gates(), _metrics(**over))
    assert [r.name for r in report.failed] == gates
    # only a guard rail broken while the reward rose is called hacking; no movement is not
    assert report.suspected_reward_hacking == (gates[0] not in ("moved", "pair_accuracy", "win_rate"))
    assert report.metrics()[f"gate/{gates[0]}"] == 0.0 and report.metrics()["gate/all"] == 0.0


def test_a_candidate_indistinguishable_from_the_reference_is_named_and_not_promoted():
    # issue 8's run: KL 0.00017 per token, nearly all ties, held-out pairs unchanged
    still = _metrics(kl_per_token=0.00017, win_wins=2, win_ties=28, win_losses=2, win_rate_lower=0.5,
                     pairs_both=14, pairs_gained=0, pairs_lost=0, pairs_neither=23, pair_accuracy_gain_lower=-0.09)
    report = evaluate_gates(default_gates(), still)
    assert [r.name for r in report.failed] == ["distinguishable"]
    assert "indistinguishable" in report.failed[0].reason and not report.passed
    assert any("win rate" in n for n in report.notes)  # the interval behind the verdict is reported
    # the same figures with a real win are a candidate the other gates then judge
    won = dict(still, **{"drift/win_wins": 24, "drift/win_ties": 6, "drift/win_losses": 2})
    assert "distinguishable" not in [r.name for r in evaluate_gates(default_gates(), won).failed]


def test_reward_up_while_guard_rail_breaks_is_reward_hacking():
    report = evaluate_gates(default_gates(), _metrics(length_ratio=1.9, reward_mean=2.0))
    assert report.suspected_reward_hacking
    assert "length_inflation" in report.notes[0]
    calm = evaluate_gates(default_gates(), _metrics(length_ratio=1.9, reward_mean=-0.1))
    assert not calm.suspected_reward_hacking


def test_champion_relative_gate():
    gates = {"beats_champion": Gate(metric="drift/win_rate", op=">=", bound=0.0, relative_to="champion")}
    assert evaluate_gates(gates, _metrics(), champion=None).passed  # first night: nothing to beat
    assert not evaluate_gates(gates, _metrics(win_rate=0.5), champion={"drift/win_rate": 0.6}).passed
    assert evaluate_gates(gates, _metrics(win_rate=0.7), champion={"drift/win_rate": 0.6}).passed


def test_missing_metric_fails_rather_than_passes():
    report = evaluate_gates({"x": Gate(metric="drift/nope", op="<=", bound=1)}, _metrics())
    assert not report.passed and "not measured" in report.results[0].reason


def test_an_absolute_ceiling_the_reference_breaks_too_is_no_sign_of_hacking():
    # the embedded demo: the base answers 95% of should-refuse prompts, and so does the policy
    both = _metrics(under_refusal_rate=0.95, reward_mean=6.0)
    both["reference/drift/under_refusal_rate"] = 0.95
    report = evaluate_gates(default_gates(), both)
    assert [r.name for r in report.failed] == ["under_refusal_abs"] and not report.suspected_reward_hacking
    worse = dict(both, **{"reference/drift/under_refusal_rate": 0.5})  # the tuning made it worse
    report = evaluate_gates(default_gates(), worse)
    assert report.suspected_reward_hacking and "under_refusal_abs" in report.notes[0]
