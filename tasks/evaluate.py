from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from prefdesk.config import PrefdeskConfig
from prefdesk.drift import DRIFT_NAMES, OPTIONAL_NAMES, evaluate_adapter
from prefdesk.tasks.common import config_of, tracker_of


def reward_model_of(cfg: PrefdeskConfig, run_dir: str | Path) -> str | None:
    """The learned reward model this run trained (train.json artifacts), else the one it was given."""
    path = Path(run_dir) / "train.json"
    if path.exists():
        try:
            artifacts = json.loads(path.read_text()).get("artifacts") or {}
        except (json.JSONDecodeError, AttributeError) as exc:
            raise ValueError(f"{path}: expected a JSON object with 'artifacts' ({exc})") from exc
        if artifacts.get("reward_model"):
            return str(artifacts["reward_model"])
    return cfg.train.reward_model


# no retries: minutes of generation that fail again the same way (a bug, out of memory); its
# tracking calls already go through MLflow's own HTTP retries
@task(name="evaluate drift", cache_policy=NO_CACHE)
def evaluate(adapter_path: str, config: dict[str, Any], run_dir: str, run_id: str) -> str:
    """Policy against reference on held-out prompts; returns the drift.json path."""
    cfg = config_of(config)
    log = get_run_logger()
    reward_model = reward_model_of(cfg, run_dir)
    if reward_model:
        log.info("evaluate: scoring both sides' answers with the reward model %s", reward_model)
    result = evaluate_adapter(cfg, adapter_path, reward_model=reward_model)
    metrics_path, samples_path = result.write(Path(run_dir) / "eval")
    tracker = tracker_of(run_id)
    tracker.log_metrics(result.metrics)
    tracker.log_artifact(str(metrics_path), "eval")
    tracker.log_artifact(str(samples_path), "eval")
    m = result.metrics
    names = [*DRIFT_NAMES, *(n for n in OPTIONAL_NAMES if f"drift/{n}" in m)]
    create_table_artifact(
        key="drift",
        table=[{"metric": f"drift/{n}", "policy": round(m[f"drift/{n}"], 4), "reference": round(m[f"reference/drift/{n}"], 4)}
               for n in names],
        description="held-out drift, policy vs reference on the same prompts",
    )
    log.info("evaluate: " + ", ".join(f"{n}={m[f'drift/{n}']:.4g}" for n in names))
    return str(metrics_path)
