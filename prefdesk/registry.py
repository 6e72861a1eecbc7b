"""The MLflow Model Registry side: register a candidate, move aliases, keep the reasons.

Aliases, not the deprecated stages: every candidate becomes `challenger`; `champion` moves
only to a version whose gates all passed. The gate verdicts live on the version as tags, so
`prefdesk promote` can refuse a failed version without re-running anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefdesk.gates import GateReport
from prefdesk.tracking import client

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


def _ensure_model(c, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(name)
    except MlflowException:
        c.create_registered_model(
            name, description="LoRA adapters tuned by prefdesk; `champion` passed every gate."
        )


def register_candidate(run_id: str, artifact_path: str, model_name: str, gates: GateReport, promote: bool) -> Registration:
    c = client()
    _ensure_model(c, model_name)
    run = c.get_run(run_id)
    source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
    tags = {"gate_all": "1" if gates.passed else "0", "suspected_reward_hacking": str(gates.suspected_reward_hacking).lower()}
    for r in gates.results:
        tags[f"gate.{r.name}"] = ("pass: " if r.passed else "FAIL: ") + r.reason
    if gates.notes:
        tags["notes"] = " | ".join(gates.notes)
    mv = c.create_model_version(model_name, source=source, run_id=run_id, tags=tags,
                                description="gates passed" if gates.passed else "gates failed: " + ", ".join(r.name for r in gates.failed))
    c.set_registered_model_alias(model_name, CHALLENGER, mv.version)
    promoted = False
    if gates.passed and promote:
        c.set_registered_model_alias(model_name, CHAMPION, mv.version)
        promoted = True
    aliases = [CHALLENGER] + ([CHAMPION] if promoted else [])
    return Registration(model_name, str(mv.version), promoted, aliases)


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
