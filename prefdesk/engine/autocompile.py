"""`torch.compile` of the decoder layers, turned on where the run is long enough to pay.

Measured on SmolLM2: a compiled step is ~35% faster in bf16 on a 2-core AMX CPU and ~14%
in fp32 on an AVX2 one (fused norms, activations and LoRA arithmetic; fp32 steps are
dominated by the matmuls compilation does not change), but the first compiled step pays
~50 s of compilation on a quiet machine, ~10 s when inductor's on-disk cache already holds
this machine's and model's kernels. So compilation pays for a few hundred steps, not for
sixteen (unless the steps themselves are slow).

`PREFDESK_COMPILE`: `1` compiles from the start (reference pass included), `0` never,
unset or `auto` decides after two eager steps: the second step's time (the first pays
one-off kernel set-ups) times the steps left times the expected saving, against the
expected compile time. Both expectations start from the figures above and are replaced by
what this machine measured for this model the last time it compiled (a small JSON record
per machine and model next to inductor's cache, in `<model cache>/inductor/`; the first
record holds a cold compile's time, so the estimate errs towards not compiling). The
estimate is logged either way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from prefdesk.config import model_cache_dir
from prefdesk.engine.logprobs import decoder

log = logging.getLogger("prefdesk")

DEFAULT_SAVING = {torch.bfloat16: 0.35, torch.float16: 0.35}  # share of an eager step saved (see above)
FP32_SAVING = 0.14
DEFAULT_COLD_SECONDS = 50.0  # first compile on a machine, inductor's cache empty (~10 s warm)
DECIDE_AFTER = 2  # eager steps timed before deciding


def cache_dir() -> Path:
    return model_cache_dir() / "inductor"


def _use_our_inductor_cache() -> None:
    """Point inductor at `<model cache>/inductor` unless the user chose a folder.

    torch fills TORCHINDUCTOR_CACHE_DIR with its default (/tmp/torchinductor_<user>) the
    first time it asks, which loading a model already does, so "unset" is "the default".
    """
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
        from torch._inductor.utils import clear_caches
    except ImportError:  # another torch layout: leave inductor's choice alone
        return
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir())
        clear_caches()


def compile_layers(policy) -> Callable[[], None]:
    """`torch.compile` each decoder layer (one graph, shared by all layers); returns the undo.

    Inductor's caches go to `<model cache>/inductor` (unless TORCHINDUCTOR_CACHE_DIR says
    otherwise), so they outlive /tmp and the next run on this machine compiles from them.
    Layers are restored to eager by the undo, so evaluation and generation on the same
    policy do not recompile.
    """
    _use_our_inductor_cache()
    layers = list(getattr(decoder(policy.model), "layers", []))
    for layer in layers:
        layer.compile(dynamic=True)

    def undo() -> None:
        for layer in layers:
            layer._compiled_call_impl = None

    return undo


def mode() -> str:
    value = os.environ.get("PREFDESK_COMPILE", "auto").strip().lower()
    return {"1": "on", "true": "on", "on": "on", "0": "off", "false": "off", "off": "off"}.get(value, "auto")


def _record_path(policy, device: torch.device) -> Path:
    from prefdesk.hardware import cpu_info

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_info().model
    raw = json.dumps([where, torch.__version__, torch.get_num_threads(), policy.base_name, str(policy.dtype),
                      policy.quantized])
    return cache_dir() / f"prefdesk-{hashlib.sha256(raw.encode()).hexdigest()[:16]}.json"


@dataclass
class AutoCompile:
    """Times the eager steps, decides once, measures what compiling cost and saved."""

    policy: object
    device: torch.device
    total_steps: int
    write: bool = True  # record the timings (the main process does)
    undo: Callable[[], None] | None = None
    decided: bool = False
    eager: list[float] = field(default_factory=list)
    compiled: list[float] = field(default_factory=list)
    compile_seconds: float | None = None

    def __post_init__(self) -> None:
        self.path = _record_path(self.policy, self.device)
        try:
            self.record = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.record = {}

    def estimate(self, step_seconds: float, steps_left: int) -> tuple[bool, str]:
        """(compile?, the estimate in words)."""
        default = DEFAULT_SAVING.get(getattr(self.policy, "dtype", None), FP32_SAVING)
        saving = float(self.record.get("saving", default))
        cost = float(self.record.get("compile_seconds", DEFAULT_COLD_SECONDS))
        gain = steps_left * step_seconds * saving
        source = "measured here before" if self.record else "first compile on this machine, defaults"
        words = (f"{steps_left} steps left x {step_seconds:.2f} s x {saving:.0%} saved = {gain:.0f} s "
                 f"against ~{cost:.0f} s to compile ({source})")
        return gain > cost, words

    def after_step(self, step: int, seconds: float) -> None:
        """Called after every optimizer step (0-based `step`) with its wall time."""
        if self.undo is not None:
            if self.compile_seconds is None:
                self.compile_seconds = seconds  # the first compiled step: compile + one step
            else:
                self.compiled.append(seconds)
            return
        if self.decided:
            return
        self.eager.append(seconds)
        if len(self.eager) < DECIDE_AFTER:
            return
        self.decided = True
        steps_left = self.total_steps - step - 1
        go, words = self.estimate(self.eager[-1], steps_left)
        log.info("torch.compile %s: %s", "on" if go else "off", words)
        if go:
            self.undo = compile_layers(self.policy)

    def finish(self) -> None:
        """Restore eager layers and remember what this machine measured."""
        if self.undo is None:
            return
        self.undo()
        if not self.write or self.compile_seconds is None or len(self.compiled) < 3:
            return
        step = statistics.median(self.compiled)
        eager = self.eager[-1]
        record = {"saving": max(0.0, 1 - step / eager), "compile_seconds": max(0.0, self.compile_seconds - step),
                  "eager_step": eager, "compiled_step": step}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(record))
            tmp.replace(self.path)
        except OSError as exc:
            log.warning("could not record the compile timings in %s: %s", self.path, exc)
