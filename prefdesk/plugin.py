"""The optimizer plugin contract and its registry (entry-point group `prefdesk.optimizers`).

A plugin is a class with a `name`, a pydantic `Params` model (hyperparameters only), the
set of things it `needs` from the run, and one method:

    fit(ctx: RunContext, params: Params) -> TrainResult

`ctx` (prefdesk.context) carries everything that is not a hyperparameter: the policy and
its named adapters, the data the plugin asked for, the sampler, the judge, the tracker,
the output folder, the device and dtype, and the checkpointer. Keeping run settings out of
`Params` is what lets a checkpoint's identity be "the plugin's params" with no hand-kept
exclusion list, and lets the config validate `train.params` against `Params` as it loads.

`needs` is checked before any work (by the CLI and by the flow), so a plugin that wants a
reward model in a run that has none fails in the first second with the need named, not
after an hour of data preparation. Built-ins register through the same entry-point group
as third-party packages, so `prefdesk plugins` shows exactly what an environment can run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from prefdesk.context import RunContext

GROUP = "prefdesk.optimizers"

# What a plugin may ask the run for, and what each means.
NEEDS: dict[str, str] = {
    "pairs": "chosen/rejected pairs (data.train)",
    "prompts": "prompt-only rows (data.prompts, or the prompts of the training pairs)",
    "sampler": "generation from the policy with per-token log-probs",
    "judge": "a judge that scores and compares answers (train.judge)",
    "reward_model": "a learned reward model (train.reward_model, or a registered one)",
}


class TrainParams(BaseModel):
    """Hyperparameters every optimizer shares; a plugin's `Params` extends this.

    Run settings (seed, token limit, output folder, resume, checkpoint cadence, progress,
    reference cache) are not here: they live in the config and reach a plugin through
    `ctx.settings`.
    """

    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(1e-4, gt=0, le=1.0)
    epochs: int = Field(1, ge=1, le=1000)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    batch_size: int = Field(4, ge=1, le=4096)
    grad_accum: int = Field(1, ge=1, le=4096)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)


@dataclass
class TrainResult:
    """What a plugin hands back.

    `artifacts` names what it produced (folders or files): `adapter` for the policy's LoRA
    adapter (what drift evaluates and the registry registers), `reward_model`, `value_head`.
    `metrics` are the run's averaged training figures (DESIGN names: `train/...`, `rm/...`,
    `ppo/...`, `rs/...`); `gated` are the figures the plugin wants the gates to see (also
    DESIGN names, e.g. `rm/pair_accuracy`, `rm/length_correlation`).
    """

    artifacts: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    gated: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def adapter_path(self) -> str:
        if "adapter" not in self.artifacts:
            raise KeyError("this optimizer produced no policy adapter (artifacts: " + ", ".join(self.artifacts) + ")")
        return self.artifacts["adapter"]


@runtime_checkable
class Optimizer(Protocol):
    name: ClassVar[str]
    Params: ClassVar[type[TrainParams]]
    needs: ClassVar[frozenset[str]]

    def fit(self, ctx: "RunContext", params: TrainParams) -> TrainResult: ...


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
    unknown = set(needs_of(cls)) - set(NEEDS)
    if unknown:
        raise PluginError(f"plugin {name!r} declares unknown needs {sorted(unknown)} (known: {', '.join(NEEDS)})")
    return cls


def needs_of(cls: type) -> frozenset[str]:
    """A plugin that declares nothing is a pair optimizer (the contract's first shape)."""
    return frozenset(getattr(cls, "needs", frozenset({"pairs"})))


def check_needs(cls: type, provided: set[str] | frozenset[str], where: dict[str, str] | None = None) -> None:
    """Raise PluginError naming every need of `cls` this run cannot meet (before any work)."""
    missing = sorted(needs_of(cls) - set(provided))
    if missing:
        how = "; ".join(f"{m}: {(where or {}).get(m) or NEEDS[m]}" for m in missing)
        raise PluginError(f"optimizer {cls.name!r} needs {', '.join(missing)}, which this run cannot provide ({how})")


def parse_params(cls: type, raw: dict[str, Any]) -> TrainParams:
    return cls.Params.model_validate(raw)


def describe() -> list[dict[str, Any]]:
    """For `prefdesk plugins`: each plugin's name, source, needs and parameters with defaults."""
    rows = []
    for name, ep in sorted(available().items()):
        row: dict[str, Any] = {"name": name, "entry_point": ep.value}
        try:
            cls = ep.load()
            row["doc"] = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            row["needs"] = sorted(needs_of(cls))
            row["params"] = {
                k: {"default": f.default, "type": getattr(f.annotation, "__name__", str(f.annotation)),
                    "description": f.description or ""}
                for k, f in cls.Params.model_fields.items()
            }
        except Exception as exc:  # a broken third-party plugin must not hide the others
            row["error"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
    return rows
