"""The MLflow Model Registry side: register a candidate, move aliases, keep the reasons.

Aliases, not the deprecated stages: every candidate becomes `challenger`; `champion` moves
only to a version whose gates all passed. The gate verdicts live on the version as tags, so
`prefdesk promote` can refuse a failed version without re-running anything. Each version
points at an MLflow logged model (prefdesk.mlflow_model), so it loads back by its URI.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prefdesk.gates import GateReport
from prefdesk.tracking import client

if TYPE_CHECKING:  # both import torch or mlflow.pyfunc; the alias helpers need neither
    from prefdesk.mlflow_model import CardFacts
    from prefdesk.models import BaseIdentity

CHALLENGER = "challenger"
CHAMPION = "champion"


class PromotionRefused(RuntimeError):
    pass


@dataclass
class Registration:
    model_name: str
    version: str
    promoted: bool
    aliases: list[str]
    model_uri: str | None = None  # the logged model (`models:/m-...`) the version points at


def _ensure_model(c, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(name)
    except MlflowException:
        c.create_registered_model(
            name, description="LoRA policies tuned by prefdesk; `champion` passed every gate. Load one with "
                               f"mlflow.pyfunc.load_model('models:/{name}@champion').predict(['a prompt'])."
        )


def card_facts(run_id: str, model_name: str, gates: GateReport, base: BaseIdentity) -> CardFacts:
    """The card's facts from what the run recorded: its optimizer and parameters, and the
    digest of its dataset input (the accepted pairs, logged by the data desk)."""
    from prefdesk.mlflow_model import CardFacts

    run = client().get_run(run_id)
    p = run.data.params
    digests = [d.dataset.digest for d in (run.inputs.dataset_inputs if run.inputs else [])
               if any(t.key == "mlflow.data.context" and t.value == "train" for t in d.tags)]
    return CardFacts(
        base=base, run_id=run_id, model_name=model_name, gates=gates, data_hash=digests[0] if digests else None,
        optimizer=run.data.tags.get("prefdesk.optimizer") or p.get("train.optimizer"),
        params={k.removeprefix("optimizer."): v for k, v in p.items() if k.startswith("optimizer.")},
    )


def register_candidate(run_id: str, adapter: str | Path, model_name: str, gates: GateReport, promote: bool,
                       base: BaseIdentity) -> Registration:
    """Log the adapter as an MLflow model of the run and register it as a new version.

    The version points at the logged model (`models:/m-...`), so `models:/NAME@champion`
    loads as a pyfunc anywhere prefdesk and the base are; the run also keeps the portable
    adapter folder as its `adapter` artifact.
    """
    from prefdesk.mlflow_model import ADAPTER, log_policy_model, portable_adapter
    from prefdesk.tracking import Tracker

    c = client()
    _ensure_model(c, model_name)
    facts = card_facts(run_id, model_name, gates, base)
    with tempfile.TemporaryDirectory() as tmp:
        portable = portable_adapter(adapter, Path(tmp) / ADAPTER, facts)
        Tracker(run_id).log_artifact(str(portable), ADAPTER)
        info = log_policy_model(run_id, portable, facts)
    mv = _new_version(c, model_name, info.model_uri, run_id, gates, promote,
                      {"base": base.name, "base_sha256": base.sha256}, model_id=info.model_id)
    _link_logged_model(c, info.model_id, model_name, mv.version)
    return Registration(model_name, mv.version, mv.promoted, mv.aliases, model_uri=info.model_uri)


def register_artifact(run_id: str, artifact_path: str, model_name: str, gates: GateReport, promote: bool,
                      description: str = "") -> Registration:
    """A run artifact (e.g. a reward model folder) as a new version of its own registered
    model, with the same alias rules and gate tags as a policy."""
    from mlflow.exceptions import MlflowException

    c = client()
    try:
        c.get_registered_model(model_name)
    except MlflowException:
        c.create_registered_model(model_name, description=description)
    source = f"{c.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
    mv = _new_version(c, model_name, source, run_id, gates, promote, {})
    return Registration(model_name, mv.version, mv.promoted, mv.aliases)


def _new_version(c, model_name: str, source: str, run_id: str, gates: GateReport, promote: bool,
                 extra_tags: dict[str, str], model_id: str | None = None) -> Registration:
    """Create the version with the gate verdicts as tags; `challenger` always, `champion` only
    when every gate passed."""
    tags = {"gate_all": "1" if gates.passed else "0", "suspected_reward_hacking": str(gates.suspected_reward_hacking).lower(),
            **extra_tags}
    for r in gates.results:
        tags[f"gate.{r.name}"] = ("pass: " if r.passed else "FAIL: ") + r.reason
    if gates.notes:
        tags["notes"] = " | ".join(gates.notes)
    kwargs = {"model_id": model_id} if model_id else {}
    mv = c.create_model_version(model_name, source=source, run_id=run_id, tags=tags, **kwargs,
                                description="gates passed" if gates.passed else "gates failed: " + ", ".join(r.name for r in gates.failed))
    c.set_registered_model_alias(model_name, CHALLENGER, mv.version)
    promoted = bool(gates.passed and promote)
    if promoted:
        c.set_registered_model_alias(model_name, CHAMPION, mv.version)
    return Registration(model_name, str(mv.version), promoted, [CHALLENGER] + ([CHAMPION] if promoted else []))


def _link_logged_model(c, model_id: str, model_name: str, version: str) -> None:
    """The logged model lists its registered versions, as `mlflow.register_model` records it."""
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    known = json.loads(c.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
    c.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(known + [{"name": model_name, "version": version}])})


def registered_adapter(model_name: str, version: str | None = None, alias: str | None = None) -> Path:
    """The adapter folder of a registered version (by number or alias), downloaded."""
    from prefdesk.mlflow_model import download_adapter

    if (version is None) == (alias is None):
        raise ValueError("give exactly one of version, alias")
    return download_adapter(f"models:/{model_name}@{alias}" if alias else f"models:/{model_name}/{version}")


def promote_version(model_name: str, version: str) -> Registration:
    """Move `champion` to a version, only if its recorded gates all passed."""
    from mlflow.exceptions import MlflowException

    c = client()
    try:
        mv = c.get_model_version(model_name, str(version))
    except MlflowException as exc:
        raise PromotionRefused(f"{model_name} has no version {version}") from exc
    if mv.tags.get("gate_all") != "1":
        failed = [f"{k[5:]}: {v[6:]}" for k, v in sorted(mv.tags.items()) if k.startswith("gate.") and v.startswith("FAIL")]
        raise PromotionRefused(
            f"{model_name} version {version} failed its gates and cannot be champion: " + ("; ".join(failed) or "no gate record")
        )
    c.set_registered_model_alias(model_name, CHAMPION, str(version))
    return Registration(model_name, str(version), True, [CHAMPION])


def alias_version(model_name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client().get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def champion_metrics(model_name: str) -> dict[str, float] | None:
    """The drift figures of the current champion's run, for gates relative to the champion."""
    from mlflow.exceptions import MlflowException

    c = client()
    try:
        mv = c.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None
    if not mv.run_id:
        return None
    return dict(c.get_run(mv.run_id).data.metrics)
