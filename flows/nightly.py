"""The nightly preference-tuning flow: ingest -> validate -> train -> evaluate -> gate -> register.

Reads like the DAG. Tasks exchange file paths and plain dicts only; the MLflow run id is
passed explicitly because MLflow's active run is thread-local.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from prefdesk.config import home, load_config
from prefdesk.tracking import end_run, start_run, Tracker
from tasks.evaluate import evaluate
from tasks.gate import gate
from tasks.ingest import ingest
from tasks.register import register
from tasks.train import train
from tasks.validate import validate


class DataGateFailed(RuntimeError):
    """The data desk refused tonight's pairs; nothing was trained or promoted."""


def new_run_dir() -> str:
    return str(home() / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")


def _write_summary(run_dir: str, summary: dict[str, Any]) -> None:
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / "summary.json").write_text(json.dumps(summary, indent=2, default=str))


@flow(name="prefdesk-nightly", log_prints=True)
def nightly(config_path: str | None = None, overrides: list[str] | None = None, run_dir: str | None = None) -> dict[str, Any]:
    cfg = load_config(config_path, overrides)
    config = cfg.model_dump(mode="json")
    run_dir = run_dir or new_run_dir()
    run_id = start_run(cfg.registry.experiment, run_name=f"nightly-{cfg.train.optimizer}",
                       tags={"prefdesk.flow_run_id": str(flow_run.id or ""), "prefdesk.run_dir": run_dir})
    Tracker(run_id).log_params(cfg.flatten())
    summary: dict[str, Any] = {"run_id": run_id, "run_dir": run_dir, "flow_run_id": str(flow_run.id or ""),
                               "optimizer": cfg.train.optimizer, "model": cfg.model.name,
                               "experiment": cfg.registry.experiment, "status": "running"}
    status = "FAILED"
    try:
        files = ingest(cfg.data.train, run_dir)
        data = validate(files, config, run_dir, run_id)
        summary["data"] = {k: data[k] for k in ("rows_in", "accepted", "quarantined", "passed", "failed", "quarantine_path")}
        if not data["passed"] and cfg.data.fail_on_data_gates:
            summary["status"] = "stopped: data gates failed"
            raise DataGateFailed("data gates failed: " + "; ".join(data["failed"]))

        adapter = train(data["accepted_path"], config, run_dir, run_id)
        drift_path = evaluate(adapter, config, run_dir, run_id)
        gates_path = gate(drift_path, config, run_dir, run_id)
        reg = register(adapter, gates_path, config, run_id)

        gates = json.loads(Path(gates_path).read_text())
        summary.update(
            drift=json.loads(Path(drift_path).read_text()),
            gates=gates["results"],
            gates_passed=gates["passed"],
            suspected_reward_hacking=gates["suspected_reward_hacking"],
            notes=gates["notes"],
            registry=reg,
            promoted=reg["promoted"],
            status="promoted to champion" if reg["promoted"] else "registered as challenger, not promoted",
        )
        status = "FINISHED"
        return summary
    except Exception as exc:
        if summary["status"] == "running":
            summary["status"] = f"failed: {type(exc).__name__}: {exc}"
        summary.setdefault("promoted", False)
        get_run_logger().error(summary["status"])
        raise
    finally:
        _write_summary(run_dir, summary)
        Tracker(run_id).log_artifact(str(Path(run_dir) / "summary.json"))
        end_run(run_id, status)
