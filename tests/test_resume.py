"""A run killed after a checkpoint resumes and ends with the same adapter as an unbroken run."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from prefdesk.plugins.dpo import DPOOptimizer


class Killed(Exception):
    """Stands in for SIGKILL: nothing after the raise runs, nothing is cleaned up."""


def kill_at(step: int):
    def hook(info):
        if info.step == step:
            raise Killed(step)

    return hook


def _params(**kw):
    base = dict(max_steps=6, batch_size=4, learning_rate=5e-3, warmup_steps=2)
    return DPOOptimizer.Params(**{**base, **kw})


RUN = dict(seed=7, checkpoint_every=2)


def _adapter(res):
    return load_file(f"{res.adapter_path}/adapter_model.safetensors")


def test_resume_after_kill_gives_the_same_adapter(tiny_policy, toy_pairs, tmp_path, run_ctx):
    whole = DPOOptimizer().fit(run_ctx(tiny_policy(), toy_pairs, tmp_path / "whole", **RUN), _params())

    broken = tmp_path / "broken"
    with pytest.raises(Killed):
        # killed during step 5, after step 4's checkpoint (and after the optimizer moved)
        DPOOptimizer().fit(run_ctx(tiny_policy(), toy_pairs, broken, callbacks=[kill_at(5)], **RUN), _params())
    ckpts = sorted(p.name for p in (broken / "checkpoints").iterdir())
    assert ckpts == ["step-2", "step-4"]
    assert not (broken / "adapter").exists()
    state = json.loads((broken / "checkpoints" / "step-4" / "state.json").read_text())
    assert state["step"] == 4
    assert {f.name for f in (broken / "checkpoints" / "step-4").iterdir()} == {
        "modules.safetensors", "optim.safetensors", "rng.safetensors", "state.json"}  # nothing pickled

    # a new process would build a fresh policy from the same settings: so do we
    resumed = DPOOptimizer().fit(run_ctx(tiny_policy(), toy_pairs, broken, **RUN), _params())
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


def test_checkpoint_of_another_run_is_not_resumed(tiny_policy, toy_pairs, tmp_path, run_ctx):
    with pytest.raises(Killed):
        DPOOptimizer().fit(run_ctx(tiny_policy(), toy_pairs, callbacks=[kill_at(3)], **RUN), _params())
    other = DPOOptimizer().fit(run_ctx(tiny_policy(), toy_pairs, **RUN), _params(beta=0.3))
    assert other.extra["resumed_from"] is None and other.steps == 6


class _Payload:
    """Pickled, it would create a file when unpickled: what a planted checkpoint file does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_pickle_is_refused_not_run(tiny_policy, toy_pairs, tmp_path, run_ctx, caplog):
    import pickle

    out = tmp_path / "run"
    with pytest.raises(Killed):
        DPOOptimizer().fit(run_ctx(tiny_policy(), toy_pairs, out, callbacks=[kill_at(5)], **RUN), _params())
    marker = tmp_path / "pwned"
    newest = out / "checkpoints" / "step-4"
    for name in ("optimizer.pt", "rng.pt"):  # what an older prefdesk wrote and unpickled
        (newest / name).write_bytes(pickle.dumps(_Payload(marker)))

    with caplog.at_level("WARNING", logger="prefdesk"):
        resumed = DPOOptimizer().fit(run_ctx(tiny_policy(), toy_pairs, out, **RUN), _params())
    assert not marker.exists(), "a file in a checkpoint was unpickled"
    assert resumed.extra["resumed_from"].endswith("step-2"), "the tampered checkpoint must be skipped"
    assert any("optimizer.pt" in r.getMessage() and "never writes" in r.getMessage() for r in caplog.records)
    whole = DPOOptimizer().fit(run_ctx(tiny_policy(), toy_pairs, tmp_path / "whole", **RUN), _params())
    a, b = _adapter(whole), _adapter(resumed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
