"""From pairs to padded tensors: encode once, bucket by length, one forward per pair batch.

Three choices keep the wasted compute small:

* **Length bucketing.** Pairs are shuffled (seeded), cut into mega-batches of
  `batch_size * MEGABATCH` pairs, sorted by length inside each mega-batch and cut into
  batches; then the batch order is shuffled again. Neighbours in a batch have similar
  lengths, so little of each batch is padding, while the data order stays random at the
  scale of an epoch.
* **Concatenated chosen + rejected.** A batch of B pairs is ONE tensor of 2B rows (chosen
  rows first, then the rejected ones), so the policy runs one forward and one backward per
  step instead of two of each.
* **Right padding with an attention mask.** Real tokens come first, so under causal
  attention they never see the padding; the loss only reads answer positions.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Sequence

import torch

from prefdesk.engine.tokenize import Encoded, encode
from prefdesk.pairs import Pair

MEGABATCH = 16  # batches per length-sorted mega-batch
PAD_MULTIPLE = 16  # training batches are padded to a multiple of this many tokens


@dataclass(frozen=True)
class EncodedPair:
    """A pair after tokenization: the chosen and rejected sequences share the prompt."""

    pair_id: str
    chosen: Encoded
    rejected: Encoded

    @property
    def length(self) -> int:
        """The row width this pair needs in a batch."""
        return max(len(self.chosen.input_ids), len(self.rejected.input_ids))

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
    """2B right-padded rows: rows [0, B) are the chosen answers, rows [B, 2B) the rejected.

    `answer_mask[r, t]` is 1 where token t of row r belongs to the answer (the loss reads
    only those). `index` points back into the list of encoded pairs the batch came from.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    answer_mask: torch.Tensor
    index: list[int] = field(default_factory=list)

    @property
    def n_pairs(self) -> int:
        return self.input_ids.shape[0] // 2

    @property
    def n_tokens(self) -> int:
        """Real (non-padding) tokens: what tokens/s counts."""
        return int(self.attention_mask.sum())

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(
            self.input_ids.to(device, non_blocking=True),
            self.attention_mask.to(device, non_blocking=True),
            self.answer_mask.to(device, non_blocking=True),
            self.index,
        )


def pad_sequences(seqs: Sequence[Encoded], pad_id: int, multiple: int = 1) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `attention_mask` and `answer_mask` for a list of encodings.

    `multiple` rounds the width up: fewer distinct shapes means fewer kernel set-ups
    (oneDNN builds a bf16 primitive per new shape on CPU; GPUs like multiples of 8).
    """
    width = max(len(e.input_ids) for e in seqs)
    width = -(-width // multiple) * multiple
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    ans = torch.zeros_like(ids)
    for i, e in enumerate(seqs):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        attn[i, :n] = 1
        ans[i, e.answer_start : n] = 1
    return {"input_ids": ids, "attention_mask": attn, "answer_mask": ans}


def collate(
    items: Sequence[EncodedPair], pad_id: int, index: Sequence[int] | None = None, multiple: int = 1
) -> Batch:
    """One concatenated batch: chosen rows, then rejected rows, padded to the longest."""
    seqs = [it.chosen for it in items] + [it.rejected for it in items]
    t = pad_sequences(seqs, pad_id, multiple)
    return Batch(t["input_ids"], t["attention_mask"], t["answer_mask"], list(index or range(len(items))))


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
