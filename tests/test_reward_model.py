"""The reward model on the tiny model: it learns a preference, shows its length calibration,
saves and loads onto the same base (no second copy), resumes after a kill, and registers."""

from __future__ import annotations

import random

import pytest
import torch

from prefdesk.plugins.reward_model import (ADAPTER, RewardModelJudge, RewardModelOptimizer, fit_reward_model, reading_ids,
                                  register_reward_model)
from prefdesk.judges import JudgeError
from prefdesk.pairs import Pair

TOPICS = ["tea", "rain", "maps", "bread", "clocks", "birds", "rivers", "chess", "glass", "paper", "bikes", "salt",
          "wool", "bees", "kites", "stone", "moss", "ink", "snow", "ropes", "lamps", "boats", "wheat", "clay"]
ASKS = ["Tell me one thing about {t}.", "What should I know about {t}?", "Say something about {t}."]


def _prompts(n: int) -> list[tuple[str, list]]:
    out = [(t, [{"role": "user", "content": a.format(t=t)}]) for a in ASKS for t in TOPICS]
    return out[:n]


def calm_vs_shouting(n: int = 64, seed: int = 0) -> list[Pair]:
    """Learnable, and length says nothing: calm wins, and each side is short or long at random."""
    rng = random.Random(seed)
    pairs = []
    for t, prompt in _prompts(n):
        calm = rng.choice([f"{t.capitalize()} is nice.",
                           f"Sure. {t.capitalize()} is interesting, and here is a calm fact: people have studied "
                           f"{t} for a very long time, with care and patience."])
        shout = rng.choice([f"NO!!! {t.upper()}!!!",
                            f"NO!!! {t.upper()} {t.upper()} STOP ASKING ME ABOUT {t.upper()} RIGHT NOW, GO AWAY!!!"])
        pairs.append(Pair(prompt=prompt, chosen=calm, rejected=shout))
    return pairs


FILLER = ["It is worth noting that this matters.", "In addition, there is more to say.",
          "Furthermore, many people agree.", "To elaborate, consider the details.", "Moreover, it is often discussed."]


def longer_wins(n: int = 64, seed: int = 0) -> list[Pair]:
    """The classic biased set: both answers say the same kind of thing; the longer one always wins."""
    rng = random.Random(seed)
    pairs = []
    for t, prompt in _prompts(n):
        k_short = rng.randint(0, 1)
        k_long = rng.randint(k_short + 2, 5)
        base = f"{t.capitalize()} is a topic."
        short = " ".join([base] + rng.sample(FILLER, k_short))
        long = " ".join([base] + rng.sample(FILLER, k_long))
        pairs.append(Pair(prompt=prompt, chosen=long, rejected=short))
    return pairs


RM_PARAMS = dict(learning_rate=2e-3, epochs=6, batch_size=8, heldout_share=0.25)


def train_rm(run_ctx, policy, pairs, **params):
    ctx = run_ctx(policy, pairs=pairs, max_length=128)
    return fit_reward_model(ctx, RewardModelOptimizer.Params(**{**RM_PARAMS, **params}))


def test_the_reward_model_learns_a_preference_on_the_same_base(tiny_policy, run_ctx):
    policy = tiny_policy()
    n_weights = sum(p.numel() for n, p in policy.model.named_parameters() if "lora_" not in n)
    probe = torch.tensor([[1, 5, 9, 14, 3]])
    with torch.no_grad():
        before = policy.model(input_ids=probe).logits
    judge, result = train_rm(run_ctx, policy, calm_vs_shouting())
    f = result.metrics
    assert f["rm/pair_accuracy"] >= 0.85, f  # 0.5 is chance
    assert f["rm/margin"] > 0.5
    assert abs(f["rm/length_correlation"]) < 0.5, f  # length says nothing in this set, and the RM knows it
    assert result.gated == {"rm/pair_accuracy": f["rm/pair_accuracy"], "rm/length_correlation": f["rm/length_correlation"]}
    assert result.extra["heldout_pairs"] == 16 and result.extra["train_pairs"] == 48
    # one base, two adapters; the policy's own adapter untouched and the RM frozen
    assert sum(p.numel() for n, p in policy.model.named_parameters() if "lora_" not in n) == n_weights
    assert sorted(policy.adapters) == ["default", ADAPTER]
    assert not any(p.requires_grad for n, p in policy.model.named_parameters() if f".{ADAPTER}." in n)
    with torch.no_grad():
        torch.testing.assert_close(policy.model(input_ids=probe).logits, before)
    # the judge: higher for the calm answer, Bradley–Terry comparison
    p = calm_vs_shouting(4, seed=9)
    assert all(a > b for a, b in zip(judge.score([x.prompt for x in p], [x.chosen for x in p]),
                                     judge.score([x.prompt for x in p], [x.rejected for x in p])))
    assert all(0.5 < v < 1 for v in judge.compare([x.prompt for x in p], [x.chosen for x in p], [x.rejected for x in p]))


def test_score_ids_reads_sampler_output_with_or_without_its_end_token(tiny_policy, run_ctx):
    policy = tiny_policy()
    judge, _ = train_rm(run_ctx, policy, calm_vs_shouting(16), epochs=1)
    s = run_ctx(policy, max_new_tokens=6).sampler.sample([x.prompt for x in calm_vs_shouting(3)], n=2, temperature=1.0)
    eos = judge.eos_id
    plain = judge.score_ids(s.prompt_ids, s.answer_ids)
    scored = judge.score_ids(s.prompt_ids, [s.scored_ids(r, eos) for r in range(len(s))])
    assert plain.shape == (6,) and plain.dtype == torch.float32 and not plain.requires_grad
    torch.testing.assert_close(plain, scored)
    # the same as scoring the decoded text through the chat template, one by one
    one = judge.score_ids(s.prompt_ids[:1], s.answer_ids[:1])
    torch.testing.assert_close(one, plain[:1], rtol=1e-4, atol=1e-4)
    assert reading_ids([7, 8], [5, eos, 198], eos, 99) == [7, 8, 5, eos]
    assert reading_ids([7, 8], [5, 6], eos, 3) == [5, 6, eos]  # too long: the prompt's start goes


def test_the_shared_prompt_forward_gives_the_plain_rewards(tiny_policy, run_ctx):
    """Training runs each prompt once for both answers; the judge scores whole rows: the same numbers."""
    from prefdesk.plugins.reward_model import encode_rm_pairs, pair_rewards

    policy = tiny_policy()
    judge, _ = train_rm(run_ctx, policy, calm_vs_shouting(16), epochs=1)
    pairs = calm_vs_shouting(72)[::9]  # prompts of three lengths
    items = encode_rm_pairs(policy.tokenizer, pairs, 128)
    assert len({len(e.prompt) for e in items}) > 1
    with torch.no_grad():
        shared = pair_rewards(policy, judge.head, items, judge.pad_id)
    plain = judge._score_rows([e.chosen for e in items] + [e.rejected for e in items])
    torch.testing.assert_close(shared, plain, rtol=1e-4, atol=1e-4)
    short = encode_rm_pairs(policy.tokenizer, pairs[:1], 24)[0]  # too long: both answers keep the same prompt end
    assert len(short.chosen) <= 24 and len(short.rejected) <= 24 and short.chosen_answer[-1] == judge.eos_id


def test_saved_reward_model_loads_onto_a_fresh_policy_and_refuses_another_base(tiny_policy, run_ctx, tmp_path):
    policy = tiny_policy()
    judge, result = train_rm(run_ctx, policy, calm_vs_shouting(16), epochs=1)
    pairs = calm_vs_shouting(4, seed=3)
    want = judge.score([p.prompt for p in pairs], [p.chosen for p in pairs])
    fresh = tiny_policy()
    loaded = RewardModelJudge.build(policy=fresh, source=result.artifacts["reward_model"])
    assert loaded.score([p.prompt for p in pairs], [p.chosen for p in pairs]) == pytest.approx(want, abs=1e-5)
    assert not any(p.requires_grad for n, p in fresh.model.named_parameters() if f".{ADAPTER}." in n)
    other = tiny_policy()  # another base: the same shapes, other weights
    with torch.no_grad():
        other.model.get_base_model().model.embed_tokens.weight.mul_(1.01)
    with pytest.raises(JudgeError, match="another base model"):
        RewardModelJudge.build(policy=other, source=result.artifacts["reward_model"])
    with pytest.raises(JudgeError, match="does not exist"):
        RewardModelJudge.build(policy=fresh, source=tmp_path / "nowhere")


def test_a_killed_reward_model_resumes_and_a_finished_one_is_reused(tiny_policy, run_ctx, tmp_path):
    pairs = calm_vs_shouting(24)
    params = RewardModelOptimizer.Params(**{**RM_PARAMS, "epochs": 2, "batch_size": 4})  # 5 steps

    whole_judge, whole = fit_reward_model(run_ctx(tiny_policy(), pairs=pairs, out=tmp_path / "a"), params)

    class Kill(Exception):
        pass

    def kill_at_3(info):
        if info.step == 3:
            raise Kill

    out = tmp_path / "b"
    with pytest.raises(Kill):
        fit_reward_model(run_ctx(tiny_policy(), pairs=pairs, out=out, callbacks=[kill_at_3], checkpoint_every=2), params)
    assert (out / "reward_model.checkpoints" / "step-2").exists()
    resumed_judge, resumed = fit_reward_model(run_ctx(tiny_policy(), pairs=pairs, out=out, checkpoint_every=2), params)
    torch.testing.assert_close(resumed_judge.head.weight, whole_judge.head.weight)
    assert resumed.metrics == pytest.approx(whole.metrics, rel=1e-4, abs=1e-5)
    assert not (out / "reward_model.checkpoints").exists()
    seen = []
    again_judge, again = fit_reward_model(run_ctx(tiny_policy(), pairs=pairs, out=out, callbacks=[seen.append]), params)
    assert seen == [] and again.metrics == resumed.metrics  # loaded, not retrained
    torch.testing.assert_close(again_judge.head.weight, resumed_judge.head.weight)


def test_length_biased_pairs_make_a_length_judge_the_desk_and_the_registry_catch(tiny_policy, run_ctx, tmp_path):
    from prefdesk.config import DataSettings
    from prefdesk.pairs import write_pairs_jsonl
    from prefdesk.tracking import start_run
    from prefdesk.validations.desk import run_data_desk

    biased = longer_wins()
    judge, result = train_rm(run_ctx, tiny_policy(), biased)
    assert result.metrics["rm/pair_accuracy"] >= 0.8  # it "learnt the preference"...
    assert result.metrics["rm/length_correlation"] >= 0.7, result.metrics  # ...which is answer length
    write_pairs_jsonl(biased, str(tmp_path / "biased.jsonl"))
    report = run_data_desk([str(tmp_path / "biased.jsonl")], DataSettings(), tmp_path / "desk", data_docs=False)
    assert not report.check("length_bias").passed and any(f.startswith("length_bias") for f in report.failed)

    run_id = start_run("rm-tests")
    reg = register_reward_model(run_id, result.artifacts["reward_model"], model_name="rm-test")
    assert reg.aliases == ["challenger"] and not reg.promoted  # a length judge never becomes the default judge

    healthy, h = train_rm(run_ctx, tiny_policy(), calm_vs_shouting())
    reg2 = register_reward_model(run_id, h.artifacts["reward_model"], model_name="rm-test")
    assert reg2.promoted and reg2.version == "2"
    fresh = tiny_policy()
    loaded = RewardModelJudge.build(policy=fresh, source="models:/rm-test@champion")
    p = calm_vs_shouting(2, seed=5)
    assert loaded.score([x.prompt for x in p], [x.chosen for x in p]) == pytest.approx(
        healthy.score([x.prompt for x in p], [x.chosen for x in p]), abs=1e-5)
    with pytest.raises(JudgeError, match="no registered reward model"):
        RewardModelJudge.build(policy=fresh, source="models:/nobody@champion")


def test_the_plugin_and_the_judge_are_registered():
    from prefdesk import judges, plugin

    rows = {r["name"]: r for r in plugin.describe()}
    assert rows["reward_model"]["needs"] == ["pairs"]
    assert {"heldout_share", "center_rewards", "learning_rate"} <= set(rows["reward_model"]["params"])
    assert judges.available()["reward_model"].load() is RewardModelJudge and RewardModelJudge.learned
    with pytest.raises(JudgeError, match="policy"):
        judges.create("reward_model")
