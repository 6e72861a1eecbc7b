"""The prompt computed once per pair (or per question) scores every answer as its own row would.

Tolerance: fp32 on the tiny model, relative 1e-5 and absolute 1e-4 on summed log-probs
(sums of up to ~30 tokens of about -10 each) and 1e-5/1e-6 on gradients. The packed row
runs other matmul shapes than the separate rows, so equality is up to float rounding; in
practice the CPU kernels give the same bits here.
"""

from __future__ import annotations

import pytest
import torch

from prefdesk.plugins.dpo import dpo_loss
from prefdesk.plugins.sft import sft_loss
from prefdesk.engine.batching import collate, encode_pairs, pack_groups
from prefdesk.engine.logprobs import answers_logps, batch_logps, group_logps, pair_logps
from prefdesk.engine.losses import PairLogps
from prefdesk.engine.tokenize import encode
from prefdesk.pairs import Pair

RTOL, ATOL = 1e-5, 1e-4
QUESTIONS = [
    ([{"role": "user", "content": "What is the capital of France?"}], ["Paris.", "Lyon.", "Marseille, a port.", "Nice"]),
    ([{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"},
      {"role": "user", "content": "Name a colour."}], ["Blue.", "I'd rather not say anything about colours."]),
    ([{"role": "user", "content": "2 + 2?"}], ["4"]),
]


def _moved(policy, scale: float = 0.05, seed: int = 0):
    """The policy with a non-trivial adapter (B = 0 at init would hide adapter bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return policy


def _naive(model, ids: list[int], answer_start: int) -> float:
    """Full-vocabulary logits of the sequence alone: the definition."""
    logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    lp = logits.log_softmax(-1).gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1)
    return lp[max(answer_start, 1) - 1 :].sum().item()


@pytest.mark.parametrize("role", ["default", "reference"])
def test_pairs_shared_equal_separate_and_the_definition(tiny_policy, toy_pairs, role):
    pol = _moved(tiny_policy())
    enc = encode_pairs(pol.tokenizer, toy_pairs[:6], 128)
    shared = pair_logps(pol, enc, batch_size=4, reference=role == "reference", shared=True, multiple=16)
    separate = pair_logps(pol, enc, batch_size=4, reference=role == "reference", shared=False)
    torch.testing.assert_close(shared, separate, rtol=RTOL, atol=ATOL)
    with torch.no_grad(), pol.use(role):
        for i, e in enumerate(enc):
            assert shared[i, 0].item() == pytest.approx(_naive(pol.model, e.chosen.input_ids, e.chosen.answer_start),
                                                        rel=RTOL, abs=ATOL)
            assert shared[i, 1].item() == pytest.approx(
                _naive(pol.model, e.rejected.input_ids, e.rejected.answer_start), rel=RTOL, abs=ATOL)
    assert shared[:, 2:].tolist() == [[e.chosen.answer_len, e.rejected.answer_len] for e in enc]


def test_truncated_prompts_that_differ_still_score_right(tiny_policy):
    """max_length cuts each prompt from the left by a different amount: little or no shared prefix."""
    pol = _moved(tiny_policy())
    pair = Pair(prompt=[{"role": "user", "content": "many words here " * 20}], chosen="yes " * 30, rejected="no")
    (e,) = encode_pairs(pol.tokenizer, [pair], 48)
    assert e.chosen.input_ids[: e.chosen.answer_start] != e.rejected.input_ids[: e.rejected.answer_start]
    shared, separate = pair_logps(pol, [e], shared=True), pair_logps(pol, [e], shared=False)
    torch.testing.assert_close(shared, separate, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("loss", ["dpo", "sft"])
def test_training_loss_and_gradients_equal_in_both_layouts(tiny_policy, toy_pairs, loss):
    """What a training step computes (DPO and SFT losses, LoRA gradients) does not depend on the layout."""
    pol = _moved(tiny_policy())
    enc = encode_pairs(pol.tokenizer, toy_pairs[:5], 128)
    ref = pair_logps(pol, enc, reference=True)
    pol.model.train()
    results = {}
    for shared in (True, False):
        b = collate(enc, pol.tokenizer.pad_token_id, multiple=16, shared=shared)
        s, n = batch_logps(pol.model, **b.inputs())
        lp = PairLogps(s[:, 0], s[:, 1], n[:, 0], n[:, 1], ref[:, 0], ref[:, 1])
        out = dpo_loss(lp, beta=0.1) if loss == "dpo" else sft_loss(lp)
        out.loss.backward()
        grads = [p.grad.clone() for p in pol.trainable_parameters()]
        pol.model.zero_grad(set_to_none=True)
        results[shared] = (out.loss.detach(), grads)
    torch.testing.assert_close(results[True][0], results[False][0], rtol=RTOL, atol=1e-6)
    assert len(results[True][1]) > 0
    for a, b in zip(results[True][1], results[False][1]):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=1e-6)
    assert any(g.abs().max() > 0 for g in results[True][1])


def test_multiple_choice_options_share_the_question(tiny_policy):
    pol = _moved(tiny_policy())
    for role in ("default", "reference"):
        shared = answers_logps(pol, QUESTIONS, role=role, batch_size=2)
        separate = answers_logps(pol, QUESTIONS, role=role, shared=False)
        assert [len(x) for x in shared] == [len(a) for _, a in QUESTIONS]
        with torch.no_grad(), pol.use(role):
            for (prompt, answers), got, sep in zip(QUESTIONS, shared, separate):
                for a, (s, n), (s2, n2) in zip(answers, got, sep):
                    e = encode(pol.tokenizer, prompt, a, 512)
                    assert n == n2 == e.answer_len
                    assert s == pytest.approx(s2, rel=RTOL, abs=ATOL)
                    assert s == pytest.approx(_naive(pol.model, e.input_ids, e.answer_start), rel=RTOL, abs=ATOL)
    # the policy's figures are not the reference's: the role was honoured
    assert answers_logps(pol, QUESTIONS[:1])[0][0][0] != answers_logps(pol, QUESTIONS[:1], role="reference")[0][0][0]


def test_one_packed_row_per_question(tiny_policy):
    pol = tiny_policy()
    groups = [[encode(pol.tokenizer, p, a, 512) for a in answers] for p, answers in QUESTIONS]
    b = pack_groups(groups, pol.tokenizer.pad_token_id)
    assert b.input_ids.shape[0] == len(QUESTIONS) and b.shape == (3, 4)
    separate = pack_groups(groups, pol.tokenizer.pad_token_id, shared=False)
    assert separate.input_ids.shape[0] == sum(len(a) for _, a in QUESTIONS)
    assert b.computed_tokens < separate.computed_tokens
    sums, counts = group_logps(pol, groups)
    assert counts[2].tolist() == [groups[2][0].answer_len, 0, 0, 0]  # missing answers stay 0
