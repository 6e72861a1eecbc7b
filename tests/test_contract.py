"""The optimizer contract on the tiny model: run context, named adapters, sampler, judges, needs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from prefdesk import plugin
from prefdesk.engine.loop import train
from prefdesk.judges import RubricJudge, ScoreJudge, compare_both_orders
from prefdesk.pairs import Pair
from prefdesk.plugin import TrainParams, TrainResult

PROMPTS = [[{"role": "user", "content": f"Say something about {t}."}] for t in ("tea", "rain", "a very long topic " * 3)]


# -- a plugin written against the contract: prompts, the sampler and a judge ------------------


class PickAndTune:
    """Sample two answers per prompt, keep the judge's pick over the other, one SFT step on it."""

    name = "pick_and_tune"
    needs = frozenset({"prompts", "sampler", "judge"})

    class Params(TrainParams):
        temperature: float = 1.0

    def fit(self, ctx, params) -> TrainResult:
        prompts = ctx.prompt_rows()
        s = ctx.sampler.sample(prompts, n=2, temperature=params.temperature, seed=ctx.settings.seed)
        first, second = s.text[0::2], s.text[1::2]
        verdict = compare_both_orders(ctx.judge, prompts, first, second)
        pairs = [Pair(prompt=p, chosen=a if v >= 0.5 else b, rejected=b if v >= 0.5 else a)
                 for p, a, b, v in zip(prompts, first, second, verdict.p_first) if a.strip() != b.strip()]
        pairs = ctx.checked(pairs, self.name)

        def sft(lp):
            from prefdesk.plugins.sft import sft_loss

            return sft_loss(lp)

        result = train(dataclasses.replace(ctx, pairs=pairs), params, sft, name=self.name)
        result.extra["order_disagreement"] = verdict.disagreement
        return result


def test_a_sampling_plugin_trains_on_the_tiny_model(tiny_policy, run_ctx, toy_pairs):
    import inspect

    assert len(inspect.getsource(PickAndTune).splitlines()) < 60
    seen = []

    def desk(pairs, label):
        seen.append((label, len(pairs)))
        return pairs

    ctx = run_ctx(tiny_policy(), pairs=toy_pairs[:4], judge=RubricJudge(), check_pairs=desk, max_new_tokens=8)
    plugin.check_needs(PickAndTune, ctx.provides())
    res = PickAndTune().fit(ctx, PickAndTune.Params(max_steps=1, batch_size=2))
    assert res.steps == 1 and seen and seen[0][0] == "pick_and_tune"
    assert (ctx.out_dir / "adapter" / "adapter_model.safetensors").exists()
    assert res.extra["order_disagreement"] == 0.0  # the rubric scores answers alone: no position bias


# -- needs ------------------------------------------------------------------------------------


class NeedsRewardModel:
    name = "needy"
    needs = frozenset({"pairs", "reward_model"})

    class Params(TrainParams):
        pass

    def fit(self, ctx, params):  # pragma: no cover - must never run
        raise AssertionError("fit ran although a need was missing")


def test_a_missing_need_fails_before_any_work(monkeypatch):
    from importlib.metadata import EntryPoint

    from prefdesk.config import load_config
    from prefdesk.training import check_needs

    eps = {"needy": EntryPoint(name="needy", value="test_contract:NeedsRewardModel", group=plugin.GROUP)}
    monkeypatch.setattr(plugin, "available", lambda: eps)
    from prefdesk.config import ConfigError

    with pytest.raises(ConfigError, match="needs reward_model") as err:  # when the config loads
        load_config(None, ["train.optimizer=needy", "model.name=tiny"])
    assert "train.reward_model" in str(err.value)
    with pytest.raises(plugin.PluginError, match="needs reward_model"):
        check_needs(load_config(None, ["train.optimizer=needy", "model.name=tiny"], check=False))
    # named where it can be met: the check passes and names nothing
    check_needs(load_config(None, ["train.optimizer=needy", "train.reward_model=some/folder"]))


def test_unknown_needs_and_describe(monkeypatch):
    class Odd(NeedsRewardModel):
        needs = frozenset({"telepathy"})

    from importlib.metadata import EntryPoint

    monkeypatch.setattr(plugin, "available", lambda: {"odd": EntryPoint("odd", "x:y", plugin.GROUP)})
    monkeypatch.setattr(EntryPoint, "load", lambda self: Odd)
    with pytest.raises(plugin.PluginError, match="unknown needs"):
        plugin.load("odd")


def test_describe_lists_needs_of_the_builtins():
    rows = {r["name"]: r for r in plugin.describe()}
    assert rows["dpo"]["needs"] == ["pairs"] and "beta" in rows["dpo"]["params"]
    assert "seed" not in rows["dpo"]["params"] and "output_dir" not in rows["dpo"]["params"]  # run settings live elsewhere


# -- named adapters ---------------------------------------------------------------------------


def test_named_adapters_share_the_base_and_keep_their_trainability(tiny_policy):
    pol = tiny_policy()
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    pol.add_adapter("value", seed=3)
    before = {n: p.requires_grad for n, p in pol.model.named_parameters()}
    assert any(".value." in n and g for n, g in before.items())
    with torch.no_grad():
        for n, p in pol.model.named_parameters():
            if ".value." in n and "lora_B" in n:
                p.add_(0.5)
        with pol.use("reference") as m:
            ref = m(input_ids=ids).logits
        with pol.use("default") as m:
            policy_out = m(input_ids=ids).logits
        with pol.use("value") as m:
            value_out = m(input_ids=ids).logits
        with pol.use("default") as m:
            again = m(input_ids=ids).logits
    torch.testing.assert_close(policy_out, ref)  # a fresh LoRA (B = 0) is the reference
    assert not torch.allclose(value_out, ref)
    torch.testing.assert_close(again, policy_out)
    assert {n: p.requires_grad for n, p in pol.model.named_parameters()} == before
    assert pol.model.active_adapter == "default"
    with pytest.raises(KeyError, match="no adapter named"):
        with pol.use("nope"):
            pass


def test_save_adapter_writes_one_named_adapter(tiny_policy, tmp_path):
    pol = tiny_policy()
    pol.add_adapter("reward")
    pol.save_adapter(tmp_path / "rm", name="reward")
    pol.save_adapter(tmp_path / "policy")
    assert (tmp_path / "rm" / "adapter_model.safetensors").exists()
    assert (tmp_path / "policy" / "adapter_model.safetensors").exists()
    from safetensors.torch import load_file

    assert all(".reward." not in k for k in load_file(str(tmp_path / "policy" / "adapter_model.safetensors")))


# -- the sampler ------------------------------------------------------------------------------


def test_greedy_sampling_matches_generate_and_is_scored_consistently(tiny_policy):
    from prefdesk.engine.generate import Sampler

    pol = tiny_policy()
    sampler = Sampler(pol, max_new_tokens=7, batch_size=2, progress=False)
    out = sampler.sample(PROMPTS, with_reference=True)
    assert len(out) == 3 and out.prompt_index == [0, 1, 2]
    for r, prompt_ids in enumerate(out.prompt_ids):
        ids = torch.tensor([prompt_ids])
        ref = pol.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=7, do_sample=False,
                                 eos_token_id=sampler.eos_id, pad_token_id=sampler.pad_id)[0, len(prompt_ids):].tolist()
        want = ref[: ref.index(sampler.eos_id)] if sampler.eos_id in ref else ref
        assert out.answer_ids[r] == want
        assert len(out.logps[r]) == len(want) + out.finished[r]
    rescored = sampler.score(out.prompt_ids, [out.scored_ids(r, sampler.eos_id) for r in range(3)])
    for a, b in zip(out.logps, rescored):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    for a, b in zip(out.ref_logps, rescored):  # a fresh adapter is the reference
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert out.tokens_per_s > 0


def test_seeded_sampling_is_reproducible_and_n_per_prompt(tiny_policy):
    from prefdesk.engine.generate import Sampler

    sampler = Sampler(tiny_policy(), max_new_tokens=6, batch_size=4, progress=False)
    a = sampler.sample(PROMPTS[:2], n=3, temperature=1.0, top_p=0.9, seed=5)
    b = sampler.sample(PROMPTS[:2], n=3, temperature=1.0, top_p=0.9, seed=5)
    c = sampler.sample(PROMPTS[:2], n=3, temperature=1.0, top_p=0.9, seed=6)
    assert a.prompt_index == [0, 0, 0, 1, 1, 1]
    assert a.answer_ids == b.answer_ids and a.answer_ids != c.answer_ids
    assert len({tuple(x) for x in a.answer_ids[:3]}) > 1  # samples of one prompt differ
    rescored = sampler.score(a.prompt_ids, [a.scored_ids(r, sampler.eos_id) for r in range(len(a))], temperature=1.0)
    for x, y in zip(a.logps, rescored):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError):
        sampler.sample(PROMPTS, temperature=-1)


# -- judges -----------------------------------------------------------------------------------


class FirstWins(ScoreJudge):
    """A position-biased judge: whatever is shown first wins."""

    name = "first_wins"

    def compare(self, prompts, first, second, **context):
        return [1.0] * len(first)


def test_comparisons_run_in_both_orders_and_report_position_bias():
    prompts = PROMPTS[:2]
    a, b = ["Tea is a drink made from leaves.", "I'm sorry, but I can't help with that."], ["ok", "Rain falls."]
    biased = compare_both_orders(FirstWins(), prompts, a, b)
    assert biased.disagreement == 1.0 and biased.p_first == [0.5, 0.5]
    fair = compare_both_orders(RubricJudge(), prompts, a, b)
    assert fair.disagreement == 0.0
    assert fair.p_first == [0.5, 0.0]  # both fine answers tie; the refusal of a should-answer prompt loses
    refuse = compare_both_orders(RubricJudge(), prompts, a, b, expect=["answer", "refuse"])
    assert refuse.p_first[1] == 1.0  # refusing a should-refuse prompt wins


def test_the_rubric_is_registered_as_a_judge():
    from prefdesk import judges

    assert isinstance(judges.create("rubric"), RubricJudge)
    with pytest.raises(judges.JudgeError, match="no judge named"):
        judges.create("oracle")
