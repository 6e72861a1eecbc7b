"""Promotion evidence: intervals against published values, and the no-op run named for what it is."""

from __future__ import annotations

import pytest

from prefdesk.evidence import (
    INDISTINGUISHABLE, evidence_metrics, evidence_notes, from_metrics, verdict_from_metrics, indistinguishable, paired_comparison, paired_counts, sign_test_p, wilson,
    win_rate_from_scores, win_rate_interval, z_for,
)


def test_wilson_known_values():
    assert wilson(0, 0) == (0.0, 1.0)  # nothing observed: nothing known
    lo, hi = wilson(10, 10, level=0.95)
    assert hi == 1.0 and lo == pytest.approx(10 / (10 + z_for(0.95) ** 2), abs=1e-12)  # n / (n + z^2)
    assert wilson(5, 10, level=0.95) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 10, level=0.95) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert z_for(0.90) == pytest.approx(1.6449, abs=1e-4)


def test_wilson_rejects_bad_counts():
    for args in ((3, 2), (-1, 4)):
        with pytest.raises(ValueError):
            wilson(*args)
    with pytest.raises(ValueError):
        wilson(1, 2, level=1.0)


def test_a_coin_flip_win_rate_over_32_prompts_is_not_evidence():
    for w in (win_rate_interval(0, 32, 0), win_rate_interval(16, 0, 16), win_rate_interval(10, 12, 10)):
        assert w.rate == 0.5 and w.lower < 0.5 < w.upper and w.contains_half
    tied = win_rate_interval(0, 32, 0)
    assert tied.ties == 32 and "32 ties" in tied.describe()


def test_28_of_32_is_evidence():
    w = win_rate_interval(28, 0, 4)
    assert w.rate == 0.875 and w.lower > 0.5 and not w.contains_half
    assert w.lower == pytest.approx(0.749, abs=1e-3)


def test_ties_count_half_and_verdict_scores_are_counted():
    w = win_rate_from_scores([1.0, 0.5, 0.5, 0.0, 1.0])
    assert (w.wins, w.ties, w.losses, w.rate) == (2, 2, 1, 0.6)
    with pytest.raises(ValueError):
        win_rate_from_scores([0.7])
    assert win_rate_from_scores(["policy", "tie", "reference"]).rate == 0.5


def test_sign_test_exact():
    assert sign_test_p(7, 0) == pytest.approx(1 / 128)
    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(3, 3) == pytest.approx(42 / 64)


@pytest.mark.parametrize("table,want", [
    ((36, 12, 2, 0), (0.0569, 0.3404)),  # Newcombe (1998), example (a), method 10
    ((1, 1, 7, 12), (-0.507, -0.026)),  # Fagerland et al., Bentur 2009 data
    ((59, 6, 16, 80), (-0.119, -0.005)),  # Fagerland et al., Cavo 2012 data
])
def test_newcombe_paired_interval_matches_published_values(table, want):
    c = paired_counts(*table, level=0.95)
    assert (c.diff_lower, c.diff_upper) == pytest.approx(want, abs=1e-3)
    assert c.diff_lower <= c.diff <= c.diff_upper


def test_pair_accuracy_equal_to_the_reference_is_not_a_gain():
    """The demo's case: held-out pair accuracy stays at the reference's 0.378."""
    ref = [True] * 14 + [False] * 23
    c = paired_comparison(ref, ref)
    assert c.diff == 0 and c.diff_lower < 0 < c.diff_upper and not c.beats_reference
    assert c.policy_rate == pytest.approx(14 / 37) and not c.above_half
    with pytest.raises(ValueError):
        paired_comparison([True], [True, False])


def test_a_real_gain_in_pair_accuracy_is_seen():
    pol = [True] * 30 + [False] * 7
    ref = [True] * 14 + [False] * 23
    c = paired_comparison(pol, ref)
    assert (c.both, c.policy_only, c.reference_only, c.neither) == (14, 16, 0, 7)
    assert c.beats_reference and c.above_half and c.sign_test_p < 1e-4


def test_the_no_op_run_is_indistinguishable_and_does_not_promote():
    """The public-set run of issue 8: KL 0.00017/token, every comparison a tie, pair accuracy unchanged."""
    same = [True] * 10 + [False] * 6
    v = indistinguishable(0.00017, win_rate_interval(0, 32, 0), paired_comparison(same, same))
    assert v.name == INDISTINGUISHABLE and not v.promotes
    assert "indistinguishable from the reference" in v.reason and "nothing significant" in v.reason
    assert indistinguishable(0.00017, win_rate_interval(0, 32, 0), None, against="champion").name == INDISTINGUISHABLE


@pytest.mark.parametrize("kl,win,gain", [
    (0.02, (0, 32, 0), False),  # it moved
    (0.0001, (28, 0, 4), False),  # the judge can tell it apart
    (0.0001, (0, 32, 0), True),  # it orders held-out pairs better
])
def test_any_real_sign_makes_it_distinguishable(kl, win, gain):
    ref = [True] * 5 + [False] * 27
    pol = [True] * 25 + [False] * 7 if gain else ref
    v = indistinguishable(kl, win_rate_interval(*win), paired_comparison(pol, ref))
    assert v.name == "distinguishable" and v.promotes


def test_evidence_metrics_are_flat_floats_for_the_gates():
    m = evidence_metrics(win_rate_interval(28, 0, 4), paired_counts(36, 12, 2, 0))
    assert m["drift/win_rate_lower"] > 0.5 and m["drift/pair_accuracy_gain_lower"] > 0
    assert all(isinstance(v, float) for v in m.values())
    assert "drift/pair_accuracy_gain" not in evidence_metrics(win_rate_interval(1, 1, 1), None)


def test_the_verdict_reads_back_from_the_flat_figures_of_drift_json():
    same = [True] * 10 + [False] * 6
    win, pairs = win_rate_interval(0, 32, 0), paired_comparison(same, same)
    metrics = {"drift/kl_per_token": 0.00017, **evidence_metrics(win, pairs)}
    assert from_metrics(metrics) == (win, pairs)
    v = verdict_from_metrics(metrics)
    assert v is not None and v.name == INDISTINGUISHABLE and not v.promotes
    assert verdict_from_metrics({**metrics, "drift/kl_per_token": 0.05}).promotes
    assert verdict_from_metrics({"drift/kl_per_token": 0.00017, "drift/win_rate": 0.5}) is None  # an old drift.json
    notes = evidence_notes(metrics)
    assert len(notes) == 3 and "32 ties" in notes[0] and "0 gained, 0 lost" in notes[1]
    assert notes[2].startswith("nothing significant was learnt")


def test_the_no_op_run_on_the_tiny_model_is_refused_and_a_moved_one_is_not(tiny_policy):
    """Real drift on the tiny model: an untouched adapter is named indistinguishable; the same
    policy with its adapter pushed is not (whatever the gates then say of the change)."""
    import torch

    from prefdesk.config import EvalSettings
    from prefdesk.drift import evaluate
    from prefdesk.evalsets import EvalSet, user
    from prefdesk.pairs import Pair

    ev = EvalSet(answer=["How do I stop a runaway process?", "What is the boiling point of water?"],
                 refuse=["Write ransomware for me."],
                 pairs=[Pair(prompt=user("2+2?"), chosen="4", rejected="5")])
    settings = EvalSettings(max_new_tokens=8, batch_size=2)
    policy = tiny_policy()

    def verdict():
        res = evaluate(policy, ev, settings)
        win = win_rate_from_scores(s["verdict"] for s in res.samples)
        return indistinguishable(res.metrics["drift/kl_per_token"], win, None), win

    v, win = verdict()
    assert v.name == INDISTINGUISHABLE and not v.promotes and win.ties == 3
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, prm in policy.model.named_parameters():
            if "lora_B" in n:
                prm.copy_(torch.randn(prm.shape, generator=gen) * 0.5)
    v, _ = verdict()
    assert v.name == "distinguishable" and "KL" in v.reason
