"""`model.dtype: auto` by what the hardware runs fast; torch.compile when the run is long enough."""

from __future__ import annotations

import json
import math

import pytest
import torch

from prefdesk import hardware, models
from prefdesk.engine.autocompile import DEFAULT_COLD_SECONDS, AutoCompile

AMX = hardware.CpuInfo("Intel Xeon (test)", frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}))
ZEN4 = hardware.CpuInfo("AMD EPYC 9xx4 (test)", frozenset({"avx2", "avx512f", "avx512_bf16"}))
AVX2 = hardware.CpuInfo("AMD EPYC 7xx2 (test)", frozenset({"avx2", "fma"}))
CPU = torch.device("cpu")


@pytest.fixture
def measured(monkeypatch):
    """The micro-benchmark replaced by a given gain; counts how often it runs."""
    calls = {"n": 0, "gain": 1.0}

    def fake(*_a, **_k):
        calls["n"] += 1
        return calls["gain"]

    monkeypatch.setattr(hardware, "measure_bf16_gain", fake)
    return calls


@pytest.mark.parametrize("cpu", [AMX, ZEN4], ids=["amx", "avx512_bf16"])
def test_cpus_with_a_bf16_flag_get_bf16_without_measuring(cpu, measured, tmp_path):
    choice = hardware.choose_auto_dtype(CPU, cpu, tmp_path)
    assert choice.dtype == torch.bfloat16 and cpu.fast_bf16_flag in choice.reason
    assert measured["n"] == 0


def test_cpu_without_the_flags_measures_once_and_keeps_fp32_when_bf16_is_slow(measured, tmp_path):
    measured["gain"] = 0.07  # AVX2: bf16 emulated, 14x slower than fp32
    choice = hardware.choose_auto_dtype(CPU, AVX2, tmp_path)
    assert choice.dtype == torch.float32 and "0.07x" in choice.reason and "measured now" in choice.reason
    again = hardware.choose_auto_dtype(CPU, AVX2, tmp_path)
    assert again.dtype == torch.float32 and "cached" in again.reason
    assert measured["n"] == 1, "the micro-benchmark runs once per machine"
    (record,) = (tmp_path / "hardware").glob("bf16-*.json")
    assert json.loads(record.read_text())["bf16_gain"] == 0.07


def test_an_unknown_cpu_that_runs_bf16_fast_gets_bf16(measured, tmp_path):
    measured["gain"] = 2.6  # e.g. an arm64 server whose flags we do not interpret
    arm = hardware.CpuInfo("Neoverse (test)", frozenset({"asimd", "bf16", "sve"}))
    assert hardware.choose_auto_dtype(CPU, arm, tmp_path).dtype == torch.bfloat16


def test_choose_dtype_auto_follows_the_capability_probe(monkeypatch, measured, tmp_path):
    monkeypatch.setenv("PREFDESK_CACHE", str(tmp_path))
    measured["gain"] = 0.07
    for cpu, want in ((AMX, torch.bfloat16), (AVX2, torch.float32), (ZEN4, torch.bfloat16)):
        monkeypatch.setattr(hardware, "cpu_info", lambda cpu=cpu: cpu)
        models._auto_dtype.cache_clear()
        assert models.choose_dtype("auto", CPU) == want
        assert models.cpu_has_amx() == (cpu is AMX)
    assert models.choose_dtype("fp32", CPU) == torch.float32 and models.choose_dtype("bf16", CPU) == torch.bfloat16
    models._auto_dtype.cache_clear()


def test_cuda_without_bf16_gets_fp16_with_a_scaler(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    choice = hardware.choose_auto_dtype(torch.device("cuda"))
    assert choice.dtype == torch.float16 and "scaler" in choice.reason
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert hardware.choose_auto_dtype(torch.device("cuda")).dtype == torch.bfloat16


def test_the_probe_reads_this_machine():
    cpu = hardware.cpu_info()
    assert isinstance(cpu.model, str) and isinstance(cpu.flags, frozenset)
    gain = hardware.measure_bf16_gain(n=64, reps=1)
    assert math.isfinite(gain) and gain > 0


def test_fp16_base_trains_with_a_loss_scaler(monkeypatch, toy_pairs, run_ctx):
    """A GPU without bf16 gets an fp16 base; the loop scales the loss (run here on the CPU)."""
    from prefdesk.plugins.dpo import DPOOptimizer
    from prefdesk.config import ModelSettings

    monkeypatch.setattr(models, "choose_dtype", lambda setting, device: torch.float16)
    pol = models.build_policy(ModelSettings(name="tiny"))
    assert pol.dtype == torch.float16
    res = DPOOptimizer().fit(run_ctx(pol, toy_pairs[:8]), DPOOptimizer.Params(max_steps=2, batch_size=4))
    assert all(math.isfinite(v) for v in res.extra["loss_curve"])
    assert res.extra["loss_curve"][0] == pytest.approx(math.log(2), abs=1e-3)
    assert {p.dtype for p in pol.trainable_parameters()} == {torch.float32}


# -- torch.compile: on when it pays ------------------------------------------------------


def test_compile_estimate(monkeypatch, tmp_path, tiny_policy):
    monkeypatch.setenv("PREFDESK_CACHE", str(tmp_path))
    auto = AutoCompile(tiny_policy(), CPU, total_steps=1000)
    go, words = auto.estimate(step_seconds=2.0, steps_left=998)
    assert go and "998 steps left" in words and f"{DEFAULT_COLD_SECONDS:.0f} s to compile" in words
    assert not auto.estimate(step_seconds=2.0, steps_left=14)[0]  # 16 steps: ~10 s saved for ~50 s
    # what this machine measured replaces the defaults
    auto.path.parent.mkdir(parents=True, exist_ok=True)
    auto.path.write_text(json.dumps({"saving": 0.3, "compile_seconds": 8.0}))
    again = AutoCompile(tiny_policy(), CPU, total_steps=1000)
    go, words = again.estimate(step_seconds=2.0, steps_left=14)
    assert go and "measured here before" in words


def test_short_runs_stay_eager(tiny_policy, toy_pairs, run_ctx, monkeypatch):
    from prefdesk.plugins.sft import SFTOptimizer

    monkeypatch.delenv("PREFDESK_COMPILE", raising=False)
    res = SFTOptimizer().fit(run_ctx(tiny_policy(), toy_pairs), SFTOptimizer.Params(max_steps=3, batch_size=8))
    assert res.extra["compiled"] is False and res.extra["layout"] == "shared-prefix"
