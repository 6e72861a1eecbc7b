"""What this machine computes fast: the facts behind `model.dtype: auto`.

bf16 halves memory traffic, but whether it is faster depends on the silicon, by a wide
margin either way (SmolLM2 shapes, measured):

* AMX (Sapphire Rapids and later): bf16 tiles, a training step ~2x faster than fp32;
* `avx512_bf16` without AMX (AMD Zen 4/5, Cooper Lake): bf16 matmuls 2.3-4.3x fp32;
* AVX2 only (older EPYC/Xeon, most laptops): no bf16 instructions; oneDNN emulates them
  and a 1024^2 bf16 matmul ran at 0.3 GFLOP/s against 17 GFLOP/s in fp32 (50x slower).

So the CPU flags decide where they are known to be right (AMX, avx512_bf16: bf16), and
any other CPU gets a one-off micro-benchmark (bf16 against fp32 matmul, about a second,
stopped early when bf16 is clearly slower), cached per machine in
`<model cache>/hardware/` so it runs once. The choice and its reason are logged.
On CUDA: bf16 where the GPU supports it, else fp16 (the training loop then scales the
loss against underflow).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from prefdesk.config import model_cache_dir

log = logging.getLogger("prefdesk")

BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # x86 flags whose bf16 matmuls are known to be fast
MIN_BF16_GAIN = 1.5  # bf16 must beat fp32 matmuls by this much to pay for autocast's casts
BENCH_N = 512  # square matmul size of the micro-benchmark


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as /proc/cpuinfo describes it (model name and feature flags)."""

    model: str = "unknown CPU"
    flags: frozenset[str] = field(default_factory=frozenset)

    @property
    def amx(self) -> bool:
        return "amx_bf16" in self.flags

    @property
    def fast_bf16_flag(self) -> str | None:
        """The first flag that promises fast bf16 matmuls, if any."""
        return next((f for f in BF16_FLAGS if f in self.flags), None)

    def describe(self) -> str:
        simd = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2", "bf16", "sve") if f in self.flags]
        return f"{self.model} ({', '.join(simd) or 'no bf16/avx512/avx2 flags'})"


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """The capability probe: model name and flags of the first CPU (Linux; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return CpuInfo()
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:  # x86 "flags", arm64 "Features"
            flags = frozenset(value.split())
    return CpuInfo(model or platform.machine(), flags)


def _best_seconds(fn, reps: int, give_up: float = math.inf) -> float:
    """Fastest of `reps` timed calls (after one warm-up call); stops early past `give_up`."""
    t = time.perf_counter()
    fn()
    best = time.perf_counter() - t
    for _ in range(reps):
        if best > give_up:
            break
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure_bf16_gain(n: int = BENCH_N, reps: int = 3) -> float:
    """fp32 matmul time / bf16 matmul time at n^3 on this CPU (> 1: bf16 is faster).

    fp32 first; bf16 then stops as soon as one call takes 4x the fp32 time (where bf16 is
    emulated a full measurement would take seconds to say what is already clear).
    """
    a, b = torch.randn(n, n), torch.randn(n, n)
    fp32 = _best_seconds(lambda: a @ b, reps)
    a16, b16 = a.bfloat16(), b.bfloat16()
    bf16 = _best_seconds(lambda: a16 @ b16, reps, give_up=4 * fp32)
    return fp32 / max(bf16, 1e-9)


def _machine_key(cpu: CpuInfo) -> str:
    raw = json.dumps([cpu.model, sorted(cpu.flags), torch.__version__, torch.get_num_threads()])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def bf16_gain(cpu: CpuInfo, cache_dir: Path | None = None) -> tuple[float, bool]:
    """(measured bf16 gain, whether it came from the cache) for this machine."""
    folder = Path(cache_dir or model_cache_dir()) / "hardware"
    path = folder / f"bf16-{_machine_key(cpu)}.json"
    try:
        return float(json.loads(path.read_text())["bf16_gain"]), True
    except (OSError, ValueError, KeyError, TypeError):
        pass
    gain = measure_bf16_gain()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"bf16_gain": gain, "cpu": cpu.model, "torch": torch.__version__,
                               "threads": torch.get_num_threads(), "n": BENCH_N}))
    tmp.replace(path)
    return gain, False


@dataclass(frozen=True)
class DtypeChoice:
    dtype: torch.dtype
    reason: str


def choose_auto_dtype(device: torch.device, cpu: CpuInfo | None = None, cache_dir: Path | None = None) -> DtypeChoice:
    """What `model.dtype: auto` means on `device`, and why."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return DtypeChoice(torch.bfloat16, f"{torch.cuda.get_device_name(device)} supports bf16")
        return DtypeChoice(torch.float16, f"{torch.cuda.get_device_name(device)} lacks bf16: fp16 with a loss scaler")
    if device.type != "cpu":
        return DtypeChoice(torch.float32, f"no precision rule for {device.type}: fp32")
    cpu = cpu or cpu_info()
    flag = cpu.fast_bf16_flag
    if flag:
        return DtypeChoice(torch.bfloat16, f"the CPU has {flag} ({cpu.describe()})")
    gain, cached = bf16_gain(cpu, cache_dir)
    how = "cached measurement" if cached else "measured now, cached"
    if gain >= MIN_BF16_GAIN:
        return DtypeChoice(torch.bfloat16, f"bf16 matmuls run {gain:.2f}x fp32 on {cpu.describe()} ({how})")
    return DtypeChoice(torch.float32, f"bf16 matmuls run {gain:.2f}x fp32 on {cpu.describe()} ({how}; "
                                      f"bf16 needs >= {MIN_BF16_GAIN}x)")
