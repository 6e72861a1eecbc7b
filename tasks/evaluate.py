from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from prefdesk.drift import DRIFT_NAMES, evaluate_adapter
from tasks.common import config_of, tracker_of


# no retries: minutes of generation that fail again the same way (a bug, out of memory); its
# tracking calls already go through MLflow's own HTTP retries
@task(name="evaluate drift", cache_policy=NO_CACHE)
def evaluate(adapter_path: str, config: dict[str, Any], run_dir: str, run_id: str) -> str:
    """Policy against reference on held-out prompts; returns the drift.json path."""
    cfg = config_of(config)
    result = evaluate_adapter(cfg, adapter_path)
    metrics_path, samples_path = result.write(Path(run_dir) / "eval")
    tracker = tracker_of(run_id)
    tracker.log_metrics(result.metrics)
    tracker.log_artifact(str(metrics_path), "eval")
    tracker.log_artifact(str(samples_path), "eval")
    m = result.metrics
    create_table_artifact(
        key="drift",
        table=[{"metric": f"drift/{n}", "policy": round(m[f"drift/{n}"], 4), "reference": round(m[f"reference/drift/{n}"], 4)}
               for n in DRIFT_NAMES],
        description="held-out drift, policy vs reference on the same prompts",
    )
    get_run_logger().info("evaluate: " + ", ".join(f"{n}={m[f'drift/{n}']:.4g}" for n in DRIFT_NAMES))
    return str(metrics_path)
