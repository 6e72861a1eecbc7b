from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from prefdesk.atomic import write_text
from prefdesk.pairs import read_pairs_jsonl
from prefdesk.tracking import client
from tasks.common import config_of, table_rows, tracker_of
from validations.desk import run_for_config


def _log_dataset(run_id: str, accepted_path: str, digest: str, sources: list[str],
                 version: dict[str, Any] | None = None) -> None:
    """The accepted pairs as the run's dataset input, so the UI shows what trained this model.

    With an inbox, `version` (the night's figures) goes on the input as tags: the dataset
    hash of the held window, pairs new tonight, pairs held, the night; the same figures are
    metrics (`data/pairs_new`, `data/pairs_held`) for comparing nights.
    """
    import mlflow.data
    import pandas as pd
    from mlflow.entities import DatasetInput, InputTag

    pairs = read_pairs_jsonl(accepted_path)
    df = pd.DataFrame(
        {"id": [p.id for p in pairs], "prompt": [p.prompt_text for p in pairs],
         "chosen": [p.chosen for p in pairs], "rejected": [p.rejected for p in pairs]}
    )
    with warnings.catch_warnings():  # a local path matches two equivalent MLflow source types
        warnings.simplefilter("ignore", UserWarning)
        ds = mlflow.data.from_pandas(df, source=sources[0], name="preference-pairs", digest=digest[:36])
    tags = [InputTag("mlflow.data.context", "train")]
    if version:
        tags += [InputTag(f"prefdesk.{k}", str(version[k])) for k in
                 ("dataset_hash", "window_hash", "night", "pairs_new", "pairs_held", "pairs_window", "pairs_accepted")
                 if k in version]
    client().log_inputs(run_id, datasets=[DatasetInput(ds._to_mlflow_entity(), tags=tags)])


def _point_at_origins(quarantine_path: str, window_path: str) -> None:
    """The desk read the inbox window; its quarantine names the inbox file and line each pair
    came from (`prefdesk.origin`), so a person fixes the file they sent, not the window."""
    origins = {}
    with open(window_path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                origins[n] = json.loads(line).get("prefdesk", {}).get("origin", "")
    rows = []
    for line in Path(quarantine_path).read_text(encoding="utf-8").splitlines():
        q = json.loads(line)
        origin = origins.get(q.get("line"), "")
        if q.get("file") == window_path and origin:
            src, _, num = origin.rpartition(":")
            q.update(file=src, line=int(num) if num.isdigit() else num, window_line=q["line"])
        rows.append(json.dumps(q, ensure_ascii=False) + "\n")
    write_text(quarantine_path, "".join(rows))


@task(name="validate", cache_policy=NO_CACHE)
def validate(files: list[str], config: dict[str, Any], run_dir: str, run_id: str,
             version: dict[str, Any] | None = None) -> dict[str, Any]:
    """Data desk: quarantine what cannot be trained on, run the GX checks, report everywhere.

    `version`: the inbox night (`tasks.ingest.ingest_inbox`), logged with the dataset input.
    """
    cfg = config_of(config)
    out = Path(run_dir) / "data"
    report = run_for_config(files, cfg, out)
    if version is not None:
        _point_at_origins(str(report.quarantine_path), files[0])
    tracker = tracker_of(run_id)
    tracker.log_metrics(report.metrics())
    report_path = report.report_path
    tracker.log_artifact(str(report_path), "data")
    tracker.log_artifact(str(report.quarantine_path), "data")
    if report.docs_dir:
        tracker.log_artifact(str(report.docs_dir), "data/data_docs")
    if report.accepted:
        if version is not None:
            version = {"dataset_hash": report.dataset_hash, "window_hash": version["window_hash"],
                       "night": version["night"], "pairs_new": version["pairs_new"],
                       "pairs_held": version["pairs_held"], "pairs_window": version["window_pairs"],
                       "pairs_accepted": report.accepted}
            tracker.set_tags({"prefdesk.data.hash": report.dataset_hash})
        source = cfg.data.inbox if version is not None and cfg.data.inbox else files[0]
        _log_dataset(run_id, str(report.accepted_path), report.dataset_hash, [source], version)
    create_table_artifact(
        key="data-checks",
        table=table_rows([{"check": c.name, "figure": c.figure, "threshold": c.threshold, "passed": c.passed,
                           "reason": c.reason} for c in report.checks]),
        description=f"pairs in {report.rows_in}, accepted {report.accepted}, quarantined {report.quarantined}",
    )
    create_markdown_artifact(key="data-report", markdown=report.to_markdown())
    log = get_run_logger()
    log.info("validate: %d in, %d accepted, %d quarantined (%s)", report.rows_in, report.accepted,
             report.quarantined, report.quarantine_path)
    for f in report.failed:
        log.error("data gate failed: %s", f)
    return {"passed": report.passed, "failed": list(report.failed), "accepted_path": str(report.accepted_path),
            "report_path": str(report_path), "rows_in": report.rows_in, "accepted": report.accepted,
            "quarantined": report.quarantined, "quarantine_path": str(report.quarantine_path)}
