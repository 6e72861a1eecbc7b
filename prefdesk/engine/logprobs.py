"""Log-probabilities of answer tokens, without materialising logits for the whole sequence.

A causal LM's usual forward computes logits for every position: [batch, seq, vocab], 49k
wide for SmolLM2, which is most of the memory and a large share of the time of a step.
Only answer tokens enter a preference loss, so here the decoder runs alone, the hidden
states that predict answer tokens are gathered, and the LM head runs on those rows only,
in chunks, with the log-softmax in fp32.

Right-padded batches of separate rows need no attention mask at all: under causal
attention a real token only attends to earlier positions, which are all real, so the mask
is dropped and the attention kernel takes its fast causal path. Packed rows (a shared
prompt, then each answer: `batching.pack_groups`) bring a block mask and position ids;
batches padded any other way (left padding) get the mask plus matching position ids.

Entry points: `batch_logps` (a training batch, with grad), `group_logps` / `pair_logps`
(no grad, whole sets), `answers_logps` (several answers to one prompt, from messages:
what evaluation calls), `token_logps` / `sequence_logps` (any answer-masked batch).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Sequence

import torch

from prefdesk.engine.batching import EncodedPair, pack_groups, packed_width, share_prefix_default, sorted_batches
from prefdesk.engine.tokenize import Encoded, encode
from prefdesk.models import POLICY, REFERENCE

if TYPE_CHECKING:
    from prefdesk.pairs import Message

CHUNK = 1024  # answer positions per log-softmax chunk


def unwrap(model):
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder(model):
    """The decoder stack (hidden states, no LM head) of a causal LM, peft-wrapped or not."""
    inner = unwrap(model)
    return getattr(inner, inner.base_model_prefix, None) or inner.model


def _lm_head(model):
    return unwrap(model).get_output_embeddings()


def is_right_padded(attention_mask: torch.Tensor | None) -> bool:
    """True when every row is ones then zeros (or there is no mask)."""
    if attention_mask is None:
        return True
    return bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())


def block_mask_for(model, mask: torch.Tensor) -> torch.Tensor:
    """A boolean [R, 1, T, T] block mask (True = may attend) in the form the attention takes.

    SDPA takes it as it is (and stays on its fused CPU kernel: measured no slower than
    `is_causal` at these shapes); eager attention adds the mask to the scores, so it gets
    0 / -inf in the compute dtype. Other kernels (flash-attention) take no custom mask:
    callers pack with `shared=False` for them (`supports_block_mask`).
    """
    impl = getattr(unwrap(model).config, "_attn_implementation", "sdpa")
    if impl == "eager":
        dtype = next(decoder(model).parameters()).dtype
        if torch.is_autocast_enabled(mask.device.type):
            dtype = torch.get_autocast_dtype(mask.device.type)
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask


def supports_block_mask(model) -> bool:
    return getattr(unwrap(model).config, "_attn_implementation", "sdpa") in ("sdpa", "eager")


def use_shared_prefix(model, shared: bool | None = None) -> bool:
    """The layout to score in: shared prompts unless switched off or the attention can't mask."""
    return (share_prefix_default() if shared is None else shared) and supports_block_mask(model)


def hidden_states(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """[B, T, H] last hidden states of the decoder (no LM head).

    `attention_mask` is a padding mask [B, T] or a packed block mask [B, 1, T, T] (with
    `position_ids`); a right-padded batch drops its mask for the fast causal kernel.
    """
    kwargs = {"input_ids": input_ids, "use_cache": False}
    if attention_mask is not None and attention_mask.dim() == 4:
        kwargs["attention_mask"] = block_mask_for(model, attention_mask)
        kwargs["position_ids"] = position_ids
    elif not is_right_padded(attention_mask):
        kwargs["attention_mask"] = attention_mask
        kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return decoder(model)(**kwargs).last_hidden_state


def gathered_logps(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None,
    rows: torch.Tensor, preds: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
) -> torch.Tensor:
    """[N] fp32 log p(input_ids[rows, targets] | hidden state at (rows, preds)).

    The LM head runs on the N listed positions only, in chunks, with the log-softmax in
    fp32 (`-cross_entropy` is log_softmax gathered at the target, in one fused kernel).
    """
    hidden = hidden_states(model, input_ids, attention_mask, position_ids)  # [B, T, H]
    if rows.numel() == 0:
        return torch.zeros(0, device=input_ids.device) + hidden.sum() * 0.0  # keeps the graph connected
    head = _lm_head(model)
    h = hidden[rows, preds]  # [N, H]
    tgt = input_ids[rows, targets]
    pieces = []
    for i in range(0, h.shape[0], CHUNK):
        logits = head(h[i : i + CHUNK]).float()
        if temperature != 1.0:
            logits = logits / temperature
        pieces.append(-torch.nn.functional.cross_entropy(logits, tgt[i : i + CHUNK], reduction="none"))
    return torch.cat(pieces)


def batch_logps(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None,
    rows: torch.Tensor, preds: torch.Tensor, targets: torch.Tensor, slots: torch.Tensor, shape: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of answer log-probs, answer tokens), each [items, answers] fp32, of a `batching.Batch`."""
    vals = gathered_logps(model, input_ids, attention_mask, position_ids, rows, preds, targets)
    n = shape[0] * shape[1]
    sums = torch.zeros(n, dtype=torch.float32, device=vals.device).index_add(0, slots, vals)
    counts = torch.zeros(n, dtype=torch.float32, device=vals.device).index_add(0, slots, torch.ones_like(vals))
    return sums.view(shape), counts.view(shape)


def _answer_positions(answer_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, preds, targets) of a [B, T] answer mask: token t is predicted by t-1, t >= 1."""
    pos = answer_mask[:, 1:].bool().nonzero(as_tuple=False)
    return pos[:, 0], pos[:, 1], pos[:, 1] + 1


def token_logps(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, answer_mask: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """[B, T] log p(token_t | tokens_<t) at answer positions, 0 elsewhere (fp32).

    `answer_mask[b, t]` is 1 where token t is an answer token (it is predicted by the
    hidden state at t-1). `temperature` scales the logits first, as the sampler does.
    """
    rows, preds, targets = _answer_positions(answer_mask)
    vals = gathered_logps(model, input_ids, attention_mask, None, rows, preds, targets, temperature)
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    return out.index_put((rows, targets), vals)


def sequence_logps(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, answer_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of answer-token log-probs [B], number of answer tokens [B]), both fp32.

    The first token of a row is never counted (nothing predicts it), so an answer mask
    that starts at position 0 counts one token fewer than it marks.
    """
    lp = token_logps(model, input_ids, attention_mask, answer_mask)
    return lp.sum(-1), answer_mask[:, 1:].sum(-1).to(lp.dtype)


LOW_PRECISION = (torch.bfloat16, torch.float16)


def compute_context(model, dtype: torch.dtype, device_type: str) -> contextlib.AbstractContextManager:
    """Mixed precision for a bf16 (or fp16) base with fp32 LoRA weights: low-precision compute.

    peft casts each adapter layer's input up to the adapter's fp32, so every LoRA layer
    would convert a [tokens, hidden] activation to fp32 and back, forward and backward
    (measured: a quarter of a SmolLM2 step on CPU). Under autocast with that cast switched
    off, the adapter runs in the base's dtype, its fp32 weights are cast once per forward,
    and the gradients still land in fp32 on the fp32 weights (AdamW state stays fp32).
    fp16 needs a loss scaler on top (the loop brings one); fp32 runs as it is.
    """
    if dtype not in LOW_PRECISION:
        return contextlib.nullcontext()
    from peft.helpers import disable_input_dtype_casting

    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(device_type=device_type, dtype=dtype))
    stack.enter_context(disable_input_dtype_casting(model))
    return stack


class AnswerLogps(torch.nn.Module):
    """`batch_logps` as a module, so `accelerate` can wrap it (DDP needs its forward)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, rows, preds, targets, slots, shape):
        return batch_logps(self.model, input_ids, attention_mask, position_ids, rows, preds, targets, slots, shape)


# -- scoring whole sets of answers (no grad) ----------------------------------------------


@torch.no_grad()
def group_logps(
    policy,
    groups: Sequence[Sequence[Encoded]],
    *,
    role: str = POLICY,
    batch_size: int = 8,
    batches: Sequence[Sequence[int]] | None = None,
    multiple: int = 1,
    shared: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sums, counts), each [groups, max answers] fp32 on CPU: every answer of every group.

    A group is several encodings of one prompt with different answers (a pair, the options
    of a multiple-choice item); with `shared` (the default) the prompt runs once per group.
    `role` is the adapter to score with ("reference": all adapters off). Groups are batched
    by packed length for the least padding unless `batches` (lists of indices into
    `groups`) says how; results come back in the input order (0 where a group has fewer
    answers than the widest).
    """
    shared = use_shared_prefix(policy.model, shared)
    k = max((len(g) for g in groups), default=0)
    sums = torch.zeros(len(groups), k, dtype=torch.float32)
    counts = torch.zeros_like(sums)
    if not groups:
        return sums, counts
    if batches is None:
        batches = sorted_batches([packed_width(g, shared) for g in groups], batch_size)
    pad = policy.tokenizer.pad_token_id
    model = policy.model
    was_training = model.training
    model.eval()
    try:
        with policy.use(role), compute_context(model, policy.dtype, policy.device.type):
            for idx in batches:
                idx = list(idx)
                b = pack_groups([groups[i] for i in idx], pad, shared=shared, multiple=multiple, index=idx)
                s, n = batch_logps(model, **b.to(policy.device).inputs())
                w = s.shape[1]
                sums[idx, :w], counts[idx, :w] = s.float().cpu(), n.float().cpu()
    finally:
        model.train(was_training)
    return sums, counts


def pair_logps(
    policy,
    encoded: Sequence[EncodedPair],
    batch_size: int = 8,
    reference: bool = False,
    batches: Sequence[Sequence[int]] | None = None,
    multiple: int = 1,
    shared: bool | None = None,
) -> torch.Tensor:
    """[N, 4] = (chosen logp, rejected logp, chosen tokens, rejected tokens) per encoded pair.

    `reference=True` scores with the adapter disabled. The reference cache calls this
    with the first epoch's `batches` and the training `multiple`, so its values are what
    the training forward computes (see `refcache.reference_logps`).
    """
    s, n = group_logps(policy, [e.answers for e in encoded], role=REFERENCE if reference else POLICY,
                       batch_size=batch_size, batches=batches, multiple=multiple, shared=shared)
    if not encoded:
        return torch.zeros(0, 4)
    return torch.cat([s, n], dim=1)


def answers_logps(
    policy,
    items: Sequence[tuple[Sequence[Message], Sequence[str]]],
    *,
    role: str = POLICY,
    max_length: int = 512,
    batch_size: int = 8,
    shared: bool | None = None,
) -> list[list[tuple[float, float]]]:
    """(sum of log-probs, answer tokens) of every answer of every (prompt, answers) item.

    For several answers to one prompt: the options of a multiple-choice question, the two
    answers of a held-out pair. The prompt runs once per item, however many answers it
    has, and each answer's figures equal those of a forward of its own (float rounding
    aside). Mean token log-prob = sum / tokens.
    """
    groups = [[encode(policy.tokenizer, list(prompt), a, max_length) for a in answers] for prompt, answers in items]
    sums, counts = group_logps(policy, groups, role=role, batch_size=batch_size, shared=shared)
    return [[(float(sums[g, j]), float(counts[g, j])) for j in range(len(group))] for g, group in enumerate(groups)]
