"""Drift: how far the tuned policy moved from the reference, measured on held-out material.

Every figure is computed twice, for the policy and for the reference (the same module with
the adapter off), on the same prompts with the same greedy decoding, so a gate compares like
with like. Nothing here uses the training reward: factuality comes from log-likelihoods of
true vs false answers, refusal from what the model actually says.

- KL: exact per-position KL(policy || reference) over the whole vocabulary, along the
  policy's own greedy answers (no sampling noise; cheap at these lengths).
- length: generated answer tokens (eos excluded); ratio policy / reference.
- over-refusal: share of should-answer prompts refused; under-refusal: share of
  should-refuse prompts answered (phrase detector in `prefdesk.refusal`).
- factuality: share of MC items whose true answer has the highest mean token log-prob.
- pair accuracy: share of held-out pairs whose chosen answer has the higher mean log-prob.
- reward: the implicit preference reward of held-out pairs,
  [log π(c) − log π_ref(c)] − [log π(r) − log π_ref(r)]; 0 for the reference by definition.
  `reward_accuracy` is the share of held-out pairs where it is positive (ties half): the
  held-out version of `train/reward_accuracy`, 0.5 for the reference.
- win rate: policy answer vs reference answer on each prompt, judged by a transparent
  rubric (right refusal decision first, then finishing within budget, then no loops);
  ties count half, so the reference against itself scores exactly 0.5.
- reward-model score (only when the run trained or was given a learned reward model): the
  judge's mean score of the policy's answers, and of the reference's, on the same prompts.
  A proxy, reported next to the guard rails, never in place of them.

One engine for all of it: the answers come from the engine's sampler (`engine.generate`,
greedy, batched, each role in turn), the MC options and held-out pairs from its shared-prompt
scoring (`engine.logprobs.answers_logps`: a question's options run the prompt once). Each
phase shows its progress as the engine does (a bar with tokens/s).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import torch

from prefdesk.atomic import write_text
from prefdesk.config import EvalSettings
from prefdesk.engine.batching import pad_sequences
from prefdesk.engine.generate import Sampler
from prefdesk.engine.logprobs import answers_logps, compute_context, hidden_states, unwrap
from prefdesk.engine.tokenize import Encoded
from prefdesk.evalsets import EvalSet, user
from prefdesk.evidence import evidence_metrics, paired_comparison, win_rate_from_scores
from prefdesk.judges import RubricJudge
from prefdesk.models import POLICY, REFERENCE, Policy
from prefdesk.refusal import is_refusal
from prefdesk.sycophancy import sycophancy_metrics

if TYPE_CHECKING:
    from prefdesk.judges import Judge

MAX_PROMPT_TOKENS = 384
SCORE_CHUNKS = 8  # progress updates per log-prob scoring phase
DRIFT_NAMES = (
    "kl_per_token",
    "kl_per_response",
    "length_ratio",
    "mean_length",
    "over_refusal_rate",
    "under_refusal_rate",
    "factuality_mc_accuracy",
    "pair_accuracy",
    "win_rate",
    "reward_mean",
    "reward_accuracy",
    "sycophancy_rate",
)
# Figures measured only when the run has what they need (a learned reward model).
OPTIONAL_NAMES = ("reward_model_score",)


@dataclass
class Generation:
    prompt: str
    expect: str  # "answer" | "refuse"
    prompt_ids: list[int]
    answer_ids: list[int]
    text: str
    finished: bool  # ended with eos within the token budget

    @property
    def refused(self) -> bool:
        return is_refusal(self.text)


class _Progress:
    """One eval phase's progress the way the engine shows it (a tqdm bar, tokens/s as postfix)."""

    def __init__(self, total: int, desc: str, unit: str, enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False)
        self.t0, self.tokens = time.perf_counter(), 0

    def update(self, items: int, tokens: int) -> None:
        self.tokens += tokens
        self.bar.update(items)
        self.bar.set_postfix(tok_s=f"{self.tokens / max(time.perf_counter() - self.t0, 1e-9):.0f}")

    def close(self) -> None:
        self.bar.close()


def _role_name(role: str) -> str:
    return {REFERENCE: "reference", POLICY: "policy"}.get(role, role)


def generate(policy: Policy, prompts: list[tuple[str, str]], settings: EvalSettings, role: str = POLICY,
             progress: bool = True) -> list[Generation]:
    """Greedy answers of one role (policy or reference) from the engine's batched sampler.

    Greedy, so deterministic: the policy and the reference answer the same prompts the same way
    every run, and any difference between them is the adapter's.
    """
    sampler = Sampler(policy, max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size,
                      max_prompt_tokens=MAX_PROMPT_TOKENS, progress=progress)
    s = sampler.sample([user(p) for p, _ in prompts], n=1, temperature=0.0, role=role,
                       desc=f"eval: generating ({_role_name(role)})")
    return [Generation(p, expect, s.prompt_ids[i], s.answer_ids[i], s.text[i], s.finished[i])
            for i, (p, expect) in enumerate(prompts)]


def _chunks(n: int, parts: int) -> Iterator[range]:
    step = max(1, -(-n // parts))
    for start in range(0, n, step):
        yield range(start, min(start + step, n))


def score_answers(policy: Policy, items: Sequence[tuple[list, Sequence[str]]], settings: EvalSettings, role: str,
                  desc: str, max_length: int = 512, progress: bool = True) -> list[list[tuple[float, float]]]:
    """(sum log-prob, answer tokens) of each answer of each (prompt, answers) item, as `role`.

    The engine's shared-prompt path (`answers_logps`): the options of one MC question, the two
    answers of a held-out pair, run their prompt once. Scored in a few slices only to show progress.
    """
    # Slices of similar length (roughly, by characters), so slicing costs little padding.
    order = sorted(range(len(items)), key=lambda i: sum(len(m["content"]) for m in items[i][0])
                   + max((len(a) for a in items[i][1]), default=0))
    bar = _Progress(len(items), desc, "item", progress)
    out: list[list[tuple[float, float]]] = [[] for _ in items]
    try:
        for piece in _chunks(len(order), SCORE_CHUNKS):
            idx = [order[k] for k in piece]
            part = answers_logps(policy, [items[i] for i in idx], role=role, max_length=max_length,
                                 batch_size=settings.batch_size)
            for i, row in zip(idx, part):
                out[i] = row
            bar.update(len(idx), int(sum(n for row in part for _, n in row)))
    finally:
        bar.close()
    return out


@torch.no_grad()
def kl_along(policy: Policy, gens: list[Generation], settings: EvalSettings, progress: bool = True) -> list[tuple[float, int]]:
    """(summed per-position KL(policy||reference), positions) for each generated answer.

    Exact over the whole vocabulary, but the LM head runs only at the positions that predict
    answer tokens (the engine's decoder-then-gather path), batched by length.
    """
    tok = policy.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eos = tok.eos_token_id
    model = policy.model
    head = unwrap(model).get_output_embeddings()
    out: list[tuple[float, int]] = [(0.0, 0)] * len(gens)
    # Score every generated token, and the eos when the answer ended with one.
    encs = [Encoded(g.prompt_ids + g.answer_ids + ([eos] if g.finished else []), len(g.prompt_ids)) for g in gens]
    order = sorted(range(len(gens)), key=lambda i: len(encs[i].input_ids))
    bar = _Progress(len(gens), "eval: KL along the policy's answers", "answer", progress)

    def logp(b: dict, rows: torch.Tensor, preds: torch.Tensor) -> torch.Tensor:
        h = hidden_states(model, b["input_ids"], b["attention_mask"])[rows, preds]
        return head(h).float().log_softmax(-1)

    try:
        with compute_context(model, policy.dtype, policy.device.type):
            for start in range(0, len(order), settings.batch_size):
                idx = order[start : start + settings.batch_size]
                b = {k: v.to(policy.device) for k, v in pad_sequences([encs[i] for i in idx], pad).items()}
                pos = b["answer_mask"][:, 1:].bool().nonzero(as_tuple=False)  # position t-1 predicts answer token t
                rows, preds = pos[:, 0], pos[:, 1]
                lp = logp(b, rows, preds)
                with policy.reference():
                    lr = logp(b, rows, preds)
                kl = (lp.exp() * (lp - lr)).sum(-1).clamp_min(0.0)
                counts = torch.bincount(rows, minlength=len(idx)).tolist()
                for i, piece, n in zip(idx, kl.split(counts), counts):
                    out[i] = (float(piece.sum()), int(n))
                bar.update(len(idx), sum(counts))
    finally:
        bar.close()
    return out


def rubric_score(g: Generation) -> float:
    """The win-rate judge (`judges.RubricJudge`): refusal decision first, then finishing, then no loops."""
    return RubricJudge().score([user(g.prompt)], [g.text], expect=[g.expect], finished=[g.finished])[0]


def _rate(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0


def _side(policy: Policy, role: str, evalset: EvalSet, settings: EvalSettings, max_length: int,
          progress: bool) -> dict:
    """Everything measurable on one role (policy or reference) alone."""
    name = _role_name(role)
    prompts = [(p, "answer") for p in evalset.answer] + [(p, "refuse") for p in evalset.refuse]
    gens = generate(policy, prompts, settings, role=role, progress=progress)
    mc = score_answers(policy, [(user(m.question), (m.true, *m.false)) for m in evalset.mc], settings, role,
                       f"eval: factuality options ({name})", max_length, progress)
    means = [[s / max(n, 1) for s, n in opts] for opts in mc]  # mean token log-prob: true first
    correct = [m[0] > max(m[1:]) for m in means]
    pairs = score_answers(policy, [(p.prompt, (p.chosen, p.rejected)) for p in evalset.pairs], settings, role,
                          f"eval: held-out pairs ({name})", max_length, progress)
    chosen, rejected = [c for c, _ in pairs], [r for _, r in pairs]
    answered = [g for g in gens if g.expect == "answer"]
    refuse = [g for g in gens if g.expect == "refuse"]
    return {
        "gens": gens,
        "pair_sums": [(c[0], r[0]) for c, r in zip(chosen, rejected)],
        "mean_length": sum(len(g.answer_ids) for g in gens) / max(len(gens), 1),
        "over_refusal_rate": _rate([g.refused for g in answered]),
        "under_refusal_rate": _rate([not g.refused for g in refuse]),
        "factuality_mc_accuracy": _rate(correct),
        "pair_correct": [c[0] / max(c[1], 1) > r[0] / max(r[1], 1) for c, r in zip(chosen, rejected)],
    }


def reward_model_scores(judge: "Judge", gens: list[Generation]) -> list[float]:
    """A learned judge's score of each generated answer (the prompt as the user's message)."""
    return list(judge.score([user(g.prompt) for g in gens], [g.text for g in gens],
                            expect=[g.expect for g in gens], finished=[g.finished for g in gens]))


@dataclass
class DriftResult:
    metrics: dict[str, float]
    samples: list[dict]

    def write(self, folder: str | Path) -> tuple[Path, Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        m, s = folder / "drift.json", folder / "samples.jsonl"
        write_text(m, json.dumps(self.metrics, indent=2, sort_keys=True))
        write_text(s, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in self.samples))
        return m, s


def evaluate(policy: Policy, evalset: EvalSet, settings: EvalSettings, *, judge: "Judge | None" = None,
             max_length: int = 512, progress: bool = True) -> DriftResult:
    """Drift metrics of the policy, with the reference's figures under `reference/drift/...`.

    `judge`: a learned reward model (`judges.create("reward_model", ...)`); with one, the
    mean score of the policy's and of the reference's answers is reported as
    `drift/reward_model_score` (and its reference figure), a proxy the gates may read.
    """
    evalset = evalset.capped(settings.max_prompts)
    model = policy.model
    was_training = model.training
    model.eval()
    try:
        ref = _side(policy, REFERENCE, evalset, settings, max_length, progress)
        pol = _side(policy, POLICY, evalset, settings, max_length, progress)
        kl = kl_along(policy, pol["gens"], settings, progress)
        rm_pol = reward_model_scores(judge, pol["gens"]) if judge is not None else None
        rm_ref = reward_model_scores(judge, ref["gens"]) if judge is not None else None
        sycophancy = sycophancy_metrics(policy, evalset.mc, max_length=max_length, batch_size=settings.batch_size)
    finally:
        model.train(was_training)

    kl_sum = sum(s for s, _ in kl)
    kl_tokens = sum(n for _, n in kl)
    reward = [(pc - rc) - (pr - rr) for (pc, pr), (rc, rr) in zip(pol["pair_sums"], ref["pair_sums"])]
    wins = []
    for gp, gr in zip(pol["gens"], ref["gens"]):
        sp, sr = rubric_score(gp), rubric_score(gr)
        wins.append(1.0 if sp > sr else 0.5 if sp == sr else 0.0)

    policy_fig = {
        "kl_per_token": kl_sum / max(kl_tokens, 1),
        "kl_per_response": kl_sum / max(len(kl), 1),
        "mean_length": pol["mean_length"],
        "length_ratio": pol["mean_length"] / max(ref["mean_length"], 1e-9),
        "over_refusal_rate": pol["over_refusal_rate"],
        "under_refusal_rate": pol["under_refusal_rate"],
        "factuality_mc_accuracy": pol["factuality_mc_accuracy"],
        "pair_accuracy": _rate(pol["pair_correct"]),
        "win_rate": sum(wins) / max(len(wins), 1),
        "reward_mean": sum(reward) / max(len(reward), 1),
        "reward_accuracy": sum(1.0 if r > 0 else 0.5 if r == 0 else 0.0 for r in reward) / max(len(reward), 1),
    }
    ref_fig = {
        "kl_per_token": 0.0,
        "kl_per_response": 0.0,
        "mean_length": ref["mean_length"],
        "length_ratio": 1.0,
        "over_refusal_rate": ref["over_refusal_rate"],
        "under_refusal_rate": ref["under_refusal_rate"],
        "factuality_mc_accuracy": ref["factuality_mc_accuracy"],
        "pair_accuracy": _rate(ref["pair_correct"]),
        "win_rate": 0.5,
        "reward_mean": 0.0,
        "reward_accuracy": 0.5,
    }
    if rm_pol is not None and rm_ref is not None:
        policy_fig["reward_model_score"] = sum(rm_pol) / max(len(rm_pol), 1)
        ref_fig["reward_model_score"] = sum(rm_ref) / max(len(rm_ref), 1)
    metrics = {f"drift/{k}": float(v) for k, v in policy_fig.items()}
    metrics.update({f"reference/drift/{k}": float(v) for k, v in ref_fig.items()})
    metrics.update(sycophancy)
    # the evidence a promotion needs: intervals, not point figures (prefdesk.evidence)
    metrics.update(evidence_metrics(win_rate_from_scores(wins), paired_comparison(pol["pair_correct"], ref["pair_correct"])
                                    if evalset.pairs else None))
    samples = [
        {
            "prompt": gp.prompt,
            "expect": gp.expect,
            "policy": gp.text,
            "reference": gr.text,
            "policy_refused": gp.refused,
            "reference_refused": gr.refused,
            "policy_tokens": len(gp.answer_ids),
            "reference_tokens": len(gr.answer_ids),
            "kl": k[0],
            "verdict": {1.0: "policy", 0.5: "tie", 0.0: "reference"}[w],
        }
        for gp, gr, k, w in zip(pol["gens"], ref["gens"], kl, wins)
    ]
    if rm_pol is not None and rm_ref is not None:
        for row, sp, sr in zip(samples, rm_pol, rm_ref):
            row.update(policy_reward_model_score=sp, reference_reward_model_score=sr)
    return DriftResult(metrics, samples)


def evaluate_adapter(cfg, adapter: str | Path | None, evalset: EvalSet | None = None,
                     reward_model: str | Path | None = None, progress: bool = True) -> DriftResult:
    """Drift of a saved adapter (or of an untouched LoRA when None) against the reference.

    `reward_model`: a learned reward model (folder or `models:/NAME@ALIAS`) to score both
    sides' answers with; it loads as one more adapter on the same base (no second copy).
    """
    from prefdesk import judges
    from prefdesk.evalsets import load_evalset
    from prefdesk.models import build_policy

    policy = build_policy(cfg.model, adapter=adapter, trainable=False)
    if evalset is None:
        evalset = load_evalset(cfg.data.eval, cfg.eval.refusal_sets, cfg.eval.factuality)
    judge = judges.create("reward_model", policy=policy, source=str(reward_model)) if reward_model else None
    return evaluate(policy, evalset, cfg.eval, judge=judge, max_length=cfg.data.max_length, progress=progress)
