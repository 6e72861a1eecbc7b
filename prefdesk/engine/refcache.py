"""Reference log-probs: computed once per pair, kept on disk, never recomputed.

The reference is frozen, so log pi_ref(answer | prompt) of a pair is a constant of the
pair, the base weights and the tokenization. Computing it in one no-grad pass before
training (inside `policy.reference()`, the adapter switched off) removes the reference
forward from every training step, and a second epoch or the next night's run reads it
back from `$PREFDESK_HOME/cache/refs/<base fingerprint>/<layout>/<pair id>-<token key>.pt`.

The key has four parts, so a stale value can never be served:
  * the base fingerprint: name, dtype, quantization and a sample of every base weight
    (a random tiny model with another seed, or a base loaded in bf16 instead of fp32,
    gets another folder);
  * the pair id (a content hash of prompt, chosen and rejected);
  * the token key: a hash of the exact token ids and answer boundaries, which covers the
    chat template, the tokenizer and max_length.

Each entry is one small file, written to a temporary name and renamed, so concurrent runs
and killed runs never leave a half-written value.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import torch

from prefdesk.config import home
from prefdesk.engine.batching import LAYOUTS, EncodedPair, share_prefix_default, sorted_batches
from prefdesk.engine.logprobs import pair_logps, unwrap


def default_root() -> Path:
    return home() / "cache" / "refs"


def base_fingerprint(policy) -> str:
    """Identity of the frozen base (what the reference is), cheap to compute.

    Hashes the name, dtype, quantization and, for every non-adapter tensor, its name,
    shape, dtype and 64 strided samples of its values (the whole 135M weights would take
    a second; the samples already tell two seeds or two checkpoints apart).
    """
    h = hashlib.sha256()
    h.update(f"{policy.base_name}|{policy.dtype}|{policy.quantized}".encode())
    with torch.no_grad():
        for name, t in unwrap(policy.model).state_dict().items():
            if "lora_" in name:
                continue
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
            flat = t.reshape(-1)
            if flat.numel():
                step = max(1, flat.numel() // 64)
                sample = flat[::step][:64].detach().cpu().contiguous()
                h.update(sample.view(torch.uint8).numpy().tobytes() if sample.dtype == torch.bfloat16
                         else sample.numpy().tobytes())
    return h.hexdigest()[:20]


class RefCache:
    """Per-pair reference values: (chosen logp, rejected logp, chosen tokens, rejected tokens)."""

    def __init__(self, fingerprint: str, root: str | Path | None = None, shared: bool = True):
        self.dir = Path(root or default_root()) / fingerprint / LAYOUTS[shared]
        self.shared = shared
        self.hits = 0
        self.misses = 0

    def path(self, ep: EncodedPair) -> Path:
        return self.dir / f"{ep.pair_id}-{ep.token_key}.pt"

    def get(self, ep: EncodedPair) -> torch.Tensor | None:
        p = self.path(ep)
        try:
            v = torch.load(p, weights_only=True)
        except (FileNotFoundError, RuntimeError, EOFError):
            return None
        return v if isinstance(v, torch.Tensor) and v.shape == (4,) else None

    def put(self, ep: EncodedPair, value: torch.Tensor) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        p = self.path(ep)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        torch.save(value.detach().to("cpu", torch.float32).clone(), tmp)
        tmp.replace(p)


def reference_logps(
    policy,
    encoded: Sequence[EncodedPair],
    batch_size: int,
    cache: RefCache | None = None,
    accelerator=None,
    batches: Sequence[Sequence[int]] | None = None,
    multiple: int = 1,
    shared: bool | None = None,
) -> torch.Tensor:
    """[N, 4] reference values for every encoded pair; only cache misses hit the model.

    `batches` (indices into `encoded`) groups the misses as training will: in bf16 the
    sums depend slightly on the padded shape, so scoring the reference in the first
    epoch's own batches and layout (`shared`, as the cache's) makes policy and reference
    agree exactly at step 1 (the loss starts at log 2). With several processes each
    computes a share of the misses and writes it to the cache; after a barrier every
    process reads all of them back.
    """
    values = torch.zeros(len(encoded), 4, dtype=torch.float32)
    missing: list[int] = []
    for i, ep in enumerate(encoded):
        v = cache.get(ep) if cache is not None else None
        if v is None:
            missing.append(i)
        else:
            values[i] = v
    if cache is not None:
        cache.hits, cache.misses = len(encoded) - len(missing), len(missing)
    if not missing:
        return values
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    if world > 1 and cache is None:
        raise ValueError("several processes share reference values through the cache; enable reference_cache")
    shared = (cache.shared if cache is not None else share_prefix_default()) if shared is None else shared
    want = set(missing)
    if batches is None:
        groups = sorted_batches([encoded[i].width(shared) for i in missing], batch_size)
        groups = [[missing[j] for j in g] for g in groups]
    else:
        groups = [[i for i in b if i in want] for b in batches]
        groups = [g for g in groups if g]
    mine = [i for g in groups[rank::world] for i in g]
    pos = {i: j for j, i in enumerate(mine)}
    local = [[pos[i] for i in g] for g in groups[rank::world]]
    computed = pair_logps(policy, [encoded[i] for i in mine], reference=True, batches=local, multiple=multiple,
                          shared=shared)
    for j, i in enumerate(mine):
        values[i] = computed[j]
        if cache is not None:
            cache.put(encoded[i], computed[j])
    if world > 1:
        accelerator.wait_for_everyone()
        for i in missing:
            v = cache.get(encoded[i])
            if v is None:
                raise RuntimeError(f"reference value of pair {encoded[i].pair_id} missing after the barrier")
            values[i] = v
    return values
