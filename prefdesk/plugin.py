"""The optimizer plugin contract and its registry (entry-point group `prefdesk.optimizers`).

A plugin is a class with a `name`, a pydantic `Params` model and one method:

    fit(policy, pairs, params, tracker) -> TrainResult

Built-ins register through the same entry-point group as third-party packages, so
`prefdesk plugins` shows exactly what an installed environment can run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Sequence, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from prefdesk.models import Policy
    from prefdesk.pairs import Pair
    from prefdesk.tracking import Tracker

GROUP = "prefdesk.optimizers"


class TrainParams(BaseModel):
    """Parameters every optimizer shares; a plugin's `Params` extends this."""

    model_config = ConfigDict(extra="forbid")

    learning_rate: float = 1e-4
    epochs: int = 1
    max_steps: int | None = Field(None, description="stop after this many optimizer steps")
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 512
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    output_dir: str = Field("", description="adapter and checkpoints go here (set by the flow)")
    checkpoint_every: int = Field(0, description="save a resumable checkpoint every N steps (0: never)")
    resume: bool = True
    reference_cache: bool = True
    progress: bool = True


@dataclass
class TrainResult:
    adapter_path: str
    metrics: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Optimizer(Protocol):
    name: ClassVar[str]
    Params: ClassVar[type[TrainParams]]

    def fit(
        self, policy: "Policy", pairs: Sequence["Pair"], params: TrainParams, tracker: "Tracker"
    ) -> TrainResult: ...


class PluginError(RuntimeError):
    pass


def available() -> dict[str, Any]:
    """Name -> entry point, for every installed optimizer (loading nothing yet)."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def load(name: str) -> type:
    eps = available()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none"
        raise PluginError(f"no optimizer plugin named {name!r} (installed: {known})")
    cls = eps[name].load()
    for attr in ("name", "Params", "fit"):
        if not hasattr(cls, attr):
            raise PluginError(f"plugin {name!r} ({eps[name].value}) lacks {attr!r}")
    return cls


def parse_params(cls: type, raw: dict[str, Any]) -> TrainParams:
    return cls.Params.model_validate(raw)


def describe() -> list[dict[str, Any]]:
    """For `prefdesk plugins`: each plugin's name, source and parameters with defaults."""
    rows = []
    for name, ep in sorted(available().items()):
        row: dict[str, Any] = {"name": name, "entry_point": ep.value}
        try:
            cls = ep.load()
            row["doc"] = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            row["params"] = {
                k: {"default": f.default, "type": getattr(f.annotation, "__name__", str(f.annotation))}
                for k, f in cls.Params.model_fields.items()
            }
        except Exception as exc:  # a broken third-party plugin must not hide the others
            row["error"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
    return rows
