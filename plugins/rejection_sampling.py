"""Rejection sampling (best-of-N): sample N answers per prompt, keep the judge's best against
its worst, and tune on the kept answers; several rounds, each sampling from the policy the
round before it made.

One round, read top to bottom in `RejectionSamplingOptimizer.fit`:

1. sample N answers per prompt from the current policy (seeded by the run's seed and the round);
2. score every sample with the judge: the reward model by default (the run's learned judge
   when it has one, else one trained first on the run's pairs with `fit_reward_model`), or
   the run's configured judge (`judge: run`, e.g. the transparent rubric);
3. per prompt, the best and the worst sample by score among those that finished within the
   token budget (a cut-off answer would teach stopping mid-sentence, and finished-over-cut-off
   pairs would be length-skewed by the budget rather than the judge); the pair is kept
   when the best beats the worst by more than `margin` and the judge prefers it in both
   orders (`compare_both_orders`: a position-biased judge keeps nothing it cannot confirm);
4. the kept pairs go through the data desk (`ctx.checked`): a judge that rewards length
   picks long-over-short pairs, which the desk's length-bias check refuses before anything
   trains on them;
5. tune with the engine: SFT on the best answers, or DPO best-over-worst (`tune`).

Logged per round (step = round): `rs/samples_per_prompt`, `rs/kept_fraction` (kept pairs
/ prompts), `rs/kept_score` (mean score of the kept best answers) against `rs/mean_score`
(mean score of all samples), and the diversity the selection loses:
`rs/distinct_ngrams_before` / `_after`, the share of distinct word bigrams among the kept
answers against the same number of samples drawn without selection (one per prompt, the
average over the N draws), so the two figures count alike. After the last round the
policy samples the first round's prompts again with the first round's seed:
`rs/mean_score_after` against round one's `rs/mean_score` is the reward the tuning bought
(`rs/reward_gain`).

Resuming: round k works in `out_dir/round-k/`. Its kept pairs (`kept_pairs.json`) are
written before tuning and reused by a restarted run; the engine checkpoints the tuning
there; a finished round (`done.json`) is not redone, its adapter is loaded instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import re
from functools import partial
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from prefdesk.plugins.dpo import dpo_loss
from prefdesk.plugins.reward_model import GATED as RM_GATED
from prefdesk.plugins.reward_model import RewardModelParams, fit_reward_model
from prefdesk.plugins.sft import sft_loss
from prefdesk.context import RunContext
from prefdesk.engine.loop import train
from prefdesk.engine.refcache import base_fingerprint
from prefdesk.judges import Judge, compare_both_orders
from prefdesk.pairs import Pair
from prefdesk.plugin import TrainParams, TrainResult

log = logging.getLogger("prefdesk")


class RejectionSamplingParams(TrainParams):
    samples_per_prompt: int = Field(4, ge=2, le=64, description="N answers sampled per prompt")
    temperature: float = Field(0.8, gt=0, le=2.0)
    top_p: float = Field(0.95, gt=0, le=1.0)
    margin: float = Field(0.0, ge=0, description="keep a prompt only when its best beats its worst by more than this")
    rounds: int = Field(1, ge=1, le=20)
    prompts_per_round: int | None = Field(None, ge=1, description="a seeded subset of the prompts each round")
    tune: Literal["sft", "dpo"] = Field("sft", description="SFT on the best answers, or DPO best-over-worst")
    beta: float = Field(0.1, gt=0, description="DPO's beta when tune=dpo")
    judge: Literal["reward_model", "run"] = Field(
        "reward_model", description="reward_model: the run's reward model, else one trained on its pairs first; "
        "run: the run's configured judge (train.judge)")
    reward_model: RewardModelParams = Field(RewardModelParams(), description="when a reward model is trained first")
    finished_only: bool = Field(True, description="both answers of a pair must have ended within the token budget "
                                "(tuning on a cut-off answer teaches stopping mid-sentence, and finished-vs-cut-off "
                                "pairs are length-skewed by the budget, not by the judge)")
    measure_after: bool = Field(True, description="sample round one's prompts again after tuning (rs/mean_score_after)")


class RejectionSamplingOptimizer:
    """Best-of-N rejection sampling: the judge's best answer over its worst, tuned on with SFT or DPO."""

    name = "rejection_sampling"
    needs = frozenset({"prompts", "sampler", "judge"})
    Params = RejectionSamplingParams

    def fit(self, ctx: RunContext, params: RejectionSamplingParams) -> TrainResult:
        judge, rm = self._judge(ctx, params)
        prompts = ctx.prompt_rows()
        key, steps, rounds = _key(params, ctx, judge), 0, []
        for k in range(params.rounds):
            key = _key(key, k)
            subset = [prompts[i] for i in _round_prompts(len(prompts), params.prompts_per_round, ctx.settings.seed, k)]
            result = self._round(_round_context(ctx, k, steps), judge, subset, params, k, key)
            ctx.tracker.log_metrics({m: v for m, v in result.metrics.items() if m.startswith("rs/")}, step=k + 1)
            steps += result.steps
            rounds.append((subset, result))
        result = rounds[-1][1]
        result.steps = steps
        if params.measure_after:  # round one's prompts and seed again: the reward the tuning bought
            subset, first = rounds[0]
            s = ctx.sampler.sample(subset, n=params.samples_per_prompt, temperature=params.temperature,
                                   top_p=params.top_p, seed=_seed(ctx, 0), desc="rejection sampling: after")
            after = _mean(_scores(judge, subset, s))
            figures = {"rs/mean_score_after": after, "rs/reward_gain": after - first.metrics["rs/mean_score"]}
            ctx.tracker.log_metrics(figures, step=params.rounds)
            result.metrics.update(figures)
        if rm is not None:
            result.artifacts["reward_model"] = rm.artifacts["reward_model"]
            result.metrics.update({k: v for k, v in rm.metrics.items() if k.startswith("rm/")})
        calibration = getattr(judge, "meta", {}).get("figures", {})  # the judge's own held-out figures
        result.gated.update({k: calibration[k] for k in RM_GATED if k in calibration})
        return result

    def _round(self, rctx: RunContext, judge: Judge, prompts: list, params: RejectionSamplingParams, k: int,
               key: str) -> TrainResult:
        """One round in `rctx.out_dir`: collect, desk, tune; a finished round is loaded, not redone."""
        done = _read(rctx.out_dir / "done.json", key)
        if done is not None:
            _load_adapter(rctx, rctx.out_dir / "adapter")
            return TrainResult({"adapter": str(rctx.out_dir / "adapter")}, done["metrics"], done["steps"])
        kept, figures = self._collect(rctx, judge, prompts, params, k, key)
        kept = rctx.checked(kept, f"{self.name}-round-{k + 1}")
        if not kept:
            raise ValueError(f"rejection sampling round {k + 1}: no pair was kept and accepted by the data desk "
                             f"(margin {params.margin}, {params.samples_per_prompt} samples per prompt)")
        loss = sft_loss if params.tune == "sft" else partial(dpo_loss, beta=params.beta)
        result = train(dataclasses.replace(rctx, pairs=kept), params, loss, name=f"{self.name}-{params.tune}")
        result.metrics.update(figures)
        _write(rctx.out_dir / "done.json", key, {"metrics": result.metrics, "steps": result.steps})
        return result

    # -- the judge ------------------------------------------------------------------------

    @staticmethod
    def _judge(ctx: RunContext, params: RejectionSamplingParams) -> tuple[Judge, TrainResult | None]:
        if params.judge == "run" or getattr(ctx.judge, "learned", False):
            if ctx.judge is None:
                raise ValueError("rejection sampling needs a judge (train.judge or train.reward_model)")
            return ctx.judge, None
        if not ctx.pairs:
            raise ValueError("rejection sampling with judge=reward_model needs train.reward_model, or pairs "
                             "to train one on (data.train); judge=run uses the configured judge instead")
        judge, rm = fit_reward_model(ctx, params.reward_model)
        return judge, rm

    # -- one round's pairs ----------------------------------------------------------------

    def _collect(self, rctx: RunContext, judge: Judge, prompts: list, params: RejectionSamplingParams, k: int,
                 key: str) -> tuple[list[Pair], dict[str, float]]:
        """Sample, score, keep best over worst; reused from `kept_pairs.json` after a restart."""
        saved = _read(rctx.out_dir / "kept_pairs.json", key)
        if saved is not None:
            return [Pair.from_dict(d) for d in saved["pairs"]], saved["figures"]
        n = params.samples_per_prompt
        s = rctx.sampler.sample(prompts, n=n, temperature=params.temperature, top_p=params.top_p,
                                seed=_seed(rctx, k), desc=f"rejection sampling: round {k + 1}")
        scores = _scores(judge, prompts, s)
        best, worst = [], []
        for i in range(len(prompts)):
            rows = range(i * n, (i + 1) * n)
            ended = [r for r in rows if s.finished[r] or not params.finished_only]
            best.append(max(ended, key=lambda r: scores[r]) if len(ended) > 1 else None)
            worst.append(min(ended, key=lambda r: scores[r]) if len(ended) > 1 else None)
        cand = [i for i in range(len(prompts)) if best[i] is not None and scores[best[i]] - scores[worst[i]] > params.margin
                and s.text[best[i]].strip() != s.text[worst[i]].strip()]
        verdict = compare_both_orders(judge, [prompts[i] for i in cand], [s.text[best[i]] for i in cand],
                                      [s.text[worst[i]] for i in cand],
                                      finished=([s.finished[best[i]] for i in cand], [s.finished[worst[i]] for i in cand]))
        keep = [i for i, p in zip(cand, verdict.p_first) if p > 0.5]
        pairs = [Pair(prompt=prompts[i], chosen=s.text[best[i]], rejected=s.text[worst[i]], source="rejection_sampling",
                      meta={"round": k + 1, "best_score": scores[best[i]], "worst_score": scores[worst[i]]})
                 for i in keep]
        figures = {
            "rs/samples_per_prompt": float(n),
            "rs/kept_fraction": len(keep) / max(len(prompts), 1),
            "rs/kept_score": _mean([scores[best[i]] for i in keep]),
            "rs/mean_score": _mean(scores),
            "rs/mean_score_finished": _mean(x for x, f in zip(scores, s.finished) if f),  # what the best is picked from
            "rs/distinct_ngrams_before": _mean([distinct_ngrams([s.text[i * n + j] for i in keep]) for j in range(n)]),
            "rs/distinct_ngrams_after": distinct_ngrams([s.text[best[i]] for i in keep]),
            "rs/order_disagreement": verdict.disagreement,
            "rs/finished_share": s.stats["finished"],
            "rs/sample_tokens_per_s": s.tokens_per_s,
        }
        log.info("rejection sampling round %d: kept %d of %d prompts; kept answers score %.3f against %.3f for the "
                 "mean sample; distinct bigrams %.3f -> %.3f", k + 1, len(keep), len(prompts), figures["rs/kept_score"],
                 figures["rs/mean_score"], figures["rs/distinct_ngrams_before"], figures["rs/distinct_ngrams_after"])
        _write(rctx.out_dir / "kept_pairs.json", key, {"pairs": [p.to_dict() for p in pairs], "figures": figures})
        return pairs, figures


# -- helpers ------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")


def distinct_ngrams(texts: list[str], n: int = 2) -> float:
    """Distinct word n-grams / all word n-grams over the texts (distinct-n, Li et al. 2016)."""
    grams = [tuple(w[i:i + n]) for t in texts for w in [_WORD.findall(t.lower())] for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _scores(judge: Judge, prompts: list, s) -> list[float]:
    return list(judge.score([prompts[i] for i in s.prompt_index], s.text, finished=s.finished))


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def _seed(ctx: RunContext, k: int) -> int:
    return ctx.settings.seed * 1000 + k


def _round_prompts(n: int, per_round: int | None, seed: int, k: int) -> list[int]:
    if not per_round or per_round >= n:
        return list(range(n))
    return sorted(random.Random(f"prefdesk-rs-{seed}-{k}").sample(range(n), per_round))


def _key(*parts: Any) -> str:
    """A round's identity: the run's (params, base, prompts, judge) chained through the rounds."""
    def plain(x: Any) -> Any:
        if isinstance(x, TrainParams):
            return x.model_dump(mode="json")
        if isinstance(x, RunContext):
            return [base_fingerprint(x.policy), x.settings.seed, x.settings.max_new_tokens, repr(x.prompt_rows())]
        if hasattr(x, "score"):  # a judge: a learned one by the run it was trained in
            return [x.name, getattr(x, "meta", {}).get("run_key")]
        return x
    return hashlib.sha256(json.dumps([plain(p) for p in parts], sort_keys=True, default=str).encode()).hexdigest()[:20]


def _read(path: Path, key: str) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if doc.get("key") == key else None


def _write(path: Path, key: str, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, **doc}, default=float))
    tmp.replace(path)


def _load_adapter(ctx: RunContext, folder: Path) -> None:
    """A finished round's weights back into the policy's adapter (the next round starts from them)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(ctx.policy.model, load_file(str(folder / "adapter_model.safetensors")), adapter_name="default")


class _Offset:
    """The tracker with a step offset, so round k's training curve follows round k-1's."""

    def __init__(self, tracker, offset: int):
        self._tracker, self._offset = tracker, offset

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._tracker.log_metrics(metrics, step=(step or 0) + self._offset)

    def __getattr__(self, name: str):
        return getattr(self._tracker, name)


def _round_context(ctx: RunContext, k: int, steps_before: int) -> RunContext:
    settings = dataclasses.replace(ctx.settings, output_dir=ctx.out_dir / f"round-{k + 1}")
    return dataclasses.replace(ctx, settings=settings, tracker=_Offset(ctx.tracker, steps_before))
