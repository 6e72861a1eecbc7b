from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from prefdesk.figures import log_history_figure
from prefdesk.gates import GateReport
from prefdesk.models import base_identity
from prefdesk.registry import register_candidate
from prefdesk.tasks.common import config_of, tracker_of


# retries: all of it is tracking-server I/O (log the model, create the version, move aliases);
# promotion is refused by the gates' figures, never by a transient error, so nothing is hidden
@task(name="register", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=15)
def register(adapter_path: str, gates_path: str, config: dict[str, Any], run_id: str) -> dict[str, Any]:
    """New registry version (an MLflow model of the run) as `challenger`; `champion` only
    when every gate passed."""
    cfg = config_of(config)
    gates = GateReport.read(gates_path)
    base = base_identity(cfg.model, cfg.seed)
    reg = register_candidate(run_id, adapter_path, cfg.registry.model_name, gates, cfg.registry.promote, base)
    tracker_of(run_id).set_tags({"prefdesk.model_version": reg.version, "prefdesk.promoted": str(reg.promoted).lower(),
                                 "prefdesk.model_uri": reg.model_uri or ""})
    get_run_logger().info("register: %s version %s (%s), aliases %s", reg.model_name, reg.version, reg.model_uri,
                          ", ".join(reg.aliases))
    log_history_figure(run_id, cfg.registry.model_name, Path(gates_path).parent)  # the same figures across versions
    return asdict(reg)
