from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

import prefdesk.readers
import prefdesk.validations.desk
from prefdesk.atomic import write_json, write_text
from prefdesk.config import PrefdeskConfig
from prefdesk.inbox import sha256_of
from prefdesk.pairs import read_pairs_jsonl
from prefdesk.tracking import client
from prefdesk.readers import resolve
from prefdesk.tasks.common import config_of, table_rows, tracker_of
from prefdesk.validations.desk import run_for_config


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


# What decides the desk's verdict on a window besides its bytes: the data settings (less the
# inbox's own), the eval sets (leakage), the tokenizer (length) and the desk's code.
_MEMOS_KEPT = 3
_NOT_VALIDATION = {"inbox", "held", "window_pairs", "window_nights", "on_no_new_pairs"}
# (found by module, so the same in a checkout and in an installed wheel)
_CORE = Path(prefdesk.readers.__file__).parent
_DESK_CODE = [*sorted(Path(prefdesk.validations.desk.__file__).parent.glob("*.py")),
              *(_CORE / f for f in ("readers.py", "refusal.py", "labels.py", "invisible.py"))]


def _desk_key(cfg: PrefdeskConfig, window_path: str) -> str:
    from prefdesk.engine.tokcache import tokenizer_identity
    from prefdesk.models import load_tokenizer

    h = hashlib.sha256()
    h.update(sha256_of(Path(window_path)).encode())
    data = {k: v for k, v in cfg.data.model_dump(mode="json").items() if k not in _NOT_VALIDATION}
    h.update(json.dumps([data, cfg.data.eval, cfg.eval.refusal_sets, cfg.eval.factuality], sort_keys=True).encode())
    for spec in [cfg.data.eval, *cfg.eval.refusal_sets, *([cfg.eval.factuality] if cfg.eval.factuality else [])]:
        for f in resolve(spec.split("#", 1)[0]):
            h.update(sha256_of(f).encode())
    h.update(str(tokenizer_identity(load_tokenizer(cfg.model.name))).encode())
    for f in _DESK_CODE:
        h.update(f.read_bytes() if f.exists() else b"")
    return h.hexdigest()[:24]


_DESK_OUTPUTS = ("accepted_pairs.jsonl", "quarantine.jsonl", "data_report.json", "data_docs")


def _copy_outputs(src: Path, dst: Path) -> None:
    """The desk's output files and Data Docs folder, from one folder to another."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in _DESK_OUTPUTS:
        if (src / name).is_dir():
            shutil.copytree(src / name, dst / name, dirs_exist_ok=True)
        elif (src / name).exists():
            shutil.copyfile(src / name, dst / name)


def _run_desk(files: list[str], cfg: PrefdeskConfig, out: Path, memo: Path | None) -> dict[str, Any]:
    """The desk's outcome as a plain dict (what the task logs and returns). With `memo` (an
    inbox window), a window validated before under the same key is not validated again: its
    outputs are copied from the memo, and the outcome says `reused_from`."""
    if memo is not None and (memo / "outcome.json").exists():
        outcome = json.loads((memo / "outcome.json").read_text())
        _copy_outputs(memo, out)
        return outcome | {k: str(out / v) for k, v in outcome["files"].items()}
    report = run_for_config(files, cfg, out)
    if memo is not None:
        _point_at_origins(str(report.quarantine_path), files[0])
    files_of = {"accepted_path": report.accepted_path, "quarantine_path": report.quarantine_path,
                "report_path": report.report_path}
    if report.docs_dir:
        files_of["docs_dir"] = report.docs_dir
    outcome = {
        "passed": report.passed, "failed": list(report.failed), "rows_in": report.rows_in,
        "accepted": report.accepted, "quarantined": report.quarantined, "dataset_hash": report.dataset_hash,
        "metrics": report.metrics(), "markdown": report.to_markdown(), "docs_dir": None,
        "checks": [{"check": c.name, "figure": c.figure, "threshold": c.threshold, "passed": c.passed,
                    "reason": c.reason} for c in report.checks],
        "files": {k: str(Path(v).relative_to(out)) for k, v in files_of.items()},
    } | {k: str(v) for k, v in files_of.items()}
    if memo is not None:
        tmp = memo.with_name(f".{memo.name}.tmp-{os.getpid()}")
        _copy_outputs(out, tmp)
        write_json(tmp / "outcome.json", outcome | {"validated_in": str(out)})
        if memo.exists():
            shutil.rmtree(tmp)
        else:
            tmp.rename(memo)  # whole or not at all
        # Only a recent window can come back (a retrain, a rerun): keep the last few.
        kept = sorted((d for d in memo.parent.iterdir() if d.is_dir() and not d.name.startswith(".")),
                      key=lambda d: d.stat().st_mtime, reverse=True)
        for old in kept[_MEMOS_KEPT:]:
            shutil.rmtree(old, ignore_errors=True)
    return outcome


# one retry: it writes to the tracking server (a restart, a blip); the checks are deterministic,
# a failing data gate is a result, not an exception, so a retry cannot turn it into a pass
@task(name="validate", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=30)
def validate(files: list[str], config: dict[str, Any], run_dir: str, run_id: str,
             version: dict[str, Any] | None = None) -> dict[str, Any]:
    """Data desk: quarantine what cannot be trained on, run the GX checks, report everywhere.

    `version`: the inbox night (`tasks.ingest.ingest_inbox`), logged with the dataset input;
    a window already validated under the same settings, tokenizer, eval sets and desk code
    (a retrain on an unchanged window) is not validated again.
    """
    cfg = config_of(config)
    out = Path(run_dir) / "data"
    memo = Path(version["held_dir"]) / "validated" / _desk_key(cfg, files[0]) if version is not None else None
    o = _run_desk(files, cfg, out, memo)
    tracker = tracker_of(run_id)
    tracker.log_metrics(o["metrics"] | ({"data/validation_reused": float("validated_in" in o)} if memo else {}))
    tracker.log_artifact(o["report_path"], "data")
    tracker.log_artifact(o["quarantine_path"], "data")
    if o.get("docs_dir"):
        tracker.log_artifact(o["docs_dir"], "data/data_docs")
    if o["accepted"]:
        if version is not None:
            version = {"dataset_hash": o["dataset_hash"], "window_hash": version["window_hash"],
                       "night": version["night"], "pairs_new": version["pairs_new"],
                       "pairs_held": version["pairs_held"], "pairs_window": version["window_pairs"],
                       "pairs_accepted": o["accepted"]}
            tracker.set_tags({"prefdesk.data.hash": o["dataset_hash"]})
        source = cfg.data.inbox if version is not None and cfg.data.inbox else files[0]
        _log_dataset(run_id, o["accepted_path"], o["dataset_hash"], [source], version)
    create_table_artifact(
        key="data-checks", table=table_rows(o["checks"]),
        description=f"pairs in {o['rows_in']}, accepted {o['accepted']}, quarantined {o['quarantined']}",
    )
    create_markdown_artifact(key="data-report", markdown=o["markdown"])
    log = get_run_logger()
    if "validated_in" in o:
        log.info("validate: this window was validated before (%s): its outcome is reused", o["validated_in"])
    log.info("validate: %d in, %d accepted, %d quarantined (%s)", o["rows_in"], o["accepted"], o["quarantined"],
             o["quarantine_path"])
    for f in o["failed"]:
        log.error("data gate failed: %s", f)
    return {k: o[k] for k in ("passed", "failed", "accepted_path", "report_path", "rows_in", "accepted",
                              "quarantined", "quarantine_path")} | {"reused_from": o.get("validated_in")}
