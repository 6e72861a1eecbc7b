"""rm_ppo on the tiny model: the reward rises, KL is held to the budget, a kill resumes bit-identically.

A random tiny Llama samples nearly uniformly from 49k tokens, so a reward must give signal
on such answers to be learnable in a dozen steps. `Leaning` is that reward: how far an
answer's tokens lean along one fixed direction of the embedding space (dense: every token
counts, and the policy can raise it by tilting its last hidden state). The embeddings are
scaled up (x5) so a LoRA can tilt the output distribution within a few steps; the answers
stay near-uniform (entropy ~10.4 nats of 10.8).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from prefdesk.plugins.rm_ppo import RMPPOOptimizer, gae, make_rows, policy_logps

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model's ops are far too small to gain from threads; on a shared, loaded CPU the
    thread pool's barriers cost the most (measured: a 5-step run 112 s with 2 threads, 12 s with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


PROMPTS = [[{"role": "user", "content": f"Tell me one thing about {t}."}]
           for t in ("tea", "rain", "maps", "bread", "clocks", "birds", "rivers", "chess")]


def sharp(policy, factor: float = 5.0):
    with torch.no_grad():
        policy.model.get_base_model().get_input_embeddings().weight.mul_(factor)  # tied: the LM head too
    return policy


class Leaning:
    """Stands in for a trained reward model (learned = True: PPO uses it instead of training one)."""

    name = "leaning"
    learned = True

    def __init__(self, policy, seed: int = 0):
        emb = policy.model.get_base_model().get_input_embeddings().weight.detach().float()
        u = torch.randn(emb.shape[1], generator=torch.Generator().manual_seed(seed))
        s = emb @ (u / u.norm())
        self.per_token = (s - s.mean()) / s.std()

    def score_ids(self, prompt_ids, answer_ids):
        return torch.tensor([float(self.per_token[torch.tensor(a)].mean()) if a else 0.0 for a in answer_ids])


def _params(**kw):
    base = dict(max_steps=5, batch_size=4, samples_per_prompt=2, minibatch_size=4, ppo_epochs=2,
                learning_rate=5e-4, value_learning_rate=1e-3, kl_control="fixed", kl_coef=0.1)
    return RMPPOOptimizer.Params(**{**base, **kw})


# -- the pieces ---------------------------------------------------------------------------------


def test_gae_is_the_recursion_per_answer():
    rewards = torch.tensor([[0.1, -0.2, 1.0, 0.0], [0.5, 2.0, 0.0, 0.0]])
    vals = torch.tensor([[0.3, 0.1, -0.4, 0.0], [0.2, 0.7, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 0]])
    gamma, lam = 0.9, 0.8
    adv, ret = gae(rewards, vals, mask, gamma, lam)
    for b in range(2):
        n = int(mask[b].sum())
        want, last = [0.0] * n, 0.0
        for t in reversed(range(n)):
            nxt = float(vals[b, t + 1]) if t + 1 < n else 0.0
            last = float(rewards[b, t]) + gamma * nxt - float(vals[b, t]) + gamma * lam * last
            want[t] = last
        assert adv[b, :n].tolist() == pytest.approx(want, abs=1e-6)
        assert ret[b, :n].tolist() == pytest.approx([w + float(v) for w, v in zip(want, vals[b, :n])], abs=1e-6)
        assert adv[b, n:].abs().sum() == 0 and ret[b, n:].abs().sum() == 0


def test_the_update_rescores_the_rollout_to_the_same_logps(tiny_policy, run_ctx):
    """Old log-probs (the sampler's, token by token with a KV cache) and the update's teacher-forced
    ones agree at the sampling temperature: before any step the PPO ratio is 1."""
    pol = tiny_policy()
    pol.add_adapter("value", seed=1)  # another adapter on the base changes nothing for the policy
    ctx = run_ctx(pol, prompts=PROMPTS[:3], max_new_tokens=7)
    s = ctx.sampler.sample(PROMPTS[:3], n=2, temperature=0.7, seed=4, with_reference=True)
    answers = [s.scored_ids(r, ctx.sampler.eos_id) for r in range(len(s))]
    rows = make_rows(s.prompt_ids, answers, ctx.sampler.pad_id, pol.device)
    with torch.no_grad():
        lp = policy_logps(pol, rows, 0.7)
    for r, old in enumerate(s.logps):
        torch.testing.assert_close(lp[r, : len(old)], old, rtol=1e-4, atol=1e-4)
        assert lp[r, len(old):].abs().sum() == 0
    with pytest.raises(AssertionError):  # the temperature matters: a mismatch would show
        with torch.no_grad():
            torch.testing.assert_close(policy_logps(pol, rows, 1.0)[0, : len(s.logps[0])], s.logps[0])


def test_adaptive_control_without_a_target_fails_before_any_work(tiny_policy, run_ctx):
    ctx = run_ctx(None, prompts=PROMPTS)  # no policy needed: nothing may start
    with pytest.raises(ValueError, match="adaptive KL control needs a target"):
        RMPPOOptimizer().fit(ctx, _params(kl_control="adaptive"))


# -- learning ------------------------------------------------------------------------------------


def test_ppo_raises_the_reward_while_the_adaptive_controller_keeps_kl_in_budget(tiny_policy, run_ctx, tmp_path):
    pol = sharp(tiny_policy())
    judge = Leaning(pol)
    ctx = run_ctx(pol, prompts=PROMPTS, out=tmp_path / "run", judge=judge, max_new_tokens=8, kl_budget=0.3)
    res = RMPPOOptimizer().fit(ctx, _params(max_steps=12, batch_size=8, minibatch_size=8, ppo_epochs=4,
                                            learning_rate=4e-4, kl_control="adaptive", kl_coef=0.2,
                                            kl_rate=2.0, kl_coef_min=0.05))
    c = res.extra["curves"]
    assert res.extra["stopped_early"] is None and res.steps == 12
    assert res.extra["kl_target"] == pytest.approx(0.15)  # half the drift budget by default
    first, last = sum(c["ppo/reward"][:3]) / 3, sum(c["ppo/reward"][-3:]) / 3
    assert last > first + 0.2, c["ppo/reward"]
    assert max(c["ppo/kl"]) <= 0.3, c["ppo/kl"]
    assert max(c["ppo/kl"][-4:]) > 0.15 * 0.5  # the policy did move toward the target
    beta = c["ppo/kl_coef"]
    assert min(beta) < beta[0] and beta[-1] > min(beta)  # eased while KL was low, tightened once over target
    # one vocabulary, and the artifacts
    assert set(res.metrics) == {"ppo/reward", "ppo/kl", "ppo/kl_coef", "ppo/entropy", "ppo/response_length",
                                "ppo/clip_fraction", "ppo/value_loss", "ppo/approx_kl", "ppo/tokens_per_s"}
    assert res.gated["ppo/kl"] == c["ppo/kl"][-1]
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()
    assert (tmp_path / "run" / "value_head" / "value_head.safetensors").exists()
    assert "reward_model" not in res.artifacts  # a stand-in judge has nothing to save
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_kl_leaving_the_budget_stops_the_run_early(tiny_policy, run_ctx, tmp_path):
    pol = sharp(tiny_policy())
    ctx = run_ctx(pol, prompts=PROMPTS, out=tmp_path, judge=Leaning(pol), max_new_tokens=8, kl_budget=0.02)
    res = RMPPOOptimizer().fit(ctx, _params(max_steps=10, batch_size=8, minibatch_size=8, ppo_epochs=4,
                                            learning_rate=2e-3, kl_coef=0.0))
    assert res.extra["stopped_early"] and "left the drift budget 0.02" in res.extra["stopped_early"]
    assert res.steps < 10 and res.extra["curves"]["ppo/kl"][-1] > 0.02
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()  # saved: the gates judge it


# -- the reward model as PPO's first step ---------------------------------------------------------


def test_without_a_learned_judge_a_reward_model_is_trained_first(tiny_policy, run_ctx, toy_pairs, tmp_path):
    pol = tiny_policy()
    ctx = run_ctx(pol, pairs=toy_pairs, out=tmp_path, max_new_tokens=4)
    params = _params(max_steps=1, batch_size=2, minibatch_size=4, ppo_epochs=1,
                     reward_model={"max_steps": 2, "batch_size": 4})
    res = RMPPOOptimizer().fit(ctx, params)
    assert res.artifacts["reward_model"] == str(tmp_path / "reward_model")
    assert (tmp_path / "reward_model" / "reward_head.safetensors").exists()
    assert {"rm/pair_accuracy", "rm/length_correlation", "ppo/reward", "ppo/kl"} <= set(res.metrics)
    assert {"rm/pair_accuracy", "rm/length_correlation", "ppo/kl", "ppo/reward"} <= set(res.gated)
    # the reward model stayed frozen through PPO: its saved adapter is what the policy still holds
    saved = load_file(str(tmp_path / "reward_model" / "adapter_model.safetensors"))
    live = {n: p for n, p in pol.model.named_parameters() if ".reward." in n}
    assert live and not any(p.requires_grad for p in live.values())
    for n, p in live.items():
        torch.testing.assert_close(p.detach(), saved[n.replace(".reward", "")], rtol=0, atol=0)


# -- resume after a kill -------------------------------------------------------------------------


class Killed(Exception):
    """Stands in for SIGKILL: nothing after the raise runs."""


def kill_at(step: int):
    def hook(info):
        if info.step == step:
            raise Killed(step)

    return hook


RUN = dict(seed=5, checkpoint_every=2, max_new_tokens=6)


def _weights(res) -> dict[str, torch.Tensor]:
    out = {f"adapter/{k}": v for k, v in load_file(f"{res.artifacts['adapter']}/adapter_model.safetensors").items()}
    vh = res.artifacts["value_head"]
    out.update({f"value/{k}": v for k, v in load_file(f"{vh}/adapter_model.safetensors").items()})
    out.update({f"head/{k}": v for k, v in load_file(f"{vh}/value_head.safetensors").items()})
    return out


def test_resume_after_kill_gives_the_same_adapter_and_value_head(tiny_policy, run_ctx, tmp_path):
    def ctx(out, **kw):
        pol = sharp(tiny_policy())  # a new process builds a fresh policy from the same settings
        return run_ctx(pol, prompts=PROMPTS, out=out, judge=Leaning(pol), **RUN, **kw)

    whole = RMPPOOptimizer().fit(ctx(tmp_path / "whole"), _params())
    broken = tmp_path / "broken"
    with pytest.raises(Killed):
        RMPPOOptimizer().fit(ctx(broken, callbacks=[kill_at(3)]), _params())  # after step 2's checkpoint
    step2 = broken / "checkpoints" / "step-2"
    assert {f.name for f in step2.iterdir()} == {"modules.safetensors", "optim.safetensors", "rng.safetensors",
                                                 "state.json"}  # nothing pickled
    state = json.loads((step2 / "state.json").read_text())
    assert state["step"] == 2 and "kl_coef" in state["state"]
    assert any(k.startswith("value_head/") for k in load_file(str(step2 / "modules.safetensors")))

    resumed = RMPPOOptimizer().fit(ctx(broken), _params())
    assert resumed.extra["resumed_from"].endswith("step-2")
    a, b = _weights(whole), _weights(resumed)
    assert a.keys() == b.keys() and any(k.startswith("head/") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert resumed.extra["curves"] == whole.extra["curves"]
    assert any(float(v.abs().sum()) > 0 for k, v in a.items() if k.startswith("head/"))  # the value head moved


# -- the plugin list -------------------------------------------------------------------------------


def test_prefdesk_plugins_lists_rm_ppo_with_needs_and_parameters():
    from typer.testing import CliRunner

    from prefdesk.cli import app

    res = CliRunner().invoke(app, ["plugins", "--json"])
    assert res.exit_code == 0, res.output
    row = {r["name"]: r for r in json.loads(res.output)}["rm_ppo"]
    assert row["needs"] == ["pairs", "prompts", "sampler"]
    for name in ("ppo_epochs", "clip_range", "lam", "kl_control", "kl_target", "missing_eos_penalty",
                 "value_learning_rate", "reward_model"):
        assert name in row["params"], name
    assert "seed" not in row["params"] and "max_new_tokens" not in row["params"]
