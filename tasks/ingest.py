"""Ingest: what tonight's data is. Either the fixed file list of `data.train`, or the inbox
(`data.inbox`): the files that arrived since last night, de-duplicated against the held
pairs, and the window the night trains on (see `prefdesk.inbox`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from prefdesk.atomic import write_json
from prefdesk.inbox import ingest_night, sha256_of
from prefdesk.readers import resolve
from prefdesk.tasks.common import config_of, tracker_of


# retries: reading the inputs is I/O (a network share not yet mounted, a file still being
# copied); it only reads, so a second try cannot do anything twice
@task(name="ingest", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
def ingest(inputs: list[str], run_dir: str) -> list[str]:
    """Resolve the inputs (files, folders, embedded sets) and record what tonight's data is."""
    files = [p for spec in inputs for p in resolve(spec)]
    if not files:
        raise FileNotFoundError(f"no input files found in {inputs}")
    manifest = [{"path": str(p), "bytes": p.stat().st_size, "sha256": sha256_of(p)} for p in files]
    write_json(Path(run_dir) / "inputs.json", manifest)
    get_run_logger().info("ingest: %d file(s): %s", len(files), ", ".join(p.name for p in files))
    return [str(p) for p in files]


@task(name="ingest-inbox", cache_policy=NO_CACHE)  # no retries: a second try would be another night
def ingest_inbox(config: dict[str, Any], run_dir: str, run_id: str) -> dict[str, Any]:
    """Tonight's new pairs from the inbox into the held store; returns the night (window path,
    dataset version, counts) as a plain dict. Logged to MLflow as `data/pairs_new`,
    `data/pairs_held`, ... and to Prefect as a markdown artifact."""
    cfg = config_of(config)
    night = ingest_night(cfg.data, Path(run_dir) / "data", run=run_dir)
    record = night.to_dict() | {"quarantined": night.quarantined, "says": night.says()}
    path = write_json(Path(run_dir) / "inputs.json", record)
    tracker = tracker_of(run_id)
    tracker.log_metrics({"data/night": night.night, "data/pairs_new": night.pairs_new,
                         "data/pairs_held": night.pairs_held, "data/pairs_window": night.window_pairs,
                         "data/ingest_rows": night.rows_in, "data/ingest_duplicates": night.duplicates,
                         "data/ingest_unreadable": night.unreadable})
    tracker.set_tags({"prefdesk.data.night": str(night.night), "prefdesk.data.window_hash": night.window_hash})
    tracker.log_artifact(str(path), "data")
    tracker.log_artifact(night.quarantine_path, "data")
    files = "\n".join(f"| {Path(f['path']).name} | {f['rows_in']} | {f['new']} | {f['duplicates']} | {f['unreadable']} |"
                      for f in night.files_new)
    create_markdown_artifact(
        key="inbox",
        markdown=(f"**{night.says()}**\n\n| file | rows | new | duplicates | unreadable |\n|---|---|---|---|---|\n"
                  f"{files}\n\n{len(night.files_seen)} file(s) already ingested on earlier nights, not read again."),
        description=f"night {night.night}: {night.pairs_new} new pairs")
    get_run_logger().info("ingest: %s", night.says())
    return record
