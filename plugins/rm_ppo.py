"""rm_ppo: RLHF with a learned reward model and PPO (Ziegler et al. 2019; Ouyang et al. 2022).

One file, read top to bottom. Per PPO step:

1. **Rollout.** `batch_size` prompts x `samples_per_prompt` answers from the sampler at
   `temperature`, with the per-token log-probs of the policy and of the reference (the same
   base with every adapter off; no copy of the weights).
2. **Score.** The reward model scores each (prompt, answer); an answer that never emitted
   the end-of-answer token within `ctx.settings.max_new_tokens` loses `missing_eos_penalty`
   (off by default: the budget is a run setting, and cutting answers off is then the
   sampler's doing, not the policy's).
3. **Rewards per token.** r_t = -beta * (log pi(y_t) - log pi_ref(y_t)) on every answer token,
   plus the score on the last one (the end-of-answer token when the answer finished, else
   the last token the budget allowed): the usual RLHF recipe, in which the KL penalty is
   part of the return and the score arrives at the end.
4. **GAE.** Values V_t of the state before each answer token; advantages by GAE(gamma,
   lambda), returns = advantages + values, advantages whitened over the rollout's tokens.
5. **PPO epochs.** `ppo_epochs` passes over the rollout in shuffled minibatches of
   `minibatch_size` answers: the clipped policy loss on ratio = pi_new / pi_rollout, the
   clipped value loss, one AdamW step per minibatch over both (policy and value each with
   its own learning rate; `vf_coef` weighs the value loss inside the one clipped gradient).
6. **KL control.** beta fixed, or adaptive (Ziegler's proportional controller):
   beta <- beta * (1 + kl_rate * clip(KL / target - 1, -0.2, 0.2)) after every rollout, the target
   per token taken from the run's drift budget (`kl_target_share` of `gates.kl_budget`) unless
   `kl_target` names one. When a rollout's KL per token leaves the budget the run stops
   early (the adapter is still saved and the gates judge it; nothing is hidden).

Choices, and why:

* **Value model: its own LoRA adapter "value" on the shared frozen base + a linear head**
  on its last hidden states (`ctx.policy.add_adapter("value")`, selected with
  `ctx.policy.use("value")`). A head on the policy's own hidden states would save one
  forward per minibatch, but the value loss would then pull the policy's weights, so the
  policy adapter (what drift evaluates and the registry ships) would no longer be shaped by
  the policy objective alone, and the value's pace could not be set apart from the
  policy's. A separate adapter costs a few MB and one forward; the base is still held once.
  The head starts at zero (V = 0), so the first advantages are the plain returns.
* **Log-probs.** The rollout's log-probs are the "old" ones; the update re-scores with
  `token_logps` at the same temperature, so before the first optimizer step the ratio is 1
  up to float noise (tests/test_rm_ppo.py holds this). Dropout is off for the whole run
  (the model stays in eval mode; gradients flow all the same), as in TRL's PPO, so the ratio
  measures the policy's change and nothing else.
* **Entropy** is logged as the mean of -log pi over the sampled tokens: an unbiased estimate
  of the per-token entropy that costs nothing (no [tokens, vocab] softmax).
* **The reward model.** A learned judge given to the run (`ctx.judge` with `learned = True`,
  e.g. `train.reward_model=...`) wins: a team that vetted a reward model wants PPO against
  that one. Otherwise one is trained first on `ctx.pairs` (plugins/reward_model.py: adapter
  "reward" and a scalar head on the same base), its `rm/...` metrics logged, and frozen.
* **Resume.** Every `checkpoint_every` PPO steps the checkpointer saves the policy and value
  adapters, the value head, the optimizer and schedule, the RNG and the loop's state (beta,
  running sums, curves). Rollout seeds and minibatch orders derive from (seed, step), so a
  run killed after a checkpoint ends bit-identical to an unbroken one.

Metrics (DESIGN's vocabulary, per step and averaged over the run): `ppo/reward` (mean
reward-model score of the rollout's answers, before any penalty), `ppo/kl` (mean
log pi - log pi_ref per sampled token, the quantity the penalty uses), `ppo/kl_coef`,
`ppo/entropy`, `ppo/response_length` (tokens, end-of-answer token excluded, as
`drift/mean_length`), `ppo/clip_fraction` (share of tokens where the clipped objective was
the active one), `ppo/value_loss`, `ppo/approx_kl` (0.5 * mean squared log-ratio, new vs
rollout), `ppo/tokens_per_s` (answer tokens generated per second of the whole step).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Sequence

import torch
from pydantic import Field

from prefdesk.engine.batching import PAD_MULTIPLE, pad_sequences
from prefdesk.engine.logprobs import compute_context, hidden_states, token_logps
from prefdesk.engine.loop import StepInfo, TrainingDiverged, linear_schedule, run_key
from prefdesk.engine.refcache import base_fingerprint
from prefdesk.engine.tokenize import Encoded
from prefdesk.plugin import TrainParams, TrainResult
from prefdesk.plugins.reward_model import RewardModelParams, fit_reward_model

if TYPE_CHECKING:
    from prefdesk.context import RunContext
    from prefdesk.engine.generate import Samples

log = logging.getLogger("prefdesk")

POLICY, VALUE = "default", "value"


# -- the reward model's view ----------------------------------------------------------------


def judge_scores(judge: Any, prompts: Sequence[list], samples: "Samples", eos_id: int) -> torch.Tensor:
    """One score per answer: token-level scoring when the judge has it (a learned reward model
    reads the exact tokens the policy emitted, the end-of-answer token included when there is
    one), else its text-level `score`."""
    if hasattr(judge, "score_ids"):
        out = judge.score_ids(samples.prompt_ids, [samples.scored_ids(r, eos_id) for r in range(len(samples))])
    else:
        out = judge.score([prompts[i] for i in samples.prompt_index], samples.text, finished=samples.finished)
    return torch.as_tensor(out, dtype=torch.float32).detach().cpu().reshape(-1)


# -- one batch of answers through the policy and the value model --------------------------------


@dataclass
class Rows:
    """Right-padded prompt+answer rows and where each answer token sits in them."""

    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor
    answer_mask: torch.Tensor  # token t belongs to the answer
    index: torch.Tensor  # [B, A] position in the row of answer token j (clamped where j >= length)
    mask: torch.Tensor  # [B, A] 1 for real answer tokens


def make_rows(prompt_ids: Sequence[list[int]], answer_ids: Sequence[list[int]], pad_id: int,
              device: torch.device) -> Rows:
    encs = [Encoded(list(p) + list(a), len(p)) for p, a in zip(prompt_ids, answer_ids)]
    t = pad_sequences(encs, pad_id, PAD_MULTIPLE)
    width = max(len(a) for a in answer_ids)
    start = torch.tensor([len(p) for p in prompt_ids])[:, None]
    length = torch.tensor([len(a) for a in answer_ids])[:, None]
    j = torch.arange(width)[None, :]
    index = (start + j).clamp(max=t["input_ids"].shape[1] - 1)
    return Rows(t["input_ids"].to(device), t["attention_mask"].to(device), t["answer_mask"].to(device),
                index.to(device), (j < length).float().to(device))


def policy_logps(policy, rows: Rows, temperature: float) -> torch.Tensor:
    """[B, A] log pi(answer token j | prompt, tokens < j) at the sampling temperature."""
    with policy.use(POLICY), compute_context(policy.model, policy.dtype, policy.device.type):
        lp = token_logps(policy.model, rows.input_ids, rows.attention_mask, rows.answer_mask, temperature)
    return lp.gather(1, rows.index) * rows.mask


def values(policy, head: torch.nn.Linear, rows: Rows) -> torch.Tensor:
    """[B, A] V(state before answer token j): the value adapter's hidden state one position back."""
    with policy.use(VALUE), compute_context(policy.model, policy.dtype, policy.device.type):
        h = hidden_states(policy.model, rows.input_ids, rows.attention_mask)
    at = (rows.index - 1).clamp(min=0)
    h = h.gather(1, at[..., None].expand(-1, -1, h.shape[-1]))
    return head(h.float()).squeeze(-1) * rows.mask


# -- advantages -------------------------------------------------------------------------------


def gae(rewards: torch.Tensor, vals: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) by generalised advantage estimation over [B, A] padded answers.

    Padding holds zero reward and zero value, so each answer's recursion starts at its own
    last token with V(after the end) = 0.
    """
    adv = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0])
    width = rewards.shape[1]
    for t in reversed(range(width)):
        nxt = vals[:, t + 1] if t + 1 < width else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * nxt - vals[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        adv[:, t] = last
    return adv, (adv + vals) * mask


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    n = mask.sum().clamp(min=1)
    mean = (x * mask).sum() / n
    var = (((x - mean) * mask) ** 2).sum() / (n - 1).clamp(min=1)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


# -- KL control -------------------------------------------------------------------------------


@dataclass
class KLController:
    """beta, fixed or adapted toward a target KL per token after every rollout.

    The floor matters early: while the policy has not moved, KL is far below target and a
    multiplicative controller would shrink beta every step; left unbounded it reaches ~0
    by the time the policy starts to move, and then cannot climb back fast enough to hold
    the budget (measured on the tiny model: beta 0.2 -> 0.0005 in 8 steps, then KL out of
    budget within 3 steps). With a floor the penalty is never switched off.
    """

    coef: float
    target: float | None  # None: fixed
    rate: float
    floor: float = 0.0

    def update(self, kl: float) -> None:
        if self.target is not None:
            error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.coef = max(self.coef * (1.0 + self.rate * error), self.floor)


# -- the plugin -------------------------------------------------------------------------------


class RMPPOOptimizer:
    """RLHF: a reward model (trained on the pairs, or the run's learned judge), then PPO against it."""

    name = "rm_ppo"
    needs = frozenset({"pairs", "prompts", "sampler"})
    wants = frozenset({"reward_model"})  # a given reward model (train.reward_model) is used instead of training one

    class Params(TrainParams):
        learning_rate: float = Field(3e-5, gt=0, le=1.0, description="the policy adapter's learning rate")
        batch_size: int = Field(8, ge=1, le=4096, description="prompts per rollout")
        samples_per_prompt: int = Field(2, ge=1, le=64, description="answers sampled per prompt in a rollout")
        minibatch_size: int = Field(8, ge=1, le=4096, description="answers per optimizer step in the update "
                                    "(in grad_accum forward/backward pieces)")
        ppo_epochs: int = Field(4, ge=1, le=100, description="passes over each rollout")
        temperature: float = Field(1.0, gt=0, description="sampling temperature (log-probs are taken at it)")
        clip_range: float = Field(0.2, gt=0, description="policy ratio clip")
        clip_range_value: float = Field(0.2, gt=0, description="value clip around the rollout's values")
        gamma: float = Field(1.0, ge=0, le=1)
        lam: float = Field(0.95, ge=0, le=1, description="GAE lambda")
        value_learning_rate: float = Field(1e-4, gt=0, le=1.0, description="the value adapter's and head's")
        vf_coef: float = Field(0.1, gt=0, description="weight of the value loss in the clipped gradient")
        kl_control: Literal["fixed", "adaptive"] = "adaptive"
        kl_coef: float = Field(0.05, ge=0, description="beta of the per-token KL penalty (initial, when adaptive)")
        kl_target: float | None = Field(None, gt=0, description="KL per token the controller aims at; "
                                        "none: kl_target_share of the run's drift budget")
        kl_target_share: float = Field(0.5, gt=0, le=1, description="share of the drift budget aimed at")
        kl_rate: float = Field(0.5, gt=0, le=5, description="adaptive gain: at most +-kl_rate*20% per step")
        kl_coef_min: float = Field(0.01, ge=0, description="adaptive beta never falls below this")
        kl_early_stop: bool = Field(True, description="stop when a rollout's KL per token leaves the budget")
        missing_eos_penalty: float | None = Field(None, ge=0, description="subtracted from the score of an "
                                                  "answer that never ended within the token budget")
        reward_model: RewardModelParams = Field(RewardModelParams(),
                                                description="the reward model's own training, when one is trained")

    def fit(self, ctx: "RunContext", params: "RMPPOOptimizer.Params") -> TrainResult:
        return PPORun(ctx, params).run()


class PPORun:
    """One rm_ppo run: set-up, then `run()` loops rollout -> update; state in attributes."""

    def __init__(self, ctx: "RunContext", params: RMPPOOptimizer.Params):
        self.ctx, self.p, self.run_settings = ctx, params, ctx.settings
        budget = ctx.settings.kl_budget
        target = params.kl_target or (budget * params.kl_target_share if budget else None)
        if params.kl_control == "adaptive" and target is None:
            raise ValueError("rm_ppo: adaptive KL control needs a target: set train.params.kl_target, "
                             "or run with a drift budget (gates.kl_budget)")
        self.budget = budget
        self.kl = KLController(params.kl_coef, target if params.kl_control == "adaptive" else None, params.kl_rate,
                               min(params.kl_coef_min, params.kl_coef))
        self.prompts = ctx.prompt_rows()
        if not self.prompts:
            raise ValueError("rm_ppo: no prompts to roll out (data.prompts or the prompts of the pairs)")

    # -- set-up --------------------------------------------------------------------------

    def reward_model(self) -> tuple[Any, TrainResult | None]:
        """The run's learned judge when it has one, else a reward model trained now on the pairs."""
        judge = self.ctx.judge
        if judge is not None and getattr(judge, "learned", False):
            log.info("rm_ppo: PPO against the run's reward model (%s)", getattr(judge, "name", type(judge).__name__))
            return judge, None
        if not self.ctx.pairs:
            raise ValueError("rm_ppo: no learned judge was given and there are no pairs to train a reward model on")
        # Its own folders (out/reward_model, out/reward_model.checkpoints); a finished one of the
        # same run is loaded, not retrained, so a run killed during PPO resumes straight into PPO.
        rm_ctx = dataclasses.replace(self.ctx, callbacks=())
        return fit_reward_model(rm_ctx, self.p.reward_model, metric_prefix="rm/train/")

    def value_model(self) -> torch.nn.Linear:
        policy = self.ctx.policy
        if VALUE in policy.adapters:
            raise ValueError("rm_ppo: this policy already has a 'value' adapter (from another run?); "
                             "build a fresh policy")
        policy.add_adapter(VALUE, seed=self.run_settings.seed + 1)
        hidden = policy.model.get_base_model().config.hidden_size
        head = torch.nn.Linear(hidden, 1).to(policy.device)
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
        return head

    def plan(self, total: int) -> list[list[int]]:
        """Prompt indices per step: seeded shuffles of all prompts, one after another."""
        order: list[int] = []
        epoch = 0
        while len(order) < total * self.p.batch_size:
            idx = list(range(len(self.prompts)))
            random.Random(f"rm_ppo-{self.run_settings.seed}-{epoch}").shuffle(idx)
            order += idx
            epoch += 1
        b = self.p.batch_size
        return [order[s * b:(s + 1) * b] for s in range(total)]

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> TrainResult:
        from tqdm.auto import tqdm

        ctx, p, run = self.ctx, self.p, self.run_settings
        policy = ctx.policy
        t_start = time.perf_counter()
        torch.manual_seed(run.seed)
        judge, rm = self.reward_model()
        head = self.value_model()
        for n, prm in policy.model.named_parameters():  # PPO trains the policy and the value, nothing else
            if prm.requires_grad and f".{POLICY}." not in n and f".{VALUE}." not in n:
                prm.requires_grad_(False)
        policy.model.eval()  # no dropout: the ratio measures the policy's change only

        natural = math.ceil(p.epochs * len(self.prompts) / p.batch_size)
        total = p.max_steps or natural
        steps = self.plan(total)
        named = dict(policy.model.named_parameters())
        pol_w = [w for n, w in named.items() if w.requires_grad and f".{POLICY}." in n]
        val_w = [w for n, w in named.items() if w.requires_grad and f".{VALUE}." in n] + list(head.parameters())
        optimizer = torch.optim.AdamW([{"params": pol_w, "lr": p.learning_rate},
                                       {"params": val_w, "lr": p.value_learning_rate}], weight_decay=p.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(p.warmup_steps, total))

        items = [json.dumps(m, sort_keys=True) for m in self.prompts]
        items += [f"judge:{getattr(judge, 'meta', {}).get('run_key') or getattr(judge, 'name', type(judge).__name__)}",
                  f"settings:{run.max_new_tokens}:{run.max_length}:{self.budget}"]
        key = run_key(RMPPOOptimizer.name, p, base_fingerprint(policy), run.seed, items)
        modules = {"policy": policy.model, "value_head": head}
        optimizers, schedulers = {"ppo": optimizer}, {"ppo": scheduler}
        start, sums, count, curves = 0, defaultdict(float), 0, defaultdict(list)
        ckpt = ctx.checkpointer.latest(key) if run.resume else None
        if ckpt is not None:
            loaded = ctx.checkpointer.load(ckpt, modules, optimizers, schedulers)
            st = loaded["state"]
            start, count, self.kl.coef = loaded["step"], st["count"], st["kl_coef"]
            sums.update(st["sums"])
            curves.update(st["curves"])
            log.info("resuming rm_ppo from %s (step %d of %d)", ckpt, start, total)

        bar = tqdm(total=total, initial=start, desc="rm_ppo update", unit="step", disable=not run.progress, leave=False)
        stopped = None
        for step in range(start, total):
            t0 = time.perf_counter()
            batch = self.rollout(judge, head, [self.prompts[i] for i in steps[step]], seed=run.seed * 100003 + step)
            metrics = batch.metrics
            metrics["ppo/kl_coef"] = self.kl.coef
            if p.kl_early_stop and self.budget is not None and metrics["ppo/kl"] > self.budget:
                stopped = (f"KL {metrics['ppo/kl']:.4g} nats/token left the drift budget {self.budget:g} "
                           f"at step {step + 1} of {total}: stopped early")
                log.warning("rm_ppo: %s", stopped)
                ctx.tracker.log_metrics(metrics, step=step + 1)
                for k in ("ppo/reward", "ppo/kl", "ppo/response_length"):
                    curves[k].append(metrics[k])
                break
            metrics.update(self.update(batch, head, optimizer, pol_w + val_w, step, total))
            scheduler.step()
            self.kl.update(metrics["ppo/kl"])
            metrics["ppo/tokens_per_s"] = batch.new_tokens / max(time.perf_counter() - t0, 1e-9)
            for k, v in metrics.items():
                sums[k] += v
            count += 1
            for k in ("ppo/reward", "ppo/kl", "ppo/response_length", "ppo/kl_coef"):
                curves[k].append(metrics[k])
            ctx.tracker.log_metrics(metrics, step=step + 1)
            bar.set_postfix(reward=f"{metrics['ppo/reward']:.3f}", kl=f"{metrics['ppo/kl']:.4f}",
                            len=f"{metrics['ppo/response_length']:.1f}", tok_s=f"{metrics['ppo/tokens_per_s']:.0f}")
            bar.update(1)
            log.info("rm_ppo step %d of %d: reward %.4g, KL %.4g/token (beta %.3g), length %.1f, %.0f tokens/s",
                     step + 1, total, metrics["ppo/reward"], metrics["ppo/kl"], metrics["ppo/kl_coef"],
                     metrics["ppo/response_length"], metrics["ppo/tokens_per_s"])
            saved = None
            if run.checkpoint_every and (step + 1) % run.checkpoint_every == 0 and step + 1 < total:
                state = {"count": count, "sums": dict(sums), "curves": dict(curves), "kl_coef": self.kl.coef}
                saved = ctx.checkpointer.save(step + 1, key, modules, optimizers, schedulers, state)
            for cb in ctx.callbacks:
                cb(StepInfo(step + 1, total, dict(metrics), saved))
        bar.close()

        out = ctx.out_dir
        adapter = policy.save_adapter(out / "adapter")
        value_dir = policy.save_adapter(out / "value_head", name=VALUE)
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
                  str(value_dir / "value_head.safetensors"))
        ctx.checkpointer.clear()
        final = {k: v / max(count, 1) for k, v in sums.items()}
        last = {k: v[-1] for k, v in curves.items() if v}
        gated = {k: last[k] for k in ("ppo/kl", "ppo/reward", "ppo/response_length") if k in last}
        artifacts = {"adapter": str(adapter), "value_head": str(value_dir)}
        if rm is not None:
            final.update(rm.metrics)
            gated.update(rm.gated)
            artifacts["reward_model"] = rm.artifacts["reward_model"]
        elif hasattr(judge, "save"):  # a given reward model travels with the run that used it
            artifacts["reward_model"] = str(judge.save(out / "reward_model"))
        extra = {"curves": dict(curves), "stopped_early": stopped, "resumed_from": str(ckpt) if ckpt else None,
                 "kl_target": self.kl.target, "kl_budget": self.budget, "total_seconds": time.perf_counter() - t_start}
        return TrainResult(artifacts=artifacts, metrics=final, steps=count, gated=gated, extra=extra)

    # -- rollout ---------------------------------------------------------------------------

    @torch.no_grad()
    def rollout(self, judge, head, prompts: list[list], seed: int) -> "Rollout":
        ctx, p = self.ctx, self.p
        policy, sampler = ctx.policy, ctx.sampler
        s = sampler.sample(prompts, n=p.samples_per_prompt, temperature=p.temperature, seed=seed,
                           with_reference=True, desc="rm_ppo rollout")
        answers = [s.scored_ids(r, sampler.eos_id) for r in range(len(s))]
        rows = make_rows(s.prompt_ids, answers, sampler.pad_id, policy.device)
        mask = rows.mask.cpu()
        width = mask.shape[1]

        def padded(seqs: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack([torch.nn.functional.pad(x.float(), (0, width - len(x))) for x in seqs])

        old, ref = padded(s.logps), padded(s.ref_logps)
        scores = judge_scores(judge, prompts, s, sampler.eos_id)
        finished = torch.tensor(s.finished)
        shaped = scores.clone()
        if p.missing_eos_penalty:
            shaped[~finished] -= p.missing_eos_penalty
        vals = values(policy, head, rows).float().cpu()
        kl = (old - ref) * mask
        rewards = -self.kl.coef * kl
        last = mask.sum(1).long() - 1
        rewards[torch.arange(len(s)), last] += shaped
        adv, returns = gae(rewards, vals, mask, p.gamma, p.lam)
        n_tok = mask.sum().clamp(min=1)
        metrics = {
            "ppo/reward": float(scores.mean()),
            "ppo/kl": float(kl.sum() / n_tok),
            "ppo/entropy": float(-(old * mask).sum() / n_tok),
            "ppo/response_length": sum(len(a) for a in s.answer_ids) / len(s),
        }
        return Rollout(rows, old, vals, whiten(adv, mask), returns, mask, s.new_tokens, metrics)

    # -- update ----------------------------------------------------------------------------

    def update(self, batch: "Rollout", head, optimizer, weights, step: int, total: int) -> dict[str, float]:
        p, policy = self.p, self.ctx.policy
        acc: dict[str, float] = defaultdict(float)
        n_mb = 0
        gen = torch.Generator().manual_seed(self.run_settings.seed * 1000003 + step)
        n = batch.mask.shape[0]
        dev = policy.device
        for _ in range(p.ppo_epochs):
            perm = torch.randperm(n, generator=gen)
            for lo in range(0, n, p.minibatch_size):
                for idx in perm[lo:lo + p.minibatch_size].chunk(p.grad_accum):  # micro-batches of one step
                    mb = batch.select(idx, dev)
                    new = policy_logps(policy, mb.rows, p.temperature)
                    vpred = values(policy, head, mb.rows)
                    mask = mb.mask
                    ratio = torch.exp(new - mb.old)
                    pg1 = -mb.adv * ratio
                    pg2 = -mb.adv * ratio.clamp(1 - p.clip_range, 1 + p.clip_range)
                    pg_loss = masked_mean(torch.max(pg1, pg2), mask)
                    vclip = mb.vals + (vpred - mb.vals).clamp(-p.clip_range_value, p.clip_range_value)
                    vf_loss = 0.5 * masked_mean(torch.max((vpred - mb.ret) ** 2, (vclip - mb.ret) ** 2), mask)
                    loss = pg_loss + p.vf_coef * vf_loss
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise TrainingDiverged(step + 1, "the PPO loss", value)
                    (loss / p.grad_accum).backward()
                    with torch.no_grad():
                        acc["ppo/clip_fraction"] += float(masked_mean((pg2 > pg1).float(), mask))
                        acc["ppo/approx_kl"] += float(masked_mean(0.5 * (new - mb.old) ** 2, mask))
                        acc["ppo/value_loss"] += float(vf_loss)
                    n_mb += 1
                norm = float(torch.nn.utils.clip_grad_norm_(weights, p.max_grad_norm))
                if not math.isfinite(norm):
                    raise TrainingDiverged(step + 1, "the gradient norm", norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        return {k: v / max(n_mb, 1) for k, v in acc.items()}


@dataclass
class Minibatch:
    rows: Rows
    old: torch.Tensor
    vals: torch.Tensor
    adv: torch.Tensor
    ret: torch.Tensor
    mask: torch.Tensor


@dataclass
class Rollout:
    """A rollout's answers as rows, and per answer token: rollout log-probs, values, advantages, returns."""

    rows: Rows
    old: torch.Tensor  # [N, A] on the CPU
    vals: torch.Tensor
    adv: torch.Tensor
    ret: torch.Tensor
    mask: torch.Tensor
    new_tokens: int
    metrics: dict[str, float]

    def select(self, idx: torch.Tensor, device: torch.device) -> Minibatch:
        """Rows `idx`, trimmed to their own widest answer and row (less padding per minibatch)."""
        r = self.rows
        dev_idx = idx.to(r.input_ids.device)
        width = int(self.mask[idx].sum(1).max())
        row_len = min(r.input_ids.shape[1], -(-int(r.attention_mask[dev_idx].sum(1).max()) // PAD_MULTIPLE) * PAD_MULTIPLE)
        rows = Rows(r.input_ids[dev_idx][:, :row_len], r.attention_mask[dev_idx][:, :row_len],
                    r.answer_mask[dev_idx][:, :row_len], r.index[dev_idx][:, :width].clamp(max=row_len - 1),
                    r.mask[dev_idx][:, :width])
        return Minibatch(rows, *(t[idx][:, :width].to(device) for t in (self.old, self.vals, self.adv, self.ret,
                                                                          self.mask)))
