"""The nightly preference-tuning flow: ingest -> validate -> train -> evaluate -> gate -> register.

With `data.inbox` the ingest step takes tonight's new files into the held store and the
night trains on the held window; a night without new pairs ends there with status
"skipped: ..." unless `data.on_no_new_pairs=retrain`.

Reads like the DAG. Tasks exchange file paths and plain dicts only; the MLflow run id is
passed explicitly because MLflow's active run is thread-local. `open_run` owns the run's
ending: the summary file and the MLflow status, however the flow stops (error, SIGTERM).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from prefdesk.tasks.evaluate import evaluate
from prefdesk.tasks.gate import gate
from prefdesk.tasks.ingest import ingest, ingest_inbox
from prefdesk.tasks.register import register
from prefdesk.tasks.run import new_run_dir, open_run
from prefdesk.tasks.train import train
from prefdesk.tasks.validate import validate


class DataGateFailed(RuntimeError):
    """The data desk refused tonight's pairs; nothing was trained or promoted."""


@flow(name="prefdesk-nightly", log_prints=True)
def nightly(config_path: str | None = None, overrides: list[str] | None = None, run_dir: str | None = None) -> dict[str, Any]:
    run_dir = run_dir or new_run_dir()
    with open_run(config_path, overrides, run_dir, str(flow_run.id or "")) as (cfg, run_id, summary):
        config = cfg.model_dump(mode="json")
        if cfg.data.inbox:
            night = ingest_inbox(config, run_dir, run_id)
            summary["inbox"] = {k: night[k] for k in ("night", "pairs_new", "pairs_held", "window_pairs",
                                                      "window_hash", "duplicates", "unreadable", "quarantine_path",
                                                      "says")}
            if not night["pairs_new"] and (cfg.data.on_no_new_pairs == "skip" or not night["window_pairs"]):
                summary["status"] = ("skipped: no new pairs tonight, nothing trained or registered"
                                     if night["window_pairs"] else "skipped: no pairs held yet, nothing trained")
                return summary
            # The window is a canonical pair file: read it as such, whatever the inbox's layout was.
            window_config = {**config, "data": {**config["data"], "format": "auto", "columns": {}}}
            data = validate([night["window_path"]], window_config, run_dir, run_id, version=night)
        else:
            files = ingest(cfg.data.train, run_dir)
            data = validate(files, config, run_dir, run_id)
        summary["data"] = {k: data[k] for k in ("rows_in", "accepted", "quarantined", "passed", "failed", "quarantine_path")}
        if data.get("reused_from"):
            summary["data"]["reused_from"] = data["reused_from"]
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
        return summary
