"""The nightly preference-tuning flow: ingest -> validate -> train -> evaluate -> gate -> register.

Reads like the DAG. Tasks exchange file paths and plain dicts only; the MLflow run id is
passed explicitly because MLflow's active run is thread-local.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from tasks.evaluate import evaluate
from tasks.gate import gate
from tasks.ingest import ingest
from tasks.register import register
from tasks.run import close_run, new_run_dir, open_run
from tasks.train import train
from tasks.validate import validate


class DataGateFailed(RuntimeError):
    """The data desk refused tonight's pairs; nothing was trained or promoted."""


@flow(name="prefdesk-nightly", log_prints=True)
def nightly(config_path: str | None = None, overrides: list[str] | None = None, run_dir: str | None = None) -> dict[str, Any]:
    run_dir = run_dir or new_run_dir()
    cfg, run_id = open_run(config_path, overrides, run_dir, str(flow_run.id or ""))
    config = cfg.model_dump(mode="json")
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
        close_run(run_id, run_dir, summary, status)
