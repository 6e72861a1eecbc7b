"""From pairs to padded tensors: encode once, bucket by length, one forward per pair batch.

Four choices keep the wasted compute small:

* **The prompt computed once per pair (shared prefix).** The chosen and the rejected
  sequence start with the same prompt tokens, often three quarters of the pair. A pair is
  packed into ONE row, `[prompt | chosen | rejected]`, with a block mask: every token sees
  the prompt and the earlier tokens of its own answer, the rejected answer never sees the
  chosen one, and its position ids restart after the prompt. Each answer token then gets
  exactly the hidden state it would get in a row of its own (equal within float rounding),
  for a quarter to a third less work. The same packing serves any number of answers to
  one prompt (multiple-choice options, held-out pairs: `logprobs.answers_logps`).
* **Length bucketing.** Pairs are shuffled (seeded), cut into mega-batches of
  `batch_size * MEGABATCH` pairs, sorted by length inside each mega-batch and cut into
  batches; then the batch order is shuffled again. Neighbours in a batch have similar
  lengths, so little of each batch is padding, while the data order stays random at the
  scale of an epoch.
* **One forward per batch.** All answers of a batch go through one forward and one
  backward (packed rows, or, with sharing off, chosen rows then rejected rows).
* **Right padding.** Real tokens come first, so they never see the padding; the loss
  only reads the answer positions the batch lists.

A batch does not carry an answer mask but the list of scored tokens: for each, its row,
its position and the position of the hidden state that predicts it (the previous position,
except for an answer's first token after a shared prefix, which the prefix's last token
predicts), and the output slot (item, answer) its log-prob is summed into.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, field
from typing import Sequence

import torch

from prefdesk.engine.tokenize import Encoded, encode
from prefdesk.pairs import Pair

MEGABATCH = 16  # batches per length-sorted mega-batch
PAD_MULTIPLE = 16  # low-precision and GPU training batches are padded to a multiple of this many tokens
LAYOUTS = {True: "shared-prefix", False: "separate"}


def pad_multiple(dtype: torch.dtype, device_type: str) -> int:
    """Row-width multiple for training batches.

    oneDNN builds a bf16/fp16 primitive per new shape on CPU and GPUs like multiples of 8,
    so those round widths up to 16 (fewer distinct shapes); fp32 matmuls on CPU cost the
    same for any width (measured: no first-call penalty), so padding there is pure waste.
    """
    return 1 if dtype == torch.float32 and device_type == "cpu" else PAD_MULTIPLE


def share_prefix_default() -> bool:
    """The engine shares the prompt between answers unless `PREFDESK_SHARE_PREFIX=0` (benchmarks)."""
    return os.environ.get("PREFDESK_SHARE_PREFIX", "1") != "0"


def shared_prefix(seqs: Sequence[Encoded]) -> int:
    """Tokens all `seqs` have in common at the start, never reaching into any answer.

    The whole prompt when the answers share it; less when truncation cut the prompts
    differently (0 at worst: then each answer only sees itself, as in a row of its own).
    """
    if len(seqs) < 2:
        return 0
    limit = min(e.answer_start for e in seqs)
    first = seqs[0].input_ids
    n = 0
    while n < limit and all(e.input_ids[n] == first[n] for e in seqs[1:]):
        n += 1
    return n


def packed_width(seqs: Sequence[Encoded], shared: bool = True) -> int:
    """Row width of a group of answers: packed, or the longest of its separate rows."""
    if not shared:
        return max(len(e.input_ids) for e in seqs)
    s = shared_prefix(seqs)
    return s + sum(len(e.input_ids) - s for e in seqs)


@dataclass(frozen=True)
class EncodedPair:
    """A pair after tokenization: the chosen and rejected sequences share the prompt."""

    pair_id: str
    chosen: Encoded
    rejected: Encoded

    @property
    def answers(self) -> tuple[Encoded, Encoded]:
        return (self.chosen, self.rejected)

    @property
    def length(self) -> int:
        """The row width this pair needs with its prompt shared (what bucketing sorts by)."""
        return packed_width(self.answers, True)

    def width(self, shared: bool) -> int:
        return packed_width(self.answers, shared)

    @property
    def tokens(self) -> int:
        return len(self.chosen.input_ids) + len(self.rejected.input_ids)

    @property
    def token_key(self) -> str:
        """Hash of the exact token ids and answer boundaries: the tokenization's identity.

        Any change of chat template, tokenizer or max_length changes the ids, so a cache
        keyed on this never serves values computed for other tokens.
        """
        h = hashlib.sha256()
        for e in (self.chosen, self.rejected):
            h.update(str(e.answer_start).encode())
            h.update(b":")
            h.update(",".join(map(str, e.input_ids)).encode())
            h.update(b"|")
        return h.hexdigest()[:16]


def encode_pair(tokenizer, pair: Pair, max_length: int) -> EncodedPair:
    return EncodedPair(
        pair_id=pair.id,
        chosen=encode(tokenizer, pair.prompt, pair.chosen, max_length),
        rejected=encode(tokenizer, pair.prompt, pair.rejected, max_length),
    )


def encode_pairs(tokenizer, pairs: Sequence[Pair], max_length: int) -> list[EncodedPair]:
    return [encode_pair(tokenizer, p, max_length) for p in pairs]


@dataclass
class Batch:
    """Padded rows plus the list of scored tokens; log-probs come back as [items, answers].

    `attention_mask` is [R, T] (1 = real token; separate rows, right-padded) or a boolean
    block mask [R, 1, T, T] (True = may attend; packed rows), with `position_ids` [R, T].
    Scored token k sits at `input_ids[rows[k], targets[k]]`, is predicted by the hidden
    state at `(rows[k], preds[k])`, and adds to output slot `slots[k]` of a flat
    [items * answers] vector. `index` points back into the list of encoded items.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor | None
    rows: torch.Tensor
    preds: torch.Tensor
    targets: torch.Tensor
    slots: torch.Tensor
    shape: tuple[int, int]  # (items, answers per item)
    n_tokens: int  # tokens of the sequences themselves (a shared prompt counts once per answer)
    index: list[int] = field(default_factory=list)
    n_padding: int = 0

    @property
    def n_pairs(self) -> int:
        return self.shape[0]

    @property
    def shared(self) -> bool:
        return self.attention_mask.dim() == 4

    @property
    def computed_tokens(self) -> int:
        """Non-padding positions the model actually runs (fewer than `n_tokens` when shared)."""
        return self.input_ids.numel() - self.n_padding

    def inputs(self) -> dict[str, torch.Tensor | tuple[int, int]]:
        """What `logprobs.batch_logps` (and `AnswerLogps`) take."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "position_ids": self.position_ids, "rows": self.rows, "preds": self.preds,
                "targets": self.targets, "slots": self.slots, "shape": self.shape}

    def to(self, device: torch.device | str) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.input_ids), move(self.attention_mask), move(self.position_ids), move(self.rows),
                     move(self.preds), move(self.targets), move(self.slots), self.shape, self.n_tokens,
                     self.index, self.n_padding)


def _round_up(width: int, multiple: int) -> int:
    return -(-width // max(multiple, 1)) * max(multiple, 1)


def pack_groups(
    groups: Sequence[Sequence[Encoded]], pad_id: int, *, shared: bool = True, multiple: int = 1,
    index: Sequence[int] | None = None,
) -> Batch:
    """A batch scoring every answer of every group (item); output slot (item g, answer j).

    shared: one row per group, `[common prefix | answer 1 | answer 2 | ...]` with a block
    mask and position ids that restart after the prefix for every answer.
    not shared: one right-padded row per answer, answer-major (all first answers, then all
    second ones: for pairs, chosen rows then rejected rows), no mask needed.
    An answer's token u (u >= its answer_start, u >= 1) is scored, predicted by token u-1.
    """
    k = max(len(g) for g in groups)
    rows_, preds, targets, slots = [], [], [], []
    n_tokens = sum(len(e.input_ids) for g in groups for e in g)
    if not shared:
        seqs = [(gi, j, g[j]) for j in range(k) for gi, g in enumerate(groups) if j < len(g)]
        width = _round_up(max(len(e.input_ids) for _, _, e in seqs), multiple)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for r, (gi, j, e) in enumerate(seqs):
            n = len(e.input_ids)
            ids[r, :n] = torch.tensor(e.input_ids, dtype=torch.long)
            attn[r, :n] = 1
            for u in range(max(e.answer_start, 1), n):
                rows_.append(r), preds.append(u - 1), targets.append(u), slots.append(gi * k + j)
        position_ids = None
        n_padding = int(ids.numel() - attn.sum())
    else:
        width = _round_up(max(packed_width(g) for g in groups), multiple)
        ids = torch.full((len(groups), width), pad_id, dtype=torch.long)
        seg = torch.full((len(groups), width), -1, dtype=torch.long)  # 0 prefix, j+1 answer j, -1 padding
        pos = torch.zeros((len(groups), width), dtype=torch.long)
        n_padding = 0
        for gi, g in enumerate(groups):
            s = shared_prefix(g)
            ids[gi, :s] = torch.tensor(g[0].input_ids[:s], dtype=torch.long)
            seg[gi, :s] = 0
            pos[gi, :s] = torch.arange(s)
            at = s
            for j, e in enumerate(g):
                tail = e.input_ids[s:]
                ids[gi, at : at + len(tail)] = torch.tensor(tail, dtype=torch.long)
                seg[gi, at : at + len(tail)] = j + 1
                pos[gi, at : at + len(tail)] = torch.arange(s, s + len(tail))
                # token u of the answer sits at `at + u - s`; u - 1 is in the prefix when u == s
                for u in range(max(e.answer_start, 1), len(e.input_ids)):
                    rows_.append(gi), targets.append(at + u - s), slots.append(gi * k + j)
                    preds.append(at + u - s - 1 if u > s else u - 1)
                at += len(tail)
            n_padding += width - at
        pad = seg < 0
        seg = torch.where(pad, torch.arange(width).expand_as(seg) + k + 1, seg)  # padding sees only itself
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        same = (seg[:, :, None] == seg[:, None, :]) | (seg[:, None, :] == 0)
        attn = (same & causal)[:, None]
        position_ids = pos
    as_t = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    return Batch(ids, attn, position_ids, as_t(rows_), as_t(preds), as_t(targets), as_t(slots),
                 (len(groups), k), n_tokens, list(index if index is not None else range(len(groups))), n_padding)


def collate(
    items: Sequence[EncodedPair], pad_id: int, index: Sequence[int] | None = None, multiple: int = 1,
    shared: bool = True,
) -> Batch:
    """One batch of pairs; its log-probs come back as [pairs, 2] = (chosen, rejected)."""
    return pack_groups([it.answers for it in items], pad_id, shared=shared, multiple=multiple, index=index)


def pad_sequences(seqs: Sequence[Encoded], pad_id: int, multiple: int = 1) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `attention_mask` and `answer_mask` for a list of encodings.

    `multiple` rounds the width up: fewer distinct shapes means fewer kernel set-ups
    (oneDNN builds a bf16 primitive per new shape on CPU; GPUs like multiples of 8).
    """
    width = _round_up(max(len(e.input_ids) for e in seqs), multiple)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    ans = torch.zeros_like(ids)
    for i, e in enumerate(seqs):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        attn[i, :n] = 1
        ans[i, e.answer_start : n] = 1
    return {"input_ids": ids, "attention_mask": attn, "answer_mask": ans}


def bucketed_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int = 0) -> list[list[int]]:
    """Indices grouped into batches of similar length; the same (seed, epoch) gives the same plan."""
    rng = random.Random(f"prefdesk-{seed}-{epoch}")  # str seeds hash stably across processes
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    mega = batch_size * MEGABATCH
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: lengths[i], reverse=True)
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """All indices sorted by length, in batches: the least padding, for no-grad passes."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def padding_share(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """Fraction of the padded area that is padding (for the benchmark and the tests)."""
    area = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1.0 - sum(lengths[i] for b in batches for i in b) / max(area, 1)
