"""The training engine on the tiny model: tokens, batches, log-probs, reference cache, loop."""

from __future__ import annotations

import math

import pytest
import torch

from prefdesk.engine.batching import (
    bucketed_batches,
    collate,
    encode_pair,
    encode_pairs,
    pad_sequences,
    padding_share,
    shared_prefix,
)
from prefdesk.engine.logprobs import pair_logps, sequence_logps
from prefdesk.engine.loop import TrainingDiverged, train
from prefdesk.engine.losses import LossOutput
from prefdesk.engine.refcache import RefCache, base_fingerprint, reference_logps
from prefdesk.engine.tokenize import encode, encode_prompt
from prefdesk.plugin import TrainParams
from prefdesk.tracking import Tracker

DESIGN_TRAIN = {
    "train/loss", "train/reward_chosen", "train/reward_rejected", "train/reward_margin",
    "train/reward_accuracy", "train/kl", "train/tokens_per_s",
}
THREE_TURNS = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Name a colour."},
]


class Recorder(Tracker):
    def __init__(self):
        super().__init__(None)
        self.steps: list[tuple[int, dict]] = []

    def log_metrics(self, metrics, step=None):
        super().log_metrics(metrics, step)
        self.steps.append((step, dict(metrics)))


@pytest.fixture(scope="module")
def tok():
    from prefdesk.models import load_tokenizer

    return load_tokenizer("tiny")


# -- tokenization ------------------------------------------------------------------------


def test_multi_turn_boundary_is_exact(tok):
    answer = "Blue, like the sky."
    e = encode(tok, THREE_TURNS, answer, 512)
    assert tok.decode(e.input_ids[e.answer_start :]) == answer + "<|im_end|>\n"
    # the earlier assistant turn is prompt, not answer; the prompt is what generation sees
    assert "Hello! How can I help?" in tok.decode(e.input_ids[: e.answer_start])
    assert e.input_ids[: e.answer_start] == encode_prompt(tok, THREE_TURNS, 512)
    assert not e.truncated


def test_truncation_keeps_the_prompt_end_and_the_answer_start(tok):
    e = encode(tok, THREE_TURNS, "word " * 400, 64)
    assert len(e.input_ids) == 64 and e.truncated
    assert e.answer_len >= 32
    assert tok.decode(e.input_ids[e.answer_start :]).startswith("word word")


# -- batches -----------------------------------------------------------------------------


def test_separate_layout_concatenates_chosen_then_rejected_right_padded(tok, toy_pairs):
    items = encode_pairs(tok, toy_pairs[:3], 128)
    b = collate(items, tok.pad_token_id, multiple=16, shared=False)
    assert b.input_ids.shape[0] == 6 and b.input_ids.shape[1] % 16 == 0 and not b.shared
    for r, e in enumerate([it.chosen for it in items] + [it.rejected for it in items]):
        n = len(e.input_ids)
        assert b.input_ids[r, :n].tolist() == e.input_ids
        assert b.attention_mask[r].tolist() == [1] * n + [0] * (b.input_ids.shape[1] - n)
        scored = b.targets[b.rows == r].tolist()
        assert scored == list(range(e.answer_start, n)) and b.preds[b.rows == r].tolist() == [t - 1 for t in scored]
    assert b.n_pairs == 3 and b.n_tokens == sum(it.tokens for it in items)


def test_shared_layout_packs_prompt_once_and_masks_the_other_answer(tok, toy_pairs):
    items = encode_pairs(tok, toy_pairs[:3], 128)
    b = collate(items, tok.pad_token_id, multiple=16)
    assert b.shared and b.input_ids.shape[0] == 3 and b.input_ids.shape[1] % 16 == 0
    assert b.n_tokens == sum(it.tokens for it in items)
    for r, it in enumerate(items):
        c, j = it.chosen, it.rejected
        s = shared_prefix([c, j])
        assert s == c.answer_start == j.answer_start  # same prompt, all of it shared
        lc, lr = len(c.input_ids) - s, len(j.input_ids) - s
        row = b.input_ids[r].tolist()
        assert row[: s + lc] == c.input_ids and row[s + lc : s + lc + lr] == j.input_ids[s:]
        pos = b.position_ids[r].tolist()
        assert pos[: s + lc] == list(range(s + lc)) and pos[s + lc : s + lc + lr] == list(range(s, s + lr))
        m = b.attention_mask[r, 0]
        first_rej = s + lc
        assert m[first_rej, :s].all() and not m[first_rej, s:first_rej].any() and m[first_rej, first_rej]
        assert not m[s + lc - 1, first_rej:].any()  # causal: chosen never sees what follows
        # the first rejected answer token is predicted by the prompt's last token, like the first chosen one
        k = (b.rows == r) & (b.targets == first_rej)
        assert b.preds[k].tolist() == [s - 1] and b.slots[k].tolist() == [r * 2 + 1]
        assert int(((b.rows == r) & (b.slots == r * 2)).sum()) == lc and int((b.slots == r * 2 + 1).sum()) == lr
    assert b.computed_tokens == sum(it.width(True) for it in items) < b.n_tokens


def test_bucketing_is_seeded_complete_and_pads_less():
    import random

    rng = random.Random(1)
    lengths = [rng.randint(10, 500) for _ in range(400)]
    a = bucketed_batches(lengths, 4, seed=3, epoch=0)
    assert a == bucketed_batches(lengths, 4, seed=3, epoch=0)
    assert a != bucketed_batches(lengths, 4, seed=3, epoch=1)
    assert sorted(i for b in a for i in b) == list(range(400))
    order = list(range(400))
    rng.shuffle(order)
    plain = [order[i : i + 4] for i in range(0, 400, 4)]
    assert padding_share(a, lengths) < 0.05 < padding_share(plain, lengths)


# -- log-probs ---------------------------------------------------------------------------


def _naive(model, ids, answer_start):
    logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    lp = logits.log_softmax(-1).gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1)
    return lp[answer_start - 1 :].sum().item(), len(ids) - answer_start


def test_answer_only_logps_match_full_logits_right_and_left_padding(tiny_policy, tok, toy_pairs):
    pol = tiny_policy()
    items = encode_pairs(tok, toy_pairs[:3], 128)
    seqs = [it.chosen for it in items] + [it.rejected for it in items]
    b = pad_sequences(seqs, tok.pad_token_id)
    with torch.no_grad():
        s, n = sequence_logps(pol.model, b["input_ids"], b["attention_mask"], b["answer_mask"])
        # left padding: the mask and position ids must be used
        width = b["input_ids"].shape[1]
        left = {k: torch.zeros_like(v) for k, v in b.items()}
        for r, e in enumerate(seqs):
            L = len(e.input_ids)
            for k in left:
                left[k][r, width - L :] = b[k][r, :L]
        left["input_ids"][left["attention_mask"] == 0] = tok.pad_token_id
        s_left, _ = sequence_logps(pol.model, left["input_ids"], left["attention_mask"], left["answer_mask"])
        for r, e in enumerate(seqs):
            want, count = _naive(pol.model, e.input_ids, e.answer_start)
            assert s[r].item() == pytest.approx(want, rel=1e-5, abs=1e-4)
            assert s_left[r].item() == pytest.approx(want, rel=1e-5, abs=1e-4)
            assert n[r].item() == count


def test_lora_weights_and_optimizer_state_stay_fp32_on_a_bf16_base(tiny_policy, toy_pairs, tmp_path, run_ctx):
    pol = tiny_policy(dtype="bf16")
    assert pol.dtype == torch.bfloat16
    assert {p.dtype for p in pol.trainable_parameters()} == {torch.float32}
    assert pol.model.get_base_model().model.layers[0].mlp.up_proj.base_layer.weight.dtype == torch.bfloat16
    from prefdesk.plugins.sft import sft_loss

    res = train(run_ctx(pol, toy_pairs[:2], max_length=64), TrainParams(max_steps=1, batch_size=2), sft_loss)
    assert {p.dtype for p in pol.trainable_parameters()} == {torch.float32}
    assert math.isfinite(res.metrics["train/loss"])


# -- reference cache ---------------------------------------------------------------------


def test_reference_cache_hits_on_the_second_pass_and_matches_live(tiny_policy, tok, toy_pairs, tmp_path):
    pol = tiny_policy()
    enc = encode_pairs(tok, toy_pairs[:5], 128)
    # make the adapter non-trivial: the reference must ignore it
    with torch.no_grad():
        for p in pol.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    cache = RefCache(base_fingerprint(pol), tmp_path)
    first = reference_logps(pol, enc, batch_size=2, cache=cache)
    assert (cache.hits, cache.misses) == (0, 5)
    second = reference_logps(pol, enc, batch_size=2, cache=cache)
    assert (cache.hits, cache.misses) == (5, 0)
    assert torch.equal(first, second)
    live_ref = pair_logps(pol, enc, batch_size=5, reference=True)
    live_policy = pair_logps(pol, enc, batch_size=5, reference=False)
    torch.testing.assert_close(first, live_ref, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(live_policy[:, :2], live_ref[:, :2])
    # another base (other weights), another max_length: other keys
    other = tiny_policy()
    with torch.no_grad():
        other.model.get_base_model().model.embed_tokens.weight.mul_(1.01)
    assert base_fingerprint(other) != base_fingerprint(pol)
    short = encode_pair(tok, toy_pairs[0], 24)
    assert cache.get(short) is None and cache.get(enc[0]) is not None


# -- the loop ----------------------------------------------------------------------------


def test_loop_logs_design_metrics_and_saves_the_adapter(tiny_policy, toy_pairs, tmp_path, run_ctx):
    from prefdesk.plugins.dpo import DPOOptimizer

    rec = Recorder()
    params = DPOOptimizer.Params(max_steps=3, batch_size=4)
    cache = tmp_path / "refs"  # a cold cache of its own, whatever ran before in this session
    res = DPOOptimizer().fit(run_ctx(tiny_policy(), toy_pairs, tracker=rec, cache_root=cache), params)
    assert [s for s, _ in rec.steps] == [1, 2, 3]
    assert all(set(m) == DESIGN_TRAIN for _, m in rec.steps)
    assert set(res.metrics) == DESIGN_TRAIN and res.steps == 3
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert res.adapter_path == str(tmp_path / "adapter")
    assert res.extra["ref_cache_misses"] == len(toy_pairs)
    # the next night: same base, same pairs -> every reference value from the cache
    res2 = DPOOptimizer().fit(run_ctx(tiny_policy(), toy_pairs, tmp_path / "b", cache_root=cache), params)
    assert (res2.extra["ref_cache_hits"], res2.extra["ref_cache_misses"]) == (len(toy_pairs), 0)


def test_nan_loss_stops_the_run_and_saves_nothing(tiny_policy, toy_pairs, tmp_path, run_ctx):
    calls = {"n": 0}

    def loss_fn(lp):
        calls["n"] += 1
        bad = float("nan") if calls["n"] == 2 else 1.0
        return LossOutput(loss=-lp.chosen.mean() * bad)

    with pytest.raises(TrainingDiverged, match="step 2") as err:
        train(run_ctx(tiny_policy(), toy_pairs, checkpoint_every=1), TrainParams(max_steps=4, batch_size=4), loss_fn)
    assert err.value.step == 2
    assert not (tmp_path / "adapter").exists()
    assert not (tmp_path / "checkpoints" / "step-2").exists()


def test_sft_lowers_its_loss(tiny_policy, toy_pairs, run_ctx):
    from prefdesk.plugins.sft import SFTOptimizer

    params = SFTOptimizer.Params(epochs=4, batch_size=8, learning_rate=1e-2)
    res = SFTOptimizer().fit(run_ctx(tiny_policy(), toy_pairs), params)
    curve = res.extra["loss_curve"]
    assert res.steps == 8 and len(curve) == 8
    assert sum(curve[-2:]) < sum(curve[:2]) - 0.5
    assert {"train/loss", "train/kl", "train/tokens_per_s"} <= set(res.metrics)
