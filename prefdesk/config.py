"""Configuration: pydantic models that a YAML file mirrors, plus `--set a.b=c` overrides.

One config object travels through the whole flow so that a run can be reproduced from the
parameters MLflow logged for it (`flatten()` gives those parameters).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from prefdesk.labels import parse_label_map

EMBEDDED_MODEL = "smollm2-135m-instruct"
EMBEDDED_PAIRS = "embedded:default"
EMBEDDED_EVAL = "embedded:eval"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraSettings(_Strict):
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"


class ModelSettings(_Strict):
    name: str = Field(
        EMBEDDED_MODEL,
        description="'smollm2-135m-instruct' (embedded), 'tiny' (random, tests) or a local HF folder",
    )
    quantization: Literal["auto", "none", "4bit"] = Field(
        "auto", description="auto: QLoRA 4-bit when CUDA and bitsandbytes are there, else LoRA"
    )
    dtype: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 where the hardware runs it fast (AMX, CUDA), else fp32"
    )
    lora: LoraSettings = LoraSettings()


class CheckThresholds(_Strict):
    """Data-gate thresholds: a check fails when its figure passes the bound."""

    max_quarantined_share: float = 0.2
    max_schema_share: float = 0.1
    max_degenerate_share: float = 0.0
    max_duplicate_share: float = 0.1
    max_contradiction_share: float = 0.02
    max_length_bias: float = 0.85
    max_shallow_feature_accuracy: float = 0.9
    max_refusal_bias: float = 0.5
    max_boilerplate_share: float = 0.3
    min_agreement: float = 0.5
    min_kappa: float = 0.2
    max_eval_leakage: int = 0


class DataSettings(_Strict):
    train: list[str] = Field(default_factory=lambda: [EMBEDDED_PAIRS])
    prompts: list[str] = Field(
        default_factory=list,
        description="prompt-only files for sampling optimizers (rm_ppo, rejection_sampling); "
        "empty: the prompts of the training pairs",
    )
    format: str = "auto"
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="column mapping for other tabular layouts: prompt, chosen, rejected, "
        "response1, response2, label",
    )
    label_map: dict[str, Literal["first", "second", "tie"]] = Field(
        default_factory=dict,
        description="what the labels of a pairwise file mean: value as written -> first, second or tie, "
        "e.g. {0: first, 1: second, 2: tie} or '0=first,1=second,2=tie'; needed unless the format is "
        "known (PandaLM, LLMBar)",
    )
    eval: str = EMBEDDED_EVAL
    max_length: int = 512
    too_long: Literal["quarantine", "truncate"] = "quarantine"
    low_agreement: Literal["keep", "quarantine"] = "quarantine"
    limit: int | None = Field(None, description="use at most this many accepted pairs")
    checks: CheckThresholds = CheckThresholds()
    fail_on_data_gates: bool = True

    @field_validator("label_map", mode="before")
    @classmethod
    def _normalise_label_map(cls, value: Any) -> dict[str, str]:
        return parse_label_map(value)


class TrainSettings(_Strict):
    optimizer: str = "dpo"
    params: dict[str, Any] = Field(
        default_factory=dict, description="the optimizer plugin's own parameters"
    )
    checkpoint_every: int = Field(20, ge=0, description="save a resumable checkpoint every N optimizer steps (0: never)")
    judge: str = Field("rubric", description="judge for optimizers that need one (entry point in prefdesk.judges)")
    reward_model: str | None = Field(
        None, description="a learned reward model for optimizers that need one: a folder, or models:/NAME@ALIAS"
    )


class EvalSettings(_Strict):
    max_new_tokens: int = 64
    max_prompts: int | None = None
    factuality: str | None = Field(
        None, description="extra factuality set (TruthfulQA mc_task.json); embedded set always used"
    )
    refusal_sets: list[str] = Field(
        default_factory=list, description="extra refusal sets (XSTest csv, CoCoNot jsonl)"
    )
    batch_size: int = 8


class Gate(_Strict):
    """A bound on one drift metric: absolute, relative to the reference's figure on the same
    prompts, or relative to the current champion's (so a nightly cannot slowly slide)."""

    metric: str
    op: Literal["<=", ">="]
    bound: float
    relative_to: Literal["absolute", "reference", "champion"] = "absolute"


def default_gates() -> dict[str, Gate]:
    """The drift budget. Each bound names a failure mode the tool exists to catch."""
    return {
        # KL collapse / runaway: the leash.
        "kl_budget": Gate(metric="drift/kl_per_token", op="<=", bound=0.1),
        # No movement: a run that changed nothing is not a candidate.
        "moved": Gate(metric="drift/kl_per_token", op=">=", bound=1e-4),
        # Verbosity inflation (and collapse to one-liners).
        "length_inflation": Gate(metric="drift/length_ratio", op="<=", bound=1.3),
        "length_collapse": Gate(metric="drift/length_ratio", op=">=", bound=0.6),
        # Calibrated refusal: neither more blanket refusals nor fewer needed ones.
        "over_refusal": Gate(
            metric="drift/over_refusal_rate", op="<=", bound=0.05, relative_to="reference"
        ),
        "under_refusal": Gate(
            metric="drift/under_refusal_rate", op="<=", bound=0.05, relative_to="reference"
        ),
        # Factuality measured outside the reward: style wins must not hide it.
        "factuality": Gate(
            metric="drift/factuality_mc_accuracy", op=">=", bound=-0.02, relative_to="reference"
        ),
        # The preference itself must be learnt on held-out pairs.
        "pair_accuracy": Gate(
            metric="drift/pair_accuracy", op=">=", bound=0.0, relative_to="reference"
        ),
        "win_rate": Gate(metric="drift/win_rate", op=">=", bound=0.5),
    }


class RegistrySettings(_Strict):
    model_name: str = "prefdesk-policy"
    experiment: str = "prefdesk"
    promote: bool = True


class PrefdeskConfig(_Strict):
    seed: int = Field(0, ge=0, description="the one seed: LoRA init, data order, sampling")
    model: ModelSettings = ModelSettings()
    data: DataSettings = DataSettings()
    train: TrainSettings = TrainSettings()
    eval: EvalSettings = EvalSettings()
    gates: dict[str, Gate] = Field(default_factory=default_gates)
    registry: RegistrySettings = RegistrySettings()

    def flatten(self) -> dict[str, str]:
        """Dotted parameters for MLflow (values as strings, gates included)."""
        out: dict[str, str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                out[prefix] = str(value)

        walk("", self.model_dump(mode="json"))
        return out


def home() -> Path:
    """Where runs, the MLflow store and caches live (`PREFDESK_HOME`, else ./.prefdesk)."""
    return Path(os.environ.get("PREFDESK_HOME", ".prefdesk")).resolve()


def model_cache_dir() -> Path:
    base = os.environ.get("PREFDESK_CACHE") or Path.home() / ".cache" / "prefdesk"
    return Path(base)


def _parse_scalar(text: str) -> Any:
    return yaml.safe_load(text) if text != "" else ""


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b.c=value` to a nested dict; the value is read as YAML (so 3, true, [a])."""
    if "=" not in assignment:
        raise ValueError(f"--set expects KEY=VALUE, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {key}: {part!r} is not a section")
    node[parts[-1]] = _parse_scalar(raw)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PrefdeskConfig:
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{p}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{p}: the config must be a mapping at the top level")
    for assignment in overrides or []:
        apply_override(data, assignment)
    if "gates" in data:
        # A file or --set overrides single gates (or drops one with null); the rest stays.
        merged = {k: g.model_dump() for k, g in default_gates().items()}
        for name, gate in (data["gates"] or {}).items():
            if gate is None:
                merged.pop(name, None)
            elif not isinstance(gate, dict):
                raise ValueError(f"gates.{name}: expected a mapping (metric, op, bound, relative_to) or null, "
                                 f"got {gate!r}; to change one field use gates.{name}.bound=...")
            else:
                merged[name] = {**merged.get(name, {}), **gate}
        data["gates"] = merged
    return PrefdeskConfig.model_validate(data)
