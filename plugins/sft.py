"""SFT: supervised fine-tuning on the chosen answers (token-mean negative log-likelihood).

The rejected answers still go through the same concatenated forward, for the metrics:
`train/reward_chosen` / `train/reward_rejected` are the β-free implicit rewards
log π(y) − log π_ref(y) of each answer (DPO's reward with β = 1), so the margin and
accuracy say whether plain SFT on the chosen answers also separates the pairs.
`train/kl` is the engine's per-token log-ratio on the chosen answers.
"""

from __future__ import annotations

from pydantic import Field

from prefdesk.context import RunContext
from prefdesk.engine.loop import train
from prefdesk.engine.losses import LossOutput, PairLogps
from prefdesk.plugin import TrainParams, TrainResult


def sft_loss(lp: PairLogps) -> LossOutput:
    loss = -lp.chosen.sum() / lp.chosen_tokens.sum().clamp(min=1)
    if lp.ref_chosen is None:
        return LossOutput(loss=loss)
    return LossOutput(loss=loss, reward_chosen=lp.chosen_logratio.detach(), reward_rejected=lp.rejected_logratio.detach())


class SFTOptimizer:
    """Supervised fine-tuning on the chosen answers (token-mean NLL), the baseline to beat."""

    name = "sft"
    needs = frozenset({"pairs"})

    class Params(TrainParams):
        learning_rate: float = Field(2e-4, gt=0, le=1.0)

    def fit(self, ctx: RunContext, params: "SFTOptimizer.Params") -> TrainResult:
        return train(ctx, params, sft_loss, name=self.name)
