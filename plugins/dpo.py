"""DPO: Direct Preference Optimization (Rafailov et al., 2023) against the adapter-off reference.

With Δ = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l)):

* sigmoid (the paper's loss; ε > 0 is the "conservative DPO" of label smoothing):
      −(1−ε)·log σ(β·Δ) − ε·log σ(−β·Δ)
* ipo (Azar et al., 2023), on length-averaged log-probs as TRL does:
      (Δ_avg − 1/(2β))²
* hinge (SLiC-style): relu(1 − β·Δ)

The implicit rewards are β·(log π − log π_ref) of each answer. Loop, batching, reference
cache and metrics are the engine's; this file is the loss and its parameters.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from prefdesk.engine.loop import train
from prefdesk.engine.losses import LossOutput, PairLogps
from prefdesk.context import RunContext
from prefdesk.plugin import TrainParams, TrainResult


def dpo_loss(lp: PairLogps, beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0) -> LossOutput:
    chosen_lr, rejected_lr = lp.chosen_logratio, lp.rejected_logratio
    if loss_type == "sigmoid":
        delta = chosen_lr - rejected_lr
        losses = -F.logsigmoid(beta * delta) * (1 - label_smoothing) - F.logsigmoid(-beta * delta) * label_smoothing
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * (chosen_lr - rejected_lr))
    elif loss_type == "ipo":
        delta = chosen_lr / lp.chosen_tokens.clamp(min=1) - rejected_lr / lp.rejected_tokens.clamp(min=1)
        losses = (delta - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r} (sigmoid, ipo, hinge)")
    return LossOutput(
        loss=losses.mean(),
        reward_chosen=(beta * chosen_lr).detach(),
        reward_rejected=(beta * rejected_lr).detach(),
    )


class DPOOptimizer:
    """Direct Preference Optimization against the frozen reference (sigmoid, IPO or hinge loss)."""

    name = "dpo"
    needs = frozenset({"pairs"})

    class Params(TrainParams):
        beta: float = Field(0.1, gt=0, description="strength of the leash to the reference")
        loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
        label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="assumed share of flipped labels (sigmoid)")

    def fit(self, ctx: RunContext, params: "DPOOptimizer.Params") -> TrainResult:
        loss = partial(dpo_loss, beta=params.beta, loss_type=params.loss_type, label_smoothing=params.label_smoothing)
        return train(ctx, params, loss, name=self.name)
