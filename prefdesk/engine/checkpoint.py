"""Checkpoints any optimizer can resume from, in files that cannot run code when read.

A checkpoint is one folder `step-N/` holding exactly what prefdesk writes:

    modules.safetensors     every trainable tensor of every named module ("policy/...", "value/...")
    optim.safetensors       every optimizer's tensor state ("<name>/<param index>/exp_avg", ...)
    rng.safetensors         torch (CPU and CUDA) and numpy generator states
    state.json              step, run key, the loop's own state, optimizer param groups,
                            schedulers, Python's and numpy's scalar RNG state; written last

Tensors go to safetensors and everything else to JSON, so loading never unpickles: a
`.pt` or any other file planted in the folder is refused, not read. The folder is written
under a temporary name and renamed, and `state.json` is the last file in it, so a run
killed while saving leaves no checkpoint that looks complete. The newest `keep` are kept.

Identity: a checkpoint carries the run key it was written for (data, parameters, base
model); `latest()` resumes only a checkpoint of the same run.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

log = logging.getLogger("prefdesk")

FILES = frozenset({"modules.safetensors", "optim.safetensors", "rng.safetensors", "state.json"})


class CheckpointRefused(RuntimeError):
    """A checkpoint folder holds something prefdesk does not write (or does not match the run)."""


def trainable(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


# -- RNG ----------------------------------------------------------------------------------


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda/{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.uint32).view(np.int32).copy())
    version, internal, gauss_next = random.getstate()
    scalars = {"numpy": [kind, int(pos), int(has_gauss), float(gauss)],
               "python": [version, list(internal), gauss_next]}
    return tensors, scalars


def _set_rng_state(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = sorted((k for k in tensors if k.startswith("cuda/")), key=lambda k: int(k.split("/")[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    kind, pos, has_gauss, gauss = scalars["numpy"]
    np.random.set_state((kind, tensors["numpy"].numpy().view(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = scalars["python"]
    random.setstate((version, tuple(internal), gauss_next))


# -- optimizer state ------------------------------------------------------------------------


def _split_optimizer(name: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state_dict as (tensors, JSON): per-parameter tensors to safetensors,
    param groups and any scalar state to JSON."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{name}/{idx}/{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalar_state": scalars}


def _join_optimizer(name: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"{name}/"
    for key, v in tensors.items():
        if key.startswith(prefix):
            idx, k = key[len(prefix):].split("/", 1)
            state.setdefault(int(idx), {})[k] = v
    for idx, st in meta["scalar_state"].items():
        state.setdefault(int(idx), {}).update(st)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


# -- the checkpointer ------------------------------------------------------------------------


class Checkpointer:
    """Saves and restores named modules, optimizers, schedulers, RNG and loop state together."""

    def __init__(self, folder: str | Path, keep: int = 2):
        self.folder = Path(folder)
        self.keep = keep

    def _done(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        found = [p for p in self.folder.glob("step-*") if p.name[5:].isdigit() and (p / "state.json").exists()]
        return sorted(found, key=lambda p: int(p.name[5:]))

    def save(
        self,
        step: int,
        run_key: str,
        modules: Mapping[str, torch.nn.Module],
        optimizers: Mapping[str, torch.optim.Optimizer],
        schedulers: Mapping[str, Any] | None = None,
        state: dict[str, Any] | None = None,
    ) -> Path:
        from safetensors.torch import save_file

        final = self.folder / f"step-{step}"
        tmp = self.folder / f".step-{step}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        weights = {f"{m}/{n}": p.detach().cpu().contiguous() for m, mod in modules.items() for n, p in trainable(mod).items()}
        save_file(weights, str(tmp / "modules.safetensors"))
        optim_tensors: dict[str, torch.Tensor] = {}
        optim_meta: dict[str, Any] = {}
        for name, opt in optimizers.items():
            t, meta = _split_optimizer(name, opt)
            optim_tensors.update(t)
            optim_meta[name] = meta
        save_file(optim_tensors, str(tmp / "optim.safetensors"))
        rng_t, rng_s = _rng_state()
        save_file(rng_t, str(tmp / "rng.safetensors"))
        doc = {
            "step": step,
            "run_key": run_key,
            "state": state or {},
            "optimizers": optim_meta,
            "schedulers": {k: s.state_dict() for k, s in (schedulers or {}).items()},
            "rng": rng_s,
        }
        (tmp / "state.json").write_text(json.dumps(doc))
        shutil.rmtree(final, ignore_errors=True)
        tmp.replace(final)
        for old in self._done()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def latest(self, run_key: str) -> Path | None:
        """The newest complete, safe checkpoint written by this run; others are skipped with a warning."""
        for p in reversed(self._done()):
            try:
                self._vet(p)
                doc = json.loads((p / "state.json").read_text())
            except (CheckpointRefused, OSError, ValueError) as exc:
                log.warning("not resuming from %s: %s", p, exc)
                continue
            if doc.get("run_key") == run_key:
                return p
            log.warning("ignoring checkpoint %s: it belongs to another run (other data or parameters)", p)
        return None

    @staticmethod
    def _vet(path: Path) -> None:
        strangers = sorted(f.name for f in path.iterdir() if f.name not in FILES)
        if strangers:
            raise CheckpointRefused(
                f"it holds {', '.join(strangers)}, which prefdesk never writes; such files are not read "
                "(a pickled file can run code when loaded). Delete the folder to silence this."
            )
        missing = sorted(FILES - {f.name for f in path.iterdir()})
        if missing:
            raise CheckpointRefused(f"it lacks {', '.join(missing)}")

    def load(
        self,
        path: str | Path,
        modules: Mapping[str, torch.nn.Module],
        optimizers: Mapping[str, torch.optim.Optimizer],
        schedulers: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Restore everything saved at `path` in place; returns {"step", "state"}."""
        from safetensors.torch import load_file

        path = Path(path)
        self._vet(path)
        doc = json.loads((path / "state.json").read_text())
        weights = load_file(str(path / "modules.safetensors"))
        expected = {f"{m}/{n}": p for m, mod in modules.items() for n, p in trainable(mod).items()}
        if set(weights) != set(expected):
            raise CheckpointRefused(f"{path} holds other trainable weights than this run's modules")
        with torch.no_grad():
            for k, p in expected.items():
                p.copy_(weights[k])
        optim_tensors = load_file(str(path / "optim.safetensors"))
        for name, opt in optimizers.items():
            opt.load_state_dict(_join_optimizer(name, optim_tensors, doc["optimizers"][name]))
        for name, sched in (schedulers or {}).items():
            sched.load_state_dict(doc["schedulers"][name])
        _set_rng_state(load_file(str(path / "rng.safetensors")), doc["rng"])
        return {"step": int(doc["step"]), "state": doc["state"]}

    def clear(self) -> None:
        """A finished run removes its checkpoints, so the next identical run logs a whole run of its own."""
        shutil.rmtree(self.folder, ignore_errors=True)
