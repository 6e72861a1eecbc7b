"""ORPO-lite: odds-ratio preference optimization (Hong et al., 2024) as a prefdesk plugin.

ORPO needs no reference model: it adds to the SFT loss on the chosen answer a penalty on
the log odds ratio between chosen and rejected,

    L = NLL(y_w) − λ · log σ( log odds(y_w) − log odds(y_l) ),
    log odds(y) = log p̄(y) − log(1 − p̄(y)),   p̄(y) = exp(mean token log-prob of y).

So the plugin asks the engine for no reference pass (`use_reference=False`); batching,
the concatenated forward, checkpoints, metrics and the adapter output are the engine's.
The implicit rewards reported are λ · mean log-prob of each answer (as TRL's ORPO logs them);
there is no `train/kl` without a reference.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from pydantic import Field

from prefdesk.context import RunContext
from prefdesk.engine.loop import train
from prefdesk.engine.losses import LossOutput, PairLogps
from prefdesk.plugin import TrainParams, TrainResult


def _log_odds(mean_logp: torch.Tensor) -> torch.Tensor:
    # log(p / (1 - p)) with p = exp(mean_logp); log1p(-exp(x)) is stable for x < 0
    return mean_logp - torch.log1p(-torch.exp(mean_logp.clamp(max=-1e-6)))


def orpo_loss(lp: PairLogps, lam: float = 0.1) -> LossOutput:
    nll = -lp.chosen.sum() / lp.chosen_tokens.sum().clamp(min=1)
    ratio = _log_odds(lp.chosen_mean) - _log_odds(lp.rejected_mean)
    loss = nll - lam * F.logsigmoid(ratio).mean()
    return LossOutput(loss=loss, reward_chosen=(lam * lp.chosen_mean).detach(),
                      reward_rejected=(lam * lp.rejected_mean).detach())


class ORPOLiteOptimizer:
    """ORPO-lite: SFT on the chosen answer plus an odds-ratio preference term; no reference needed."""

    name = "orpo_lite"
    needs = frozenset({"pairs"})

    class Params(TrainParams):
        learning_rate: float = Field(2e-4, gt=0, le=1.0)
        lam: float = Field(0.1, gt=0, description="weight of the odds-ratio term")

    def fit(self, ctx: RunContext, params: "ORPOLiteOptimizer.Params") -> TrainResult:
        return train(ctx, params, partial(orpo_loss, lam=params.lam), name=self.name, use_reference=False)
