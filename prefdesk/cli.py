"""`prefdesk`: one entry point for the nightly flow and its parts.

The CLI is the top of the stack and the one module of `prefdesk/` that reaches up: it
composes the layers (flows, tasks, validations) lazily inside each command, so the core
library never imports them and `prefdesk --help` stays instant (tests/test_layers.py).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from prefdesk.config import home, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help="prefdesk: the preference desk.")
out = Console()
err = Console(stderr=True)

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (mirrors the pydantic config)")
SetOpt = typer.Option(None, "--set", "-s", help="override one field: KEY=VALUE (dotted path), repeatable")
JsonOpt = typer.Option(False, "--json", help="print one JSON object instead of the report")
LabelMapOpt = typer.Option(None, "--label-map", help="what pairwise labels mean: VALUE=first|second|tie,... "
                           "e.g. 0=first,1=second,2=tie (repeatable; config data.label_map)")


def _prepare_env() -> None:
    """State under PREFDESK_HOME: Prefect's database too, unless the user points elsewhere."""
    os.environ.setdefault("PREFECT_HOME", str(home() / "prefect"))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # Prefect makes one level only
    # The first start creates Prefect's database; on 2 busy cores that can pass the 20 s default.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging
    import warnings

    # peft asks transformers a deprecated question on every eval; nothing a user can act on.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    # Our own logger only: the root belongs to Prefect's handlers (timestamps, run names).
    ours = logging.getLogger("prefdesk")
    if not ours.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s | prefdesk | %(message)s", "%H:%M:%S"))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
        ours.propagate = False


def _fail(msg: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(code)


def _config(config: Optional[Path], sets: Optional[list[str]]):
    try:
        return load_config(config, sets or [])
    except (ValueError, OSError) as exc:
        _fail(str(exc))


def _check_needs(cfg) -> None:
    """The optimizer exists, its parameters parse, and the run can give it what it needs."""
    from pydantic import ValidationError

    from prefdesk.plugin import PluginError
    from prefdesk.training import check_needs

    try:
        check_needs(cfg)
    except (PluginError, ValidationError) as exc:
        _fail(str(exc))


def _add_label_map(cfg, label_map: Optional[list[str]]) -> None:
    from prefdesk.labels import parse_label_map

    try:
        cfg.data.label_map = {**cfg.data.label_map, **parse_label_map(label_map)}
    except ValueError as exc:
        _fail(f"--label-map: {exc}")


def render_summary(s: dict[str, Any], console: Console) -> None:
    console.rule("[bold]prefdesk nightly run")
    console.print(f"status: [bold]{s.get('status')}[/]")
    d = s.get("data")
    if d:
        console.print(f"data: {d['rows_in']} pairs in, {d['accepted']} accepted, {d['quarantined']} quarantined "
                      f"(quarantine file: {d['quarantine_path']})")
        for f in d.get("failed", []):
            console.print(f"  [red]data gate failed:[/] {f}")
    if s.get("gates"):
        t = Table(title="gates", show_lines=False)
        t.add_column("gate")
        t.add_column("result")
        t.add_column("why")
        for g in s["gates"]:
            t.add_row(g["name"], "[green]pass[/]" if g["passed"] else "[red]FAIL[/]", g["reason"])
        console.print(t)
    for note in s.get("notes", []):
        console.print(f"[bold yellow]{note}[/]")
    reg = s.get("registry")
    if reg:
        verdict = "[green]promoted to champion[/]" if reg["promoted"] else "[yellow]not promoted[/] (challenger only)"
        console.print(f"model: {reg['model_name']} version {reg['version']}, aliases {', '.join(reg['aliases'])}: {verdict}")
    console.print(f"MLflow run: {s.get('run_id')} (experiment {s.get('experiment')}; `prefdesk ui` to browse)")
    console.print(f"Prefect flow run: {s.get('flow_run_id')}")
    console.print(f"files: {s.get('run_dir')}")


@app.command()
def run(config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt, json_: bool = JsonOpt) -> None:
    """Run the nightly flow once (through Prefect) and print the summary."""
    _prepare_env()
    _check_needs(_config(config, set_))  # fail fast on a bad config, before Prefect starts
    from flows.nightly import nightly
    from tasks.run import new_run_dir

    run_dir = new_run_dir()
    state = nightly(config_path=str(config) if config else None, overrides=list(set_ or []), run_dir=run_dir, return_state=True)
    summary_file = Path(run_dir) / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {"status": f"failed: {state.message}"}
    if json_:
        print(json.dumps(summary, default=str))
    else:
        render_summary(summary, out)
    if state.is_failed():
        raise typer.Exit(2 if str(summary.get("status", "")).startswith("stopped") else 1)


@app.command()
def validate(
    paths: list[str] = typer.Argument(..., help="files, folders or embedded:NAME"),
    format: Optional[str] = typer.Option(None, "--format", "-f", help="auto, jsonl, json, csv, parquet, ... (default: the config's data.format)"),
    column: Optional[list[str]] = typer.Option(None, "--column", help="column mapping ROLE=NAME, repeatable"),
    label_map: Optional[list[str]] = LabelMapOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    out_dir: Optional[Path] = typer.Option(None, "--out", help="where the report, quarantine and Data Docs go"),
    json_: bool = JsonOpt,
) -> None:
    """Read and check pairs without training; print the data report. Exit 1 when a data gate fails."""
    _prepare_env()
    cfg = _config(config, set_)
    if format is not None:
        cfg.data.format = format
    for c in column or []:
        role, _, name = c.partition("=")
        cfg.data.columns[role] = name
    _add_label_map(cfg, label_map)
    from prefdesk.readers import DataError
    from validations.desk import run_for_config

    target = out_dir or home() / "validate" / time.strftime("%Y%m%d-%H%M%S")
    try:
        report = run_for_config(paths, cfg, target)
    except (DataError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    if json_:
        print(json.dumps(report.to_dict(), default=str))
    else:
        report.render(out)
    raise typer.Exit(0 if report.passed else 1)


@app.command()
def train(
    optimizer: str = typer.Option(..., "--optimizer", "-o", help="plugin name (see `prefdesk plugins`)"),
    data: list[str] = typer.Option(..., "--data", "-d", help="pair files or folders, repeatable"),
    label_map: Optional[list[str]] = LabelMapOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    json_: bool = JsonOpt,
) -> None:
    """Train one optimizer on pairs: no data gates, no drift gates, no promotion (for trying a plugin)."""
    _prepare_env()
    cfg = _config(config, [*(set_ or []), f"train.optimizer={optimizer}"])
    _check_needs(cfg)
    _add_label_map(cfg, label_map)
    from prefdesk.plugin import PluginError
    from prefdesk.readers import DataError, read_pairs
    from prefdesk.tracking import Tracker, end_run, start_run
    from prefdesk.training import train_adapter

    try:
        result = read_pairs(list(data), cfg.data.format, cfg.data.columns or None, label_map=cfg.data.label_map or None)
    except (DataError, FileNotFoundError) as exc:
        _fail(str(exc))
    for note in result.notes:
        err.print(note, markup=False)
    for q in result.quarantined:
        err.print(f"[yellow]quarantined[/] {q.source}:{q.line}: {q.reason}")
    pairs = result.pairs[: cfg.data.limit] if cfg.data.limit else result.pairs  # as train_adapter will
    run_id = start_run(cfg.registry.experiment, run_name=f"train-{optimizer}", tags={"prefdesk.kind": "train"})
    status = "FAILED"
    try:
        tracker = Tracker(run_id)
        tracker.log_params(cfg.flatten())
        from validations.generated import desk_for_generated

        folder = home() / "train" / run_id
        from prefdesk.training import load_prompts

        res = train_adapter(cfg, pairs, folder, tracker, prompts=load_prompts(cfg, folder / "data"),
                            check_pairs=desk_for_generated(cfg, tracker, folder / "data"))
        tracker.log_artifact(res.adapter_path, "adapter")
        status = "FINISHED"
    except PluginError as exc:
        _fail(str(exc))
    finally:
        end_run(run_id, status)
    summary = {"optimizer": optimizer, "pairs": len(pairs), "quarantined": len(result.quarantined), "steps": res.steps,
               "adapter": res.adapter_path, "run_id": run_id, "metrics": res.metrics}
    if json_:
        print(json.dumps(summary, default=str))
    else:
        out.print(f"trained [bold]{optimizer}[/] on {len(pairs)} pairs for {res.steps} steps -> {res.adapter_path}")
        for k, v in sorted(res.metrics.items()):
            out.print(f"  {k} = {v:.4g}")
        out.print(f"MLflow run: {run_id}")


def _adapter_from_registry(model_name: str, version: Optional[str], alias: Optional[str]) -> str:
    import mlflow.artifacts

    from prefdesk.tracking import client

    c = client()
    mv = c.get_model_version_by_alias(model_name, alias) if alias else c.get_model_version(model_name, version)
    return mlflow.artifacts.download_artifacts(artifact_uri=mv.source)


@app.command()
def evaluate(
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="adapter folder"),
    version: Optional[str] = typer.Option(None, "--version", help="registered model version"),
    alias: Optional[str] = typer.Option(None, "--alias", help="registry alias, e.g. champion"),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    json_: bool = JsonOpt,
) -> None:
    """Drift metrics of an adapter or registered model against the reference."""
    _prepare_env()
    cfg = _config(config, set_)
    from prefdesk.drift import DRIFT_NAMES, evaluate_adapter

    if sum(x is not None for x in (adapter, version, alias)) != 1:
        _fail("give exactly one of --adapter, --version, --alias")
    path = str(adapter) if adapter else _adapter_from_registry(cfg.registry.model_name, version, alias)
    result = evaluate_adapter(cfg, path)
    if json_:
        print(json.dumps(result.metrics))
        return
    t = Table(title=f"drift of {path}")
    for col in ("metric", "policy", "reference"):
        t.add_column(col)
    for n in DRIFT_NAMES:
        t.add_row(f"drift/{n}", f"{result.metrics[f'drift/{n}']:.4g}", f"{result.metrics[f'reference/drift/{n}']:.4g}")
    out.print(t)


@app.command()
def promote(
    version: str = typer.Argument(..., help="model version to make champion"),
    model: Optional[str] = typer.Option(None, "--model", help="registered model name"),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Move `champion` to a version whose gates passed; refuse one whose gates failed."""
    _prepare_env()
    cfg = _config(config, [])
    from prefdesk.registry import PromotionRefused, promote_version

    try:
        reg = promote_version(model or cfg.registry.model_name, version)
    except PromotionRefused as exc:
        _fail(str(exc))
    out.print(f"{reg.model_name} version {reg.version} is now champion")


@app.command()
def plugins(json_: bool = JsonOpt) -> None:
    """List installed optimizer plugins (entry-point group prefdesk.optimizers) and their parameters."""
    from prefdesk.plugin import describe

    rows = describe()
    if json_:
        print(json.dumps(rows, default=str))
        return
    for row in rows:
        out.print(f"[bold]{row['name']}[/]  ({row['entry_point']})  {row.get('doc', '')}")
        if "error" in row:
            out.print(f"  [red]cannot load:[/] {row['error']}")
            continue
        out.print(f"  needs: {', '.join(row['needs'])}")
        for k, p in row["params"].items():
            out.print(f"    {k}: {p['type']} = {p['default']!r}")


@app.command()
def serve(cron: str = typer.Option("0 2 * * *", help="schedule (cron, server time zone)"),
          config: Optional[Path] = ConfigOpt) -> None:
    """Serve the nightly deployment on its schedule (needs a Prefect server: `prefdesk ui`)."""
    _prepare_env()
    from flows.nightly import nightly

    params = {"config_path": str(config.resolve())} if config else {}
    nightly.serve(name="prefdesk-nightly", cron=cron, parameters=params)


@app.command()
def ui(prefect_port: int = 4200, mlflow_port: int = 5000) -> None:
    """Start the Prefect and MLflow UIs on loopback and print their addresses."""
    import subprocess

    _prepare_env()
    from prefdesk.tracking import artifact_root, tracking_uri

    procs = [
        subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)]),
        subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri(), "--default-artifact-root",
                          artifact_root(), "--host", "127.0.0.1", "--port", str(mlflow_port)]),
    ]
    out.print(f"Prefect UI: http://127.0.0.1:{prefect_port}   (export PREFECT_API_URL=http://127.0.0.1:{prefect_port}/api for `prefdesk serve`)")
    out.print(f"MLflow UI:  http://127.0.0.1:{mlflow_port}")
    try:
        for p in procs:
            p.wait()
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()


if __name__ == "__main__":
    app()
