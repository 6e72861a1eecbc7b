"""Opening and closing the MLflow run around a flow run (plain functions, not tasks).

They live here rather than in the flow so that flows/ talks to tasks/ only, as the layers say.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from prefdesk.config import PrefdeskConfig, home, load_config
from prefdesk.tracking import Tracker, end_run, start_run


def new_run_dir() -> str:
    return str(home() / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")


def open_run(config_path: str | None, overrides: list[str] | None, run_dir: str, flow_run_id: str) -> tuple[PrefdeskConfig, str]:
    """The config, and a new MLflow run that holds it as parameters."""
    cfg = load_config(config_path, overrides)
    run_id = start_run(cfg.registry.experiment, run_name=f"nightly-{cfg.train.optimizer}",
                       tags={"prefdesk.flow_run_id": flow_run_id, "prefdesk.run_dir": run_dir})
    try:
        Tracker(run_id).log_params(cfg.flatten())
    except Exception:
        end_run(run_id, "FAILED")
        raise
    return cfg, run_id


def close_run(run_id: str, run_dir: str, summary: dict[str, Any], status: str) -> None:
    """Write summary.json (the CLI prints it), attach it to the run, end the run."""
    try:
        path = Path(run_dir) / "summary.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2, default=str))
        Tracker(run_id).log_artifact(str(path))
    finally:
        end_run(run_id, status)  # never leave the run RUNNING, whatever failed above
