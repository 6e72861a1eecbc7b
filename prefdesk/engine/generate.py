"""The sampler: batched generation with a KV cache and per-token log-probs, for every family.

One generator in the code base: drift evaluation (greedy answers of the policy and of the
reference), rejection sampling (n samples per prompt, then a judge) and PPO rollouts
(samples plus the log-probs of the sampled tokens under the policy and the reference) all
call `Sampler.sample`.

Why a loop of our own rather than `model.generate`: the log-prob of each sampled token is
a by-product of the step that sampled it (`generate` would need `output_scores` and a
second pass to turn scores into log-probs), the reference's log-probs of the same tokens
come from one teacher-forced pass right after (no second decode), and seeding is exact:
one `torch.Generator` per call, so the same prompts, settings and seed give the same
samples on every run.

Shapes: prompts are left-padded so every row's next token sits in the last column; the
KV cache grows by one column per step; rows that have finished keep receiving the pad
token (masked) until the whole batch is done. Prompts are sorted by length before
batching (less padding); `n` samples of one prompt sit in adjacent rows.

Log-probs are those of the sampling distribution before top-p truncation: log softmax of
logits / temperature (temperature 1 for greedy). `score()` computes the same quantity by
teacher forcing, so a PPO update that re-scores a rollout sees the same numbers (up to
float noise) as the rollout did.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import torch

from prefdesk.engine.logprobs import compute_context, token_logps
from prefdesk.engine.tokenize import encode_prompt

if TYPE_CHECKING:
    from prefdesk.models import Policy
    from prefdesk.pairs import Message


@dataclass
class Samples:
    """Row r answers prompt `prompt_index[r]`; `n` rows per prompt, in prompt order."""

    prompt_index: list[int]
    prompt_ids: list[list[int]]
    answer_ids: list[list[int]]  # generated tokens, the end-of-answer token excluded
    text: list[str]
    finished: list[bool]  # ended with the end-of-answer token within the budget
    logps: list[torch.Tensor]  # per scored token (answer, plus the eos when finished), sampling model
    ref_logps: list[torch.Tensor] | None = None  # the same tokens under the reference
    seconds: float = 0.0
    stats: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.answer_ids)

    @property
    def new_tokens(self) -> int:
        return sum(len(a) + f for a, f in zip(self.answer_ids, self.finished))

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / max(self.seconds, 1e-9)

    def scored_ids(self, r: int, eos_id: int) -> list[int]:
        """The tokens `logps[r]` scores: the answer, and the eos when the answer finished."""
        return self.answer_ids[r] + ([eos_id] if self.finished[r] else [])


def _top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Mask logits outside the smallest set whose probability reaches top_p (nucleus sampling)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def _left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
            attn[i, width - len(r):] = 1
    return ids, attn


class Sampler:
    """Batched generation from a `Policy` in any role (policy, reference, a named adapter)."""

    def __init__(self, policy: "Policy", max_new_tokens: int = 64, batch_size: int = 16,
                 max_prompt_tokens: int = 512, progress: bool = True):
        self.policy = policy
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.max_prompt_tokens = max_prompt_tokens
        self.progress = progress
        tok = policy.tokenizer
        self.eos_id = tok.eos_token_id
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def encode(self, prompts: Sequence[list["Message"]]) -> list[list[int]]:
        return [encode_prompt(self.policy.tokenizer, p, self.max_prompt_tokens) for p in prompts]

    @torch.no_grad()
    def sample(
        self,
        prompts: Sequence[list["Message"]],
        *,
        n: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        role: str = "default",
        with_reference: bool = False,
        max_new_tokens: int | None = None,
        desc: str = "generating",
    ) -> Samples:
        """`n` answers per prompt; greedy when temperature is 0 (then n is usually 1)."""
        from tqdm.auto import tqdm

        if temperature < 0 or not 0 < top_p <= 1 or n < 1:
            raise ValueError("sampler: temperature must be >= 0, top_p in (0, 1], n >= 1")
        budget = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        encoded = self.encode(prompts)
        rows = [(i, k) for i in sorted(range(len(encoded)), key=lambda i: len(encoded[i])) for k in range(n)]
        gen = torch.Generator(device=self.policy.device).manual_seed(seed)
        answers: dict[tuple[int, int], tuple[list[int], bool, torch.Tensor]] = {}
        t0 = time.perf_counter()
        made = 0
        bar = tqdm(total=len(rows), desc=desc, unit="answer", disable=not self.progress, leave=False)
        model = self.policy.model
        was_training = model.training
        model.eval()
        try:
            with self.policy.use(role), compute_context(model, self.policy.dtype, self.policy.device.type):
                for start in range(0, len(rows), self.batch_size):
                    chunk = rows[start:start + self.batch_size]
                    out = self._decode([encoded[i] for i, _ in chunk], budget, temperature, top_p, gen)
                    for key, res in zip(chunk, out):
                        answers[key] = res
                        made += len(res[0]) + res[1]
                    bar.update(len(chunk))
                    bar.set_postfix(tok_s=f"{made / max(time.perf_counter() - t0, 1e-9):.0f}")
        finally:
            model.train(was_training)
            bar.close()
        order = [(i, k) for i in range(len(encoded)) for k in range(n)]
        tok = self.policy.tokenizer
        samples = Samples(
            prompt_index=[i for i, _ in order],
            prompt_ids=[encoded[i] for i, _ in order],
            answer_ids=[answers[key][0] for key in order],
            text=[tok.decode(answers[key][0], skip_special_tokens=True) for key in order],
            finished=[answers[key][1] for key in order],
            logps=[answers[key][2] for key in order],
        )
        samples.seconds = time.perf_counter() - t0
        if with_reference:
            samples.ref_logps = self.score(samples.prompt_ids, [samples.scored_ids(r, self.eos_id) for r in range(len(samples))],
                                           role="reference", temperature=temperature or 1.0)
        samples.stats = {"tokens_per_s": samples.tokens_per_s, "seconds": samples.seconds,
                         "finished": sum(samples.finished) / max(len(samples), 1)}
        return samples

    def _decode(self, prompt_rows: list[list[int]], budget: int, temperature: float, top_p: float,
                gen: torch.Generator) -> list[tuple[list[int], bool, torch.Tensor]]:
        from transformers import DynamicCache

        dev = self.policy.device
        ids, attn = _left_pad(prompt_rows, self.pad_id)
        ids, attn = ids.to(dev), attn.to(dev)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        b = ids.shape[0]
        done = torch.zeros(b, dtype=torch.bool, device=dev)
        toks: list[torch.Tensor] = []
        lps: list[torch.Tensor] = []
        step_ids, step_pos = ids, pos
        for _ in range(budget):
            out = self.policy.model(input_ids=step_ids, attention_mask=attn, position_ids=step_pos,
                                    past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            logits = out.logits[:, -1].float()
            scaled = logits / temperature if temperature > 0 else logits
            logp = scaled.log_softmax(-1)
            if temperature > 0:
                probs = _top_p(scaled, top_p).softmax(-1)
                nxt = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
            else:
                nxt = logits.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, self.pad_id), nxt)
            toks.append(nxt)
            lps.append(logp.gather(-1, nxt[:, None]).squeeze(-1))
            done = done | (nxt == self.eos_id)
            if bool(done.all()):
                break
            step_ids = nxt[:, None]
            step_pos = step_pos[:, -1:] + 1
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
        tok_m = torch.stack(toks, 1).cpu()
        lp_m = torch.stack(lps, 1).float().cpu()
        results = []
        for r in range(b):
            row = tok_m[r].tolist()
            finished = self.eos_id in row
            end = row.index(self.eos_id) if finished else len(row)
            results.append((row[:end], finished, lp_m[r, : end + finished].clone()))
        return results

    @torch.no_grad()
    def score(self, prompt_ids: Sequence[list[int]], answer_ids: Sequence[list[int]], *, role: str = "default",
              temperature: float = 1.0, batch_size: int | None = None) -> list[torch.Tensor]:
        """Per-token log-probs of each answer given its prompt, by teacher forcing, as `role`."""
        out: list[torch.Tensor] = [torch.zeros(0)] * len(answer_ids)
        order = sorted(range(len(answer_ids)), key=lambda i: len(prompt_ids[i]) + len(answer_ids[i]))
        bs = batch_size or self.batch_size
        model = self.policy.model
        was_training = model.training
        model.eval()
        try:
            with self.policy.use(role), compute_context(model, self.policy.dtype, self.policy.device.type):
                for start in range(0, len(order), bs):
                    idx = order[start:start + bs]
                    full = [list(prompt_ids[i]) + list(answer_ids[i]) for i in idx]
                    ids, attn = _left_pad(full, self.pad_id)
                    ans = torch.zeros_like(ids)
                    for r, i in enumerate(idx):
                        if answer_ids[i]:
                            ans[r, ids.shape[1] - len(answer_ids[i]):] = 1
                    lp = token_logps(model, ids.to(self.policy.device), attn.to(self.policy.device),
                                     ans.to(self.policy.device), temperature=temperature).cpu()
                    for r, i in enumerate(idx):
                        k = len(answer_ids[i])
                        out[i] = lp[r, ids.shape[1] - k:].clone() if k else torch.zeros(0)
        finally:
            model.train(was_training)
        return out
