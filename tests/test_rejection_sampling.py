"""Rejection sampling on the tiny model: the kept answers score above the mean sample, the
kept pairs pass through the data desk before tuning (SFT or DPO), and rounds resume after a kill."""

from __future__ import annotations

import json

import pytest
import torch

from prefdesk.plugins.rejection_sampling import RejectionSamplingOptimizer as RS
from prefdesk.plugins.rejection_sampling import distinct_ngrams
from prefdesk.plugins.reward_model import RewardModelJudge
from test_reward_model import calm_vs_shouting

RM = dict(learning_rate=2e-3, epochs=2, batch_size=8, heldout_share=0.25)


def ending_policy(tiny_policy, eos_logit: float = 8.6, seed: int = 0):
    """A tiny policy whose answers end: a random tiny model almost never samples its end token
    (1 in 49k), so its output-layer bias on that token is raised until about one step in ten
    ends the answer (e^8.6 ≈ 0.1 · 49k). Answers then vary in length, as real ones do."""
    from prefdesk.engine.logprobs import unwrap

    policy = tiny_policy(seed=seed)
    base = unwrap(policy.model)
    head = torch.nn.Linear(base.lm_head.in_features, base.lm_head.out_features, bias=True)
    head.weight = base.lm_head.weight  # still tied to the embedding
    with torch.no_grad():
        head.bias.zero_()
        head.bias[policy.tokenizer.eos_token_id] = eos_logit
    base.lm_head = head.requires_grad_(False)
    return policy


def recording_desk(seen: list):
    def desk(pairs, label):
        seen.append((label, pairs))
        return pairs

    return desk


def test_kept_answers_score_above_the_mean_sample_and_pass_the_desk_before_tuning(tiny_policy, run_ctx):
    policy = ending_policy(tiny_policy)
    seen: list = []
    ctx = run_ctx(policy, pairs=calm_vs_shouting(), check_pairs=recording_desk(seen), max_length=128, max_new_tokens=16)
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters() if ".default." in n}
    params = RS.Params(prompts_per_round=8, max_steps=2, batch_size=4, reward_model=RM)
    res = RS().fit(ctx, params)
    m = res.metrics
    assert m["rs/samples_per_prompt"] == 4
    assert m["rs/kept_score"] > m["rs/mean_score"]  # best-of-4 beats the average draw
    assert 0 < m["rs/kept_fraction"] <= 1 and 0 <= m["rs/distinct_ngrams_after"] <= 1
    assert {"rs/distinct_ngrams_before", "rs/mean_score_after", "rs/reward_gain", "train/loss", "train/kl"} <= set(m)
    # the judge was a reward model trained first on the run's pairs (the default), and its figures are gated
    assert set(res.artifacts) == {"adapter", "reward_model"} and m["rm/pair_accuracy"] >= 0.8
    assert set(res.gated) == {"rm/pair_accuracy", "rm/length_correlation"}
    # the desk saw best-over-worst pairs on the sampled prompts before any tuning, and the policy moved
    (label, pairs), = seen
    assert label == "rejection_sampling-round-1" and len(pairs) == round(8 * m["rs/kept_fraction"])
    kept = json.loads((ctx.out_dir / "round-1" / "kept_pairs.json").read_text())["pairs"]
    assert all(p["meta"]["best_score"] > p["meta"]["worst_score"] for p in kept)
    assert any(not torch.equal(p, before[n]) for n, p in policy.model.named_parameters() if ".default." in n)
    assert (ctx.out_dir / "round-1" / "adapter" / "adapter_model.safetensors").exists()


def test_rounds_resume_after_a_kill_and_tune_with_dpo(tiny_policy, run_ctx, tmp_path):
    """Two DPO rounds with a reward model from a folder; killed in round two's tuning, the rerun
    loads round one's adapter and round two's kept pairs, and ends where an unbroken run ends."""
    judge_ctx = run_ctx(ending_policy(tiny_policy), pairs=calm_vs_shouting(16), out=tmp_path / "rm", max_length=128)
    from prefdesk.plugins.reward_model import fit_reward_model

    folder = fit_reward_model(judge_ctx, RS.Params().reward_model.model_copy(update=RM))[1].artifacts["reward_model"]
    params = RS.Params(rounds=2, prompts_per_round=4, samples_per_prompt=3, tune="dpo", max_steps=2, batch_size=2,
                       measure_after=False)

    def run(out, callbacks=()):
        policy = ending_policy(tiny_policy)
        judge = RewardModelJudge.load(policy, folder)
        ctx = run_ctx(policy, prompts=[p.prompt for p in calm_vs_shouting(8)], judge=judge, out=out,
                      callbacks=callbacks, checkpoint_every=1, max_length=128, max_new_tokens=8)
        return RS().fit(ctx, params), policy

    whole, whole_policy = run(tmp_path / "whole")
    assert whole.steps == 4 and "reward_model" not in whole.artifacts  # the run's own judge was used

    class Kill(Exception):
        pass

    calls = []

    def kill_in_round_two(info):
        calls.append(info.step)
        if len(calls) == 3:  # round one's two steps, then round two's first
            raise Kill

    with pytest.raises(Kill):
        run(tmp_path / "broken", [kill_in_round_two])
    assert (tmp_path / "broken" / "round-1" / "done.json").exists()
    assert (tmp_path / "broken" / "round-2" / "kept_pairs.json").exists()
    assert (tmp_path / "broken" / "round-2" / "checkpoints" / "step-1").exists()
    later: list = []
    resumed, resumed_policy = run(tmp_path / "broken", [later.append])
    assert [i.step for i in later] == [2]  # only round two's last step ran again
    assert resumed.steps == 4
    assert resumed.metrics["rs/kept_score"] == pytest.approx(whole.metrics["rs/kept_score"])
    for (n, a), (_, b) in zip(whole_policy.model.named_parameters(), resumed_policy.model.named_parameters()):
        if ".default." in n:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_distinct_ngrams_and_the_plugin_listing():
    from prefdesk import plugin

    assert distinct_ngrams(["a b c", "a b d"]) == pytest.approx(3 / 4)
    assert distinct_ngrams(["same words here"] * 4) == pytest.approx(2 / 8)
    assert distinct_ngrams(["one"]) == 0.0
    row = {r["name"]: r for r in plugin.describe()}["rejection_sampling"]
    assert row["needs"] == ["judge", "prompts", "sampler"]
    assert {"samples_per_prompt", "margin", "rounds", "tune", "judge"} <= set(row["params"])
    with pytest.raises(ValueError):
        RS.Params(samples_per_prompt=1)
