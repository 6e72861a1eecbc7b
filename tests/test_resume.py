"""A run killed after a checkpoint resumes and ends with the same adapter as an unbroken run."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from plugins.dpo import DPOOptimizer
from prefdesk.tracking import Tracker


class Killed(Exception):
    """Stands in for SIGKILL: nothing after the raise runs, nothing is cleaned up."""


def kill_at(step: int):
    def hook(info):
        if info.step == step:
            raise Killed(step)

    return hook


def _params(out, **kw):
    base = dict(max_steps=6, batch_size=4, learning_rate=5e-3, warmup_steps=2, seed=7,
                checkpoint_every=2, output_dir=str(out), progress=False)
    return DPOOptimizer.Params(**{**base, **kw})


def _adapter(res):
    return load_file(f"{res.adapter_path}/adapter_model.safetensors")


def test_resume_after_kill_gives_the_same_adapter(tiny_policy, toy_pairs, tmp_path):
    whole = DPOOptimizer().fit(tiny_policy(), toy_pairs, _params(tmp_path / "whole"), Tracker())

    broken = tmp_path / "broken"
    with pytest.raises(Killed):
        # killed during step 5, after step 4's checkpoint (and after the optimizer moved)
        DPOOptimizer().fit(tiny_policy(), toy_pairs, _params(broken), Tracker(), callbacks=[kill_at(5)])
    ckpts = sorted(p.name for p in (broken / "checkpoints").iterdir())
    assert ckpts == ["step-2", "step-4"]
    assert not (broken / "adapter").exists()
    state = json.loads((broken / "checkpoints" / "step-4" / "state.json").read_text())
    assert state["step"] == 4

    # a new process would build a fresh policy from the same settings: so do we
    resumed = DPOOptimizer().fit(tiny_policy(), toy_pairs, _params(broken), Tracker())
    assert resumed.extra["resumed_from"].endswith("step-4")
    assert not (broken / "checkpoints").exists(), "a finished run clears its checkpoints"
    a, b = _adapter(whole), _adapter(resumed)
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert resumed.extra["loss_curve"] == pytest.approx(whole.extra["loss_curve"], rel=1e-6)
    for k, v in whole.metrics.items():
        if k != "train/tokens_per_s":
            assert resumed.metrics[k] == pytest.approx(v, rel=1e-6), k
    # and the adapter did move, so equality is not trivial
    fresh = {n: p.detach() for n, p in tiny_policy().model.named_parameters() if p.requires_grad}
    assert any(not torch.equal(fresh[n].cpu(), a[n.replace(".default", "")]) for n in fresh if "lora_B" in n)


def test_checkpoint_of_another_run_is_not_resumed(tiny_policy, toy_pairs, tmp_path):
    with pytest.raises(Killed):
        DPOOptimizer().fit(tiny_policy(), toy_pairs, _params(tmp_path), Tracker(), callbacks=[kill_at(3)])
    other = DPOOptimizer().fit(tiny_policy(), toy_pairs, _params(tmp_path, beta=0.3), Tracker())
    assert other.extra["resumed_from"] is None and other.steps == 6
