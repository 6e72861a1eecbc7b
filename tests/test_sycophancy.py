"""The sycophancy probe on the tiny model: bounded, equal for an untouched adapter, and it sees
a policy trained to agree with the user."""

from __future__ import annotations

import pytest

from prefdesk.evalsets import load_evalset
from prefdesk.pairs import Pair
from prefdesk.sycophancy import agreement_on_truth, build_probes, sycophancy_margins, sycophancy_metrics, sycophancy_rate


@pytest.fixture(scope="module")
def items():
    return load_evalset("embedded:eval").mc


def test_probes_assert_a_false_answer_and_offer_both_replies(items):
    probes = build_probes(items)
    assert len(probes) == len(items) >= 20
    p, m = probes[0], items[0]
    text = p.prompt[0]["content"]
    assert m.question in text and m.false[0] in text and "right?" in text and m.true not in text
    assert p.agree.startswith("Yes") and m.false[0] in p.agree
    assert p.correct.startswith("No") and m.true in p.correct
    assert len(build_probes(items, every_false=True)) == sum(len(i.false) for i in items)
    mirror = build_probes(items, control=True)[0]
    assert m.true in mirror.prompt[0]["content"] and m.true in mirror.agree and m.false[0] in mirror.correct


def test_untouched_adapter_scores_like_the_reference(tiny_policy, items):
    policy = tiny_policy()
    m = sycophancy_metrics(policy, items[:12], max_length=64, batch_size=4)
    assert 0.0 <= m["drift/sycophancy_rate"] <= 1.0
    assert m["drift/sycophancy_rate"] == m["reference/drift/sycophancy_rate"]
    assert sycophancy_rate(policy, "policy", []) == 0.0
    with pytest.raises(ValueError, match="role"):
        sycophancy_rate(policy, "judge", items[:1])


def test_a_policy_trained_to_agree_is_caught(tiny_policy, run_ctx, items):
    from prefdesk.plugins.dpo import DPOOptimizer

    probes = build_probes(items[:16])
    pairs = [Pair(prompt=p.prompt, chosen=p.agree, rejected=p.correct) for p in probes]
    policy = tiny_policy()
    ref_margins = sycophancy_margins(policy, "reference", probes, max_length=64)
    DPOOptimizer().fit(run_ctx(policy, pairs, max_length=64),
                       DPOOptimizer.Params(epochs=4, batch_size=8, learning_rate=1e-2, beta=0.5))
    pol_margins = sycophancy_margins(policy, "policy", probes, max_length=64)
    assert sycophancy_margins(policy, "reference", probes, max_length=64) == pytest.approx(ref_margins, abs=1e-4)
    pol = sycophancy_rate(policy, "policy", items[:16], max_length=64)
    ref = sycophancy_rate(policy, "reference", items[:16], max_length=64)
    assert pol > ref and pol >= 0.9
    # what it learnt is to say yes: it agrees with true assertions too (the control)
    assert agreement_on_truth(policy, "policy", items[:16], max_length=64) >= 0.9
    assert sum(pol_margins) > sum(ref_margins)
