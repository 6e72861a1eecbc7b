from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from prefdesk.gates import evaluate_gates
from prefdesk.registry import champion_metrics
from tasks.common import config_of, table_rows, tracker_of


# retries: it reads the champion from the tracking server and writes to it; the gates are pure
# functions of the figures, so a retry cannot pass a gate that failed
@task(name="gate", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=15)
def gate(drift_path: str, config: dict[str, Any], run_dir: str, run_id: str) -> str:
    """Every gate against the drift budget; returns the gates.json path."""
    cfg = config_of(config)
    metrics = json.loads(Path(drift_path).read_text())
    report = evaluate_gates(cfg.gates, metrics, champion_metrics(cfg.registry.model_name))
    tracker = tracker_of(run_id)
    tracker.log_metrics(report.metrics())
    path = report.write(Path(run_dir) / "gates.json")
    tracker.log_artifact(str(path))
    create_table_artifact(
        key="gates",
        table=table_rows([{"gate": r.name, "passed": r.passed, "reason": r.reason} for r in report.results]),
        description="all gates passed" if report.passed else "failed: " + ", ".join(r.name for r in report.failed),
    )
    log = get_run_logger()
    for r in report.results:
        (log.info if r.passed else log.warning)("gate %s: %s", r.name, r.reason)
    for note in report.notes:
        log.warning(note)
    return str(path)
