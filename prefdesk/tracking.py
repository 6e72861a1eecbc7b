"""MLflow tracking without the thread-local active run.

Prefect may run a task in another thread, where `mlflow.active_run()` is empty; so every
write goes through an `MlflowClient` with an explicit run id.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from prefdesk.config import home


def tracking_uri(state: Path | None = None) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    state = state or home()
    state.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{state / 'mlflow.db'}"


def artifact_root(state: Path | None = None) -> str:
    return str((state or home()) / "mlartifacts")


def client():
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(name: str) -> str:
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return c.create_experiment(name, artifact_location=Path(artifact_root()).as_uri())


class Tracker:
    """Logs to one MLflow run by id; with no run id (tests, a bare `fit`) it logs nothing."""

    def __init__(self, run_id: str | None = None):
        self.run_id = run_id
        self._client = client() if run_id else None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        if self._client is None or not clean:
            return
        from mlflow.entities import Metric
        import time

        ts = int(time.time() * 1000)
        self._client.log_batch(
            self.run_id, metrics=[Metric(k, v, ts, step or 0) for k, v in clean.items()]
        )

    def log_params(self, params: dict[str, object]) -> None:
        if self._client is None:
            return
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._client.log_batch(self.run_id, params=items[i : i + 100])

    def set_tags(self, tags: dict[str, str]) -> None:
        if self._client is None:
            return
        for k, v in tags.items():
            self._client.set_tag(self.run_id, k, str(v))

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        if self._client is None:
            return
        if Path(path).is_dir():
            self._client.log_artifacts(self.run_id, path, artifact_path)
        else:
            self._client.log_artifact(self.run_id, path, artifact_path)


def start_run(experiment: str, run_name: str | None = None, tags: dict[str, str] | None = None) -> str:
    """Create a run explicitly (not `mlflow.start_run`), so any thread can log to it by id."""
    c = client()
    run = c.create_run(ensure_experiment(experiment), run_name=run_name, tags=tags or {})
    return run.info.run_id


def end_run(run_id: str, status: str = "FINISHED") -> None:
    client().set_terminated(run_id, status=status)
