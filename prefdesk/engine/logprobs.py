"""Log-probabilities of answer tokens, without materialising logits for the whole sequence.

A causal LM's usual forward computes logits for every position: [batch, seq, vocab], 49k
wide for SmolLM2, which is most of the memory and a large share of the time of a step.
Only answer tokens enter a preference loss, so here the decoder runs alone, the hidden
states that predict answer tokens are gathered, and the LM head runs on those rows only,
in chunks, with the log-softmax in fp32.

Right-padded batches (what `batching.collate` makes) need no attention mask at all: under
causal attention a real token only attends to earlier positions, which are all real, so
the mask is dropped and the attention kernel takes its fast causal path. Batches padded
any other way (left padding) get the mask plus matching position ids.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch

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


def hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """[B, T, H] last hidden states of the decoder (no LM head)."""
    kwargs = {"input_ids": input_ids, "use_cache": False}
    if not is_right_padded(attention_mask):
        kwargs["attention_mask"] = attention_mask
        kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return decoder(model)(**kwargs).last_hidden_state


def token_logps(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, answer_mask: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """[B, T] log p(token_t | tokens_<t) at answer positions, 0 elsewhere (fp32).

    `answer_mask[b, t]` is 1 where token t is an answer token (it is predicted by the
    hidden state at t-1). `temperature` scales the logits first, as the sampler does.
    """
    hidden = hidden_states(model, input_ids, attention_mask)  # [B, T, H]
    head = _lm_head(model)
    target_mask = answer_mask[:, 1:].bool()
    pos = target_mask.nonzero(as_tuple=False)  # rows (b, t-1) predicting token t
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    if pos.numel() == 0:
        return out + hidden.sum() * 0.0  # keeps the graph connected for backward
    h = hidden[:, :-1][pos[:, 0], pos[:, 1]]  # [N, H]
    targets = input_ids[:, 1:][pos[:, 0], pos[:, 1]]
    pieces = []
    for i in range(0, h.shape[0], CHUNK):
        logits = head(h[i : i + CHUNK]).float()
        if temperature != 1.0:
            logits = logits / temperature
        # -cross_entropy == log_softmax gathered at the target, in one fused kernel.
        pieces.append(-torch.nn.functional.cross_entropy(logits, targets[i : i + CHUNK], reduction="none"))
    vals = torch.cat(pieces)
    return out.index_put((pos[:, 0], pos[:, 1] + 1), vals)


def sequence_logps(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, answer_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of answer-token log-probs [B], number of answer tokens [B]), both fp32.

    The first token of a row is never counted (nothing predicts it), so an answer mask
    that starts at position 0 counts one token fewer than it marks.
    """
    lp = token_logps(model, input_ids, attention_mask, answer_mask)
    return lp.sum(-1), answer_mask[:, 1:].sum(-1).to(lp.dtype)


def compute_context(model, dtype: torch.dtype, device_type: str) -> contextlib.AbstractContextManager:
    """Mixed precision for a bf16 base with fp32 LoRA weights: bf16 compute, fp32 weights.

    peft casts each adapter layer's input up to the adapter's fp32, so every LoRA layer
    would convert a [tokens, hidden] activation to fp32 and back, forward and backward
    (measured: a quarter of a SmolLM2 step on CPU). Under bf16 autocast with that cast
    switched off, the adapter runs in bf16 like the base, its fp32 weights are cast once
    per forward, and the gradients still land in fp32 on the fp32 weights (AdamW state
    stays fp32). Other dtypes (fp32; fp16, which would need a loss scaler) run as they are.
    """
    if dtype != torch.bfloat16:
        return contextlib.nullcontext()
    from peft.helpers import disable_input_dtype_casting

    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(device_type=device_type, dtype=torch.bfloat16))
    stack.enter_context(disable_input_dtype_casting(model))
    return stack


class AnswerLogps(torch.nn.Module):
    """`sequence_logps` as a module, so `accelerate` can wrap it (DDP needs its forward)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, answer_mask):
        return sequence_logps(self.model, input_ids, attention_mask, answer_mask)


@torch.no_grad()
def pair_logps(
    policy,
    encoded: Sequence,
    batch_size: int = 8,
    reference: bool = False,
    batches: Sequence[Sequence[int]] | None = None,
    multiple: int = 1,
) -> torch.Tensor:
    """[N, 4] = (chosen logp, rejected logp, chosen tokens, rejected tokens) per encoded pair.

    `encoded` is a list of `batching.EncodedPair`; `reference=True` scores with the
    adapter disabled. Batches are length-sorted for the least padding unless `batches`
    (lists of indices into `encoded`) says how to group them; rows come back in the
    input order.
    """
    from prefdesk.engine.batching import collate, sorted_batches

    pad = policy.tokenizer.pad_token_id
    out = torch.zeros(len(encoded), 4, dtype=torch.float32)
    if not encoded:
        return out
    was_training = policy.model.training
    policy.model.eval()
    try:
        amp = compute_context(policy.model, policy.dtype, policy.device.type)
        with amp, policy.reference() if reference else contextlib.nullcontext():
            for idx in batches if batches is not None else sorted_batches([e.length for e in encoded], batch_size):
                idx = list(idx)
                b = collate([encoded[i] for i in idx], pad, idx, multiple).to(policy.device)
                s, n = sequence_logps(policy.model, b.input_ids, b.attention_mask, b.answer_mask)
                s, n = s.float().cpu(), n.float().cpu()
                k = len(idx)
                out[idx] = torch.stack([s[:k], s[k:], n[:k], n[k:]], dim=1)
    finally:
        policy.model.train(was_training)
    return out

