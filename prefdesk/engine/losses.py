"""What a plugin's loss sees and returns, and the step metrics every optimizer shares.

A loss is a function `PairLogps -> LossOutput`. `PairLogps` holds, per pair of the batch,
the summed answer log-probs under the policy (with grad) and under the reference (from
the cache, no grad), plus the answer token counts, so sequence-level losses (DPO),
length-normalised ones (IPO, SimPO, ORPO) and token-level ones (SFT) are all one line.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PairLogps:
    chosen: torch.Tensor  # [B] sum of log pi(y_w | x) over answer tokens (requires grad)
    rejected: torch.Tensor  # [B] sum of log pi(y_l | x)
    chosen_tokens: torch.Tensor  # [B] answer token counts (float)
    rejected_tokens: torch.Tensor
    ref_chosen: torch.Tensor | None = None  # [B] sum of log pi_ref(y_w | x); None without a reference
    ref_rejected: torch.Tensor | None = None

    @property
    def chosen_mean(self) -> torch.Tensor:
        return self.chosen / self.chosen_tokens.clamp(min=1)

    @property
    def rejected_mean(self) -> torch.Tensor:
        return self.rejected / self.rejected_tokens.clamp(min=1)

    @property
    def chosen_logratio(self) -> torch.Tensor:
        return self.chosen - self.ref_chosen

    @property
    def rejected_logratio(self) -> torch.Tensor:
        return self.rejected - self.ref_rejected


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, what backward runs on
    reward_chosen: torch.Tensor | None = None  # [B] the optimizer's implicit reward, detached
    reward_rejected: torch.Tensor | None = None


def step_metrics(lp: PairLogps, out: LossOutput) -> dict[str, torch.Tensor]:
    """The DESIGN metric vocabulary for one micro-batch (0-dim tensors; the loop averages).

    `train/kl` is the mean over the batch of the per-token log-ratio of the chosen answers,
        mean_b [ (log pi(y_w) - log pi_ref(y_w)) / |y_w| ].
    It is the plain Monte-Carlo ("k1") estimator of KL(pi || ref) per token, except that the
    answers are the dataset's rather than samples from the policy: cheap (no extra forward,
    the reference values are cached) and a good early warning of the policy walking away
    from the reference on the data it trains on. It can be negative. The on-policy KL along
    sampled answers is the drift evaluation's `drift/kl_per_token`.
    """
    m: dict[str, torch.Tensor] = {"train/loss": out.loss.detach().float()}
    if out.reward_chosen is not None and out.reward_rejected is not None:
        rc, rr = out.reward_chosen.detach().float(), out.reward_rejected.detach().float()
        m["train/reward_chosen"] = rc.mean()
        m["train/reward_rejected"] = rr.mean()
        m["train/reward_margin"] = (rc - rr).mean()
        m["train/reward_accuracy"] = (rc > rr).float().mean()
    if lp.ref_chosen is not None:
        m["train/kl"] = (lp.chosen_logratio.detach() / lp.chosen_tokens.clamp(min=1)).mean().float()
    return m
