"""What every task shares: the config travels as a plain dict, MLflow writes go by run id."""

from __future__ import annotations

from typing import Any

from prefdesk.config import PrefdeskConfig
from prefdesk.tracking import Tracker


def config_of(raw: dict[str, Any]) -> PrefdeskConfig:
    return PrefdeskConfig.model_validate(raw)


def tracker_of(run_id: str) -> Tracker:
    return Tracker(run_id)


def table_rows(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Prefect table artifacts want flat JSON scalars."""
    return [{k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v)) for k, v in row.items()} for row in items]
