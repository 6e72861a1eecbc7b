"""Log-probabilities of answer tokens, without materialising logits for the whole sequence.

The LM head runs only on the hidden states that predict answer tokens, in chunks, so a
49k-token vocabulary never costs a [batch, seq, vocab] tensor.
"""

from __future__ import annotations

import torch

CHUNK = 1024  # answer positions per log-softmax chunk


def _hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = inner.model(input_ids=input_ids, attention_mask=attention_mask)
    return out.last_hidden_state


def _lm_head(model):
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.get_output_embeddings()


def token_logps(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, answer_mask: torch.Tensor
) -> torch.Tensor:
    """[B, T] log p(token_t | tokens_<t) at answer positions, 0 elsewhere (fp32).

    `answer_mask[b, t]` is 1 where token t is an answer token (it is predicted by the
    hidden state at t-1).
    """
    hidden = _hidden(model, input_ids, attention_mask)  # [B, T, H]
    head = _lm_head(model)
    target_mask = answer_mask[:, 1:].bool()
    pos = target_mask.nonzero(as_tuple=False)  # rows (b, t-1) predicting token t
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    if pos.numel() == 0:
        return out + hidden.sum() * 0.0
    h = hidden[:, :-1][pos[:, 0], pos[:, 1]]  # [N, H]
    targets = input_ids[:, 1:][pos[:, 0], pos[:, 1]]
    pieces = []
    for i in range(0, h.shape[0], CHUNK):
        logits = head(h[i : i + CHUNK]).float()
        pieces.append(
            torch.gather(logits.log_softmax(-1), 1, targets[i : i + CHUNK, None]).squeeze(1)
        )
    vals = torch.cat(pieces)
    return out.index_put((pos[:, 0], pos[:, 1] + 1), vals)


def sequence_logps(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, answer_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of answer-token log-probs [B], number of answer tokens [B])."""
    lp = token_logps(model, input_ids, attention_mask, answer_mask)
    return lp.sum(-1), answer_mask.sum(-1).to(lp.dtype)
