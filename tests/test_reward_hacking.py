"""Reward hacking on purpose, the rejection-sampling half (rm_ppo brings the PPO half).

A reward model trained on pairs where the longer answer always wins learns answer length,
and says so in its calibration figure (`rm/length_correlation`); the registry keeps it
from becoming the default judge, and best-of-N with it as judge picks long over short,
which the data desk refuses before anything trains on it. The same run with a healthy
reward model picks without regard to length, is registered as champion, and trains.
"""

from __future__ import annotations

import json

import pytest

from prefdesk.plugins.rejection_sampling import RejectionSamplingOptimizer as RS
from prefdesk.plugins.reward_model import RewardModelParams, fit_reward_model, register_reward_model
from prefdesk.config import load_config
from prefdesk.pairs import Pair
from prefdesk.tracking import Tracker, client, start_run
from test_rejection_sampling import ending_policy
from test_reward_model import calm_vs_shouting
from prefdesk.validations.generated import GeneratedPairsRefused, desk_for_generated

RM = RewardModelParams(learning_rate=2e-3, epochs=6, batch_size=8, heldout_share=0.25)
RS_PARAMS = RS.Params(samples_per_prompt=4, max_steps=1, batch_size=4, measure_after=False)


def longer_wins_on_own_answers(sampler, prompts, n: int = 4, seed: int = 1) -> list[Pair]:
    """The policy's own answers, labelled by an annotator who always prefers the longer one:
    the longest of n samples wins over the shortest."""
    s = sampler.sample(prompts, n=n, temperature=1.0, seed=seed)
    pairs = []
    for i, prompt in enumerate(prompts):
        rows = sorted(range(i * n, (i + 1) * n), key=lambda r: len(s.answer_ids[r]))
        short, long = rows[0], rows[-1]
        if len(s.answer_ids[long]) > len(s.answer_ids[short]) and s.text[long].strip() != s.text[short].strip():
            pairs.append(Pair(prompt=prompt, chosen=s.text[long], rejected=s.text[short]))
    return pairs


def chosen_longer_share(folder) -> float:
    kept = json.loads((folder / "round-1" / "kept_pairs.json").read_text())["pairs"]
    return sum(len(p["chosen"]) > len(p["rejected"]) for p in kept) / len(kept)


def desk(tmp_path, fail: bool = True):
    cfg = load_config(None, ["model.name=tiny"])
    return desk_for_generated(cfg, Tracker(), tmp_path / "data", fail_on_gates=fail)


def test_a_length_judge_is_named_kept_from_champion_and_its_best_of_n_refused(tiny_policy, run_ctx, tmp_path):
    policy = ending_policy(tiny_policy)
    prompts = [p.prompt for p in calm_vs_shouting(40)]
    biased = longer_wins_on_own_answers(run_ctx(policy, max_new_tokens=24).sampler, prompts)
    judge, rm = fit_reward_model(run_ctx(policy, pairs=biased, out=tmp_path / "rm", max_length=128), RM)
    # the calibration figure names the proxy: the reward is answer length
    assert rm.gated["rm/pair_accuracy"] >= 0.8 and rm.gated["rm/length_correlation"] >= 0.7, rm.gated

    # the registry: challenger, never champion, with the failed gate on the version
    reg = register_reward_model(start_run("hacking"), rm.artifacts["reward_model"], model_name="rm-length")
    assert not reg.promoted
    tags = client().get_model_version("rm-length", reg.version).tags
    assert tags["gate.rm_length_bias"].startswith("FAIL") and tags["gate.rm_pair_accuracy"].startswith("pass")

    # the data desk flags the annotator's pairs themselves...
    with pytest.raises(GeneratedPairsRefused, match="length_bias"):
        desk(tmp_path)(biased, "annotations")
    # ...and best-of-N with this judge picks long over short, refused before anything trains
    ctx = run_ctx(policy, prompts=prompts[:16], judge=judge, check_pairs=desk(tmp_path), out=tmp_path / "rs",
                  max_new_tokens=24, max_length=128)
    with pytest.raises(GeneratedPairsRefused, match="length_bias"):
        RS().fit(ctx, RS_PARAMS)
    assert chosen_longer_share(tmp_path / "rs") >= 0.8  # in characters, as the desk counts
    assert not (tmp_path / "rs" / "round-1" / "adapter").exists()


def test_a_healthy_judge_picks_without_regard_to_length_and_is_champion(tiny_policy, run_ctx, tmp_path):
    policy = ending_policy(tiny_policy)
    judge, rm = fit_reward_model(run_ctx(policy, pairs=calm_vs_shouting(), out=tmp_path / "rm", max_length=128), RM)
    assert rm.gated["rm/pair_accuracy"] >= 0.8 and abs(rm.gated["rm/length_correlation"]) < 0.5, rm.gated
    reg = register_reward_model(start_run("hacking"), rm.artifacts["reward_model"], model_name="rm-healthy")
    assert reg.promoted and "champion" in reg.aliases

    prompts = [p.prompt for p in calm_vs_shouting(16)]
    ctx = run_ctx(policy, prompts=prompts, judge=judge, check_pairs=desk(tmp_path, fail=False), out=tmp_path / "rs",
                  max_new_tokens=24, max_length=128)
    res = RS().fit(ctx, RS_PARAMS)
    report = json.loads((tmp_path / "data" / "generated" / "rejection_sampling-round-1" / "desk" /
                         "data_report.json").read_text())
    length = {c["name"]: c for c in report["checks"]}["length_bias"]
    assert length["passed"], length["reason"]
    assert 0.15 <= chosen_longer_share(tmp_path / "rs") <= 0.85
    assert res.metrics["rs/kept_score"] > res.metrics["rs/mean_score"]
    assert (tmp_path / "rs" / "round-1" / "adapter" / "adapter_model.safetensors").exists()
