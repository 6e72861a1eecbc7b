"""Opening and closing the MLflow run around a flow run (plain functions, not tasks).

They live here rather than in the flow so that flows/ talks to tasks/ only, as the layers say.
The MLflow side is `prefdesk.tracking.tracked_run`, the same helper `prefdesk train` uses;
this adds what only a flow run has: the summary file and the Prefect flow runs of dead processes.
"""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from prefdesk.atomic import write_json
from prefdesk.config import PrefdeskConfig, home, load_config
from prefdesk.lifecycle import cancel_reason
from prefdesk.redact import redact
from prefdesk.tracking import Tracker, check_store, quick_http, reap_stale_runs, tracked_run

log = logging.getLogger("prefdesk")


def new_run_dir() -> str:
    return str(home() / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")


def crash_flow_runs(flow_run_ids: list[str], why: str) -> None:
    """Mark Prefect flow runs still RUNNING (or PENDING) as Crashed: their process is gone."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    with get_client(sync_client=True) as c:
        for fid in flow_run_ids:
            try:
                state = c.read_flow_run(uuid.UUID(fid)).state
                if state is not None and not state.is_final():
                    c.set_flow_run_state(uuid.UUID(fid), Crashed(message=why), force=True)
            except Exception as exc:  # a flow run of another Prefect server: nothing to mark here
                log.info("flow run %s not marked: %s", fid, redact(exc))


def reap_stale(experiment: str, current_flow_run: str) -> list[str]:
    """Runs left RUNNING by a killed nightly (kill -9, power cut): KILLED in MLflow, Crashed in
    Prefect. Returns their MLflow run ids."""
    from prefdesk.tracking import ensure_experiment

    stale = reap_stale_runs(ensure_experiment(experiment))
    flow_runs = [r.data.tags["prefdesk.flow_run_id"] for r in stale
                 if r.data.tags.get("prefdesk.flow_run_id") not in (None, "", current_flow_run)]
    for r in stale:
        log.warning("MLflow run %s (%s) was left RUNNING by a process that is gone: marked KILLED",
                    r.info.run_id, r.info.run_name)
    if flow_runs:
        crash_flow_runs(flow_runs, "its process died (marked by the next nightly run)")
    return [r.info.run_id for r in stale]


def _run_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's logger of the flow run (its UI shows it), or ours outside a run."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return log


def _write_summary(run_dir: str, summary: dict[str, Any], tracker: Tracker, failing: bool) -> None:
    """summary.json (the CLI prints it), written atomically and attached to the run."""
    path = write_json(Path(run_dir) / "summary.json", summary)
    try:
        if failing:  # a cancelled or failing run must not wait minutes on a server that is gone
            with quick_http(5):
                tracker.log_artifact(str(path))
        else:
            tracker.log_artifact(str(path))
    except Exception as exc:
        if not failing:
            raise
        log.warning("summary not attached to MLflow run %s: %s", tracker.run_id, redact(exc))


@contextmanager
def open_run(config_path: str | None, overrides: list[str] | None, run_dir: str,
             flow_run_id: str) -> Iterator[tuple[PrefdeskConfig, str, dict[str, Any]]]:
    """The config, a new MLflow run that holds it as parameters, and the summary to fill.

    However the block ends, summary.json is written and the run ended: FINISHED, FAILED (the
    status says why), or KILLED with status 'cancelled: SIGTERM' on a signal.
    """
    cfg = load_config(config_path, overrides)
    check_store(cfg.registry.experiment)  # fail fast here too when Prefect, not the CLI, starts the flow
    killed = reap_stale(cfg.registry.experiment, flow_run_id)
    summary: dict[str, Any] = {"run_id": None, "run_dir": run_dir, "flow_run_id": flow_run_id,
                               "optimizer": cfg.train.optimizer, "model": cfg.model.name,
                               "experiment": cfg.registry.experiment, "status": "running"}
    tags = {"prefdesk.flow_run_id": flow_run_id, "prefdesk.run_dir": run_dir}
    if killed:  # a resumed run continues their training curve: say where its start is
        tags["prefdesk.after_killed_runs"] = ",".join(killed)
    with tracked_run(cfg.registry.experiment, run_name=f"nightly-{cfg.train.optimizer}", tags=tags,
                     params=cfg.flatten()) as tracker:
        summary["run_id"] = tracker.run_id
        failing = True
        try:
            yield cfg, tracker.run_id, summary
            failing = False
        except Exception as exc:
            if summary["status"] == "running":
                summary["status"] = f"failed: {type(exc).__name__}: {redact(exc)}"
            _run_logger().error(summary["status"])
            raise
        except BaseException as exc:
            summary["status"] = f"cancelled: {cancel_reason(exc)}"
            raise
        finally:
            summary.setdefault("promoted", False)
            _write_summary(run_dir, summary, tracker, failing)
