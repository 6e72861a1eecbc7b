"""DPO losses against hand-computed values, and a real training on the tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from prefdesk.plugins.dpo import DPOOptimizer, dpo_loss
from prefdesk.engine.losses import PairLogps

# Two pairs, as summed log-probs (policy, reference) and answer token counts.
PC, PR = [-10.0, -20.0], [-12.0, -15.0]  # policy: chosen, rejected
RC, RR = [-11.0, -19.0], [-11.5, -16.0]  # reference
NC, NR = [5.0, 8.0], [4.0, 6.0]


def _lp():
    t = lambda x: torch.tensor(x, dtype=torch.float64)
    return PairLogps(t(PC), t(PR), t(NC), t(NR), t(RC), t(RR))


def _deltas():
    return [(PC[i] - RC[i]) - (PR[i] - RR[i]) for i in range(2)]


def logsig(x):
    return -math.log1p(math.exp(-x))


@pytest.mark.parametrize("beta,eps", [(0.1, 0.0), (0.5, 0.0), (0.1, 0.2)])
def test_sigmoid_loss_with_label_smoothing(beta, eps):
    want = sum(-(1 - eps) * logsig(beta * d) - eps * logsig(-beta * d) for d in _deltas()) / 2
    out = dpo_loss(_lp(), beta=beta, loss_type="sigmoid", label_smoothing=eps)
    assert out.loss.item() == pytest.approx(want, rel=1e-12)
    assert out.reward_chosen.tolist() == pytest.approx([beta * (PC[i] - RC[i]) for i in range(2)])
    assert out.reward_rejected.tolist() == pytest.approx([beta * (PR[i] - RR[i]) for i in range(2)])


def test_ipo_loss_uses_length_averaged_log_ratios():
    beta = 0.1
    ds = [(PC[i] - RC[i]) / NC[i] - (PR[i] - RR[i]) / NR[i] for i in range(2)]
    want = sum((d - 1 / (2 * beta)) ** 2 for d in ds) / 2
    assert dpo_loss(_lp(), beta=beta, loss_type="ipo").loss.item() == pytest.approx(want, rel=1e-12)


def test_hinge_loss():
    beta = 0.5
    want = sum(max(0.0, 1 - beta * d) for d in _deltas()) / 2
    assert dpo_loss(_lp(), beta=beta, loss_type="hinge").loss.item() == pytest.approx(want, rel=1e-12)


def test_params_validate():
    with pytest.raises(ValueError):
        DPOOptimizer.Params(loss_type="kto")
    with pytest.raises(ValueError):
        DPOOptimizer.Params(label_smoothing=0.7)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_training_separates_the_toy_pairs(tiny_policy, toy_pairs, run_ctx, loss_type):
    params = DPOOptimizer.Params(epochs=4, batch_size=8, learning_rate=1e-2, beta=0.5, loss_type=loss_type)
    ctx = run_ctx(tiny_policy(), toy_pairs)
    res = DPOOptimizer().fit(ctx, params)
    curve = res.extra["loss_curve"]
    assert len(curve) == 8
    if loss_type == "sigmoid":
        assert curve[0] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at step 1
    assert sum(curve[-2:]) / 2 < 0.7 * curve[0]
    # the trained adapter prefers chosen over rejected on every toy pair
    from prefdesk.engine.batching import encode_pairs
    from prefdesk.engine.logprobs import pair_logps
    from prefdesk.models import build_policy
    from prefdesk.config import ModelSettings

    trained = build_policy(ModelSettings(name="tiny", dtype="fp32"), adapter=res.adapter_path, trainable=False)
    enc = encode_pairs(trained.tokenizer, toy_pairs, ctx.settings.max_length)
    pol, ref = pair_logps(trained, enc), pair_logps(trained, enc, reference=True)
    margin = (pol[:, 0] - ref[:, 0]) - (pol[:, 1] - ref[:, 1])
    assert (margin > 0).float().mean().item() == 1.0


def test_bf16_first_step_starts_exactly_at_log2(tiny_policy, toy_pairs, run_ctx):
    """The reference is scored in the first epoch's own batches, so bf16 noise cancels at step 1."""
    params = DPOOptimizer.Params(max_steps=1, batch_size=4)
    res = DPOOptimizer().fit(run_ctx(tiny_policy(dtype="bf16"), toy_pairs[:4]), params)
    assert res.extra["loss_curve"][0] == pytest.approx(math.log(2), abs=1e-7)
    assert res.metrics["train/reward_margin"] == 0.0
