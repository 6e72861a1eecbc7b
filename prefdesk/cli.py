"""`prefdesk`: one entry point for the nightly flow and its parts.

The CLI is the top of the stack and the one module of `prefdesk/` that reaches up: it
composes the layers (flows, tasks, validations) lazily inside each command, so the core
library never imports them and `prefdesk --help` stays instant (tests/test_layers.py).

Every failure a user sees is one line naming the file, setting or server (`--debug` adds the
traceback; `--json` prints it as `{"error": ...}`), credentials redacted. SIGTERM ends a
command like Ctrl-C: runs are marked cancelled and the servers it started are stopped.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from prefdesk.config import home, load_config
from prefdesk.redact import redact

app = typer.Typer(add_completion=False, no_args_is_help=True, help="prefdesk: the preference desk.")
out = Console()
err = Console(stderr=True)


class _State:
    debug = bool(os.environ.get("PREFDESK_DEBUG"))
    json = False


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="show the traceback of a failure (also PREFDESK_DEBUG=1)")) -> None:
    """prefdesk: the preference desk."""
    _State.debug = debug or bool(os.environ.get("PREFDESK_DEBUG"))


ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (mirrors the pydantic config)")
SetOpt = typer.Option(None, "--set", "-s", help="override one field: KEY=VALUE (dotted path), repeatable")
JsonOpt = typer.Option(False, "--json", help="print one JSON object instead of the report")
LabelMapOpt = typer.Option(None, "--label-map", help="what pairwise labels mean: VALUE=first|second|tie,... "
                           "e.g. 0=first,1=second,2=tie (repeatable; config data.label_map)")


def _prepare_env() -> None:
    """State under PREFDESK_HOME: Prefect's database too, unless the user points elsewhere."""
    from prefdesk.lifecycle import handle_sigterm
    from prefdesk.redact import move_http_credentials

    handle_sigterm()
    warnings.showwarning = _one_line_warning
    move_http_credentials()  # user:password of an http(s) tracking URI -> MLflow's env variables
    os.environ.setdefault("PREFECT_HOME", str(home() / "prefect"))
    try:
        Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # Prefect makes one level only
    except OSError as exc:
        _fail(_describe_error(exc))
    # The first start creates Prefect's database; on 2 busy cores that can pass the 20 s default.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
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


def _quiet_logs() -> None:
    """Credentials masked in every log line; tracebacks off the console unless --debug."""
    from prefdesk.redact import redact_logs

    redact_logs()
    if _State.debug:
        return
    for name in ["", *logging.Logger.manager.loggerDict]:
        lg = logging.getLogger(name)
        for h in getattr(lg, "handlers", []):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) \
                    and not isinstance(h.formatter, _NoTraceback):
                h.setFormatter(_NoTraceback(h.formatter))


class _NoTraceback(logging.Formatter):
    """A console formatter without the traceback (the message line stays)."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def _describe_error(exc: BaseException) -> str:
    """One line for a failure: what failed, where (file, setting, server), redacted."""
    from prefdesk.tracking import no_space

    if no_space(exc):
        where = getattr(exc, "filename", None) or home()
        return f"no space left on {where}: free some space, or set PREFDESK_HOME to a folder on another disk"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    text = " ".join(redact(exc).split())
    ours = type(exc).__module__.split(".")[0] in ("prefdesk", "validations", "plugins", "tasks", "flows")
    return text if text and (ours or isinstance(exc, ValueError)) else f"{type(exc).__name__}: {text}".rstrip(": ")


def _fail(msg: str, code: int = 1) -> None:
    msg = redact(msg)
    if _State.json:
        print(json.dumps({"error": msg, "status": f"failed: {msg}"}))
    typer.secho(f"error: {msg}", fg="red", err=True)
    raise typer.Exit(code)


def _exit_at_once(code: int) -> None:
    """A cancelled command has marked its runs and stopped its servers: end now. The interpreter's
    own teardown (garbage-collecting a model, a GX context...) took 10+ s on a busy machine,
    past a scheduler's grace period. Only as the `prefdesk` program, never inside a test runner."""
    if Path(sys.argv[0]).name in ("prefdesk", "cli.py"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _guarded(command: Callable[..., Any]) -> Callable[..., Any]:
    """Every failure of a command becomes one line (and a JSON object with --json)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from prefdesk.lifecycle import cancel_reason, exit_code

        _State.json = bool(kwargs.get("json_"))
        try:
            return command(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (prefdesk.lifecycle.Terminated)
            try:
                _fail(f"cancelled ({cancel_reason(exc)})", code=exit_code(exc))
            finally:
                _exit_at_once(exit_code(exc))
        except Exception as exc:
            if _State.debug:
                err.print_exception()
            _fail(_describe_error(exc))

    return wrapper


def _config(config: Optional[Path], sets: Optional[list[str]], store: bool = False):
    """The config, every setting checked; with `store`, the tracking store too, before the
    optimizer plugin is imported (seconds of torch), so a store that is down is named at once."""
    from prefdesk.config import check_optimizer, check_paths, check_train_params

    cfg = load_config(config, sets or [], check=False)
    check_paths(cfg)
    check_optimizer(cfg.train)
    if store:
        _check_store(cfg.registry.experiment)
    check_train_params(cfg.train)
    return cfg


def _check_store(experiment: str | None, write: bool = True) -> None:
    """The tracking store answers, takes writes and has a usable schema: in seconds, before any work."""
    from prefdesk.tracking import check_store

    check_store(experiment, write=write)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
    typer.secho(f"warning: {redact(message)}", fg="yellow", err=True)


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
        if reg.get("model_uri"):
            console.print(f"load it: mlflow.pyfunc.load_model('models:/{reg['model_name']}/{reg['version']}')")
    console.print(f"MLflow run: {s.get('run_id')} (experiment {s.get('experiment')}; `prefdesk ui` to browse)")
    console.print(f"Prefect flow run: {s.get('flow_run_id')}")
    console.print(f"files: {s.get('run_dir')}")


def _prefect_server_argv(port: int) -> list[str]:
    """Prefect's own ephemeral API server command (prefect.server.api.server.SubprocessASGIServer)."""
    import prefect

    return [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
            "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "error", "--lifespan", "on"]


@contextmanager
def _prefect_api():
    """A Prefect API for one command: the configured one (`prefdesk ui`, a server, Cloud), else a
    temporary server that this process owns: stopped when the command ends however it ends, and
    killed by the kernel if the command is killed (-9), so no server outlives it."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    from prefdesk.lifecycle import children, free_port, spawn, wait_http

    if PREFECT_API_URL.value():
        yield
        return
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    for attempt in range(3):  # a port taken between free_port() and the bind: take another
        port = free_port()
        proc = spawn(_prefect_server_argv(port), env)
        with children(proc):
            try:
                wait_http(f"http://127.0.0.1:{port}/api/health", proc,
                          float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))
            except RuntimeError:
                if attempt < 2 and proc.poll() == 3:
                    continue
                raise
            with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{port}/api"}):
                try:
                    yield
                finally:
                    _drain_prefect_clients()
            return


def _drain_prefect_clients() -> None:
    """Send Prefect's queued logs and events while its server is still up (else: 'Error logging to API')."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=5)
        except Exception:  # nothing queued, or a worker that never started
            pass


def _cancel_flow_run(flow_run_id: str | None, why: str) -> None:
    """The flow run of a command stopped by SIGTERM/Ctrl-C ends Cancelled, not Running or Crashed."""
    if not flow_run_id:
        return
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    try:
        with get_client(sync_client=True) as c:
            c.set_flow_run_state(UUID(flow_run_id), Cancelled(message=why), force=True)
    except Exception as exc:
        logging.getLogger("prefdesk").warning("flow run %s not marked cancelled: %s", flow_run_id, redact(exc))


@app.command()
@_guarded
def run(config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt, json_: bool = JsonOpt) -> None:
    """Run the nightly flow once (through Prefect) and print the summary."""
    _prepare_env()
    _check_needs(_config(config, set_, store=True))  # a bad setting or store fails here, before Prefect starts
    from prefdesk.tasks.run import new_run_dir

    run_dir = new_run_dir()
    summary_file = Path(run_dir) / "summary.json"
    with _prefect_api():
        from prefdesk.flows.nightly import nightly

        _quiet_logs()
        try:
            state = nightly(config_path=str(config) if config else None, overrides=list(set_ or []), run_dir=run_dir,
                            return_state=True)
        except KeyboardInterrupt as exc:
            from prefdesk.lifecycle import cancel_reason

            flow_run_id = json.loads(summary_file.read_text()).get("flow_run_id") if summary_file.exists() else None
            _cancel_flow_run(flow_run_id, f"cancelled: {cancel_reason(exc)}")
            raise
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {"status": f"failed: {redact(state.message)}"}
    failed = state.is_failed() or state.is_crashed()
    if failed:
        summary["error"] = str(summary.get("status", "failed")).removeprefix("failed: ")
    if json_:
        print(json.dumps(summary, default=str))
    else:
        render_summary(summary, out)
    if failed:
        if not json_:
            typer.secho(f"error: {summary['error']}", fg="red", err=True)
        raise typer.Exit(2 if str(summary.get("status", "")).startswith("stopped") else 1)


@app.command()
@_guarded
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
    from prefdesk.validations.desk import run_for_config

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
@_guarded
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
    cfg = _config(config, [*(set_ or []), f"train.optimizer={optimizer}"], store=True)
    _check_needs(cfg)
    _add_label_map(cfg, label_map)
    from prefdesk.readers import DataError, read_pairs
    from prefdesk.tracking import tracked_run
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
    with tracked_run(cfg.registry.experiment, f"train-{optimizer}", tags={"prefdesk.kind": "train"},
                     params=cfg.flatten()) as tracker:
        from prefdesk.training import load_prompts
        from prefdesk.tasks.train import record_training
        from prefdesk.validations.generated import desk_for_generated

        folder = home() / "train" / tracker.run_id
        res = train_adapter(cfg, pairs, folder, tracker, prompts=load_prompts(cfg, folder / "data"),
                            check_pairs=desk_for_generated(cfg, tracker, folder / "data"))
        record_training(res, tracker, folder, log_adapter=True)
    run_id = tracker.run_id
    summary = {"optimizer": optimizer, "pairs": len(pairs), "quarantined": len(result.quarantined), "steps": res.steps,
               "artifacts": res.artifacts, "run_id": run_id, "metrics": {**res.metrics, **res.gated}}
    if json_:
        print(json.dumps(summary, default=str))
    else:
        made = ", ".join(f"{k} {v}" for k, v in res.artifacts.items())
        out.print(f"trained [bold]{optimizer}[/] on {len(pairs)} pairs for {res.steps} steps -> {made}")
        for k, v in sorted(summary["metrics"].items()):
            out.print(f"  {k} = {v:.4g}")
        out.print(f"MLflow run: {run_id}")


def _adapter_from_registry(model_name: str, version: Optional[str], alias: Optional[str]) -> str:
    from prefdesk.registry import registered_adapter

    return str(registered_adapter(model_name, version, alias))


@app.command()
@_guarded
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
    if adapter is None:
        _check_store(None, write=False)
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
@_guarded
def promote(
    version: str = typer.Argument(..., help="model version to make champion"),
    model: Optional[str] = typer.Option(None, "--model", help="registered model name"),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Move `champion` to a version whose gates passed; refuse one whose gates failed."""
    _prepare_env()
    cfg = load_config(config, [], check=False)  # promote reads the registry names only
    _check_store(None)
    from prefdesk.registry import PromotionRefused, promote_version

    try:
        reg = promote_version(model or cfg.registry.model_name, version)
    except PromotionRefused as exc:
        _fail(str(exc))
    out.print(f"{reg.model_name} version {reg.version} is now champion")


@app.command()
@_guarded
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


DEPLOYMENT_FILE = Path(__file__).resolve().parents[1] / "deployments" / "prefect.yaml"


def nightly_deployment(path: Path = DEPLOYMENT_FILE) -> dict[str, Any]:
    """The nightly deployment as `deployments/prefect.yaml` declares it (name, cron, time zone,
    concurrency limit, parameters): `prefdesk serve` serves that one, not a second definition."""
    import yaml

    try:
        spec = yaml.safe_load(path.read_text())
        dep = next(d for d in spec["deployments"] if d["entrypoint"].endswith(":nightly"))
        sched = dep["schedules"][0]
    except (OSError, yaml.YAMLError, KeyError, IndexError, StopIteration, TypeError) as exc:
        raise ValueError(f"{path}: no nightly deployment with a schedule in it ({type(exc).__name__}: {exc})") from None
    return {"name": dep["name"], "cron": sched["cron"], "timezone": sched.get("timezone", "UTC"),
            "concurrency_limit": dep.get("concurrency_limit"), "description": dep.get("description"),
            "parameters": dict(dep.get("parameters") or {})}


def prefect_server_command(port: int) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of a real Prefect server on loopback: with its scheduler and its UI,
    the UI told its API's port (it assumes 4200 otherwise)."""
    env = {**os.environ, "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(port),
           "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api"}
    env.pop("PREFECT_API_URL", None)  # the UI talks to this server, not one set for clients
    return [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], env


def _check_port_free(port: int) -> None:
    """A taken port is named at once (often `prefdesk ui`'s own server), not as a server that died."""
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is not taken
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise ValueError(f"port {port} on 127.0.0.1 is taken: if it is `prefdesk ui`'s Prefect server, "
                             f"export PREFECT_API_URL=http://127.0.0.1:{port}/api; else choose --prefect-port") from None


@contextmanager
def _prefect_server(port: int):
    """The configured Prefect API (PREFECT_API_URL), else a real server on `port` that lives and dies
    with this process. Never the temporary one of `prefdesk run`: that one runs no scheduler."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    from prefdesk.lifecycle import children, spawn, wait_http

    if PREFECT_API_URL.value():
        yield PREFECT_API_URL.value()
        return
    _check_port_free(port)
    argv, env = prefect_server_command(port)
    with children(spawn(argv, env)) as (proc,):
        api = f"http://127.0.0.1:{port}/api"
        wait_http(f"{api}/health", proc, float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))
        os.environ["PREFECT_API_URL"] = api  # the runner's flow-run processes inherit it
        try:
            with temporary_settings(updates={PREFECT_API_URL: api}):
                yield api
        finally:
            _drain_prefect_clients()
            os.environ.pop("PREFECT_API_URL", None)


@app.command()
@_guarded
def serve(cron: Optional[str] = typer.Option(None, help="schedule (cron) instead of deployments/prefect.yaml's"),
          config: Optional[Path] = ConfigOpt,
          prefect_port: int = typer.Option(4200, min=1, max=65535,
                                           help="port of the Prefect server started when PREFECT_API_URL names none")) -> None:
    """Serve the nightly deployment of deployments/prefect.yaml on its schedule, without a work pool:
    on the Prefect server PREFECT_API_URL names (`prefdesk ui`'s), else on one it starts on loopback."""
    _prepare_env()
    _config(config, [], store=True)
    spec = nightly_deployment()
    params = {**spec["parameters"], **({"config_path": str(config.resolve())} if config else {})}
    with _prefect_server(prefect_port) as api:
        from prefect.schedules import Cron

        from prefdesk.flows.nightly import nightly

        _quiet_logs()
        out.print(f"serving {nightly.name}/{spec['name']} ({cron or spec['cron']}, {spec['timezone']}) on {api}")
        nightly.serve(name=spec["name"], schedules=[Cron(cron or spec["cron"], timezone=spec["timezone"])],
                      global_limit=spec["concurrency_limit"], parameters=params, description=spec["description"])


def ui_commands(prefect_port: int, mlflow_port: int) -> list[tuple[list[str], dict[str, str]]]:
    """(argv, environment) of the two UI servers. Store URIs go by environment, never on a command
    line that `ps` shows; the Prefect UI is told its API's port (it assumes 4200 otherwise)."""
    from prefdesk.tracking import artifact_root, sqlite_path, tracking_uri

    cmds = [prefect_server_command(prefect_port)]
    uri = tracking_uri()
    if sqlite_path(uri) is not None or "://" in uri and not uri.startswith(("http://", "https://")):
        mlflow_env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": uri, "MLFLOW_DEFAULT_ARTIFACT_ROOT": artifact_root()}
        cmds.append(([sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(mlflow_port)], mlflow_env))
    return cmds


@app.command()
@_guarded
def ui(prefect_port: int = typer.Option(4200, min=1, max=65535), mlflow_port: int = typer.Option(5000, min=1, max=65535)) -> None:
    """Start the Prefect and MLflow UIs on loopback and print their addresses (Ctrl-C or SIGTERM stops both)."""
    _prepare_env()
    from prefdesk.lifecycle import children, spawn
    from prefdesk.tracking import tracking_uri

    _check_store(load_config(None, [], check=False).registry.experiment)  # the store exists, tagged as training
    cmds = ui_commands(prefect_port, mlflow_port)
    with children(*(spawn(argv, env) for argv, env in cmds)) as procs:
        out.print(f"Prefect UI: http://127.0.0.1:{prefect_port}   (export PREFECT_API_URL=http://127.0.0.1:{prefect_port}/api "
                  "for `prefdesk run` and `prefdesk serve` to use it)")
        if len(cmds) > 1:
            out.print(f"MLflow UI:  http://127.0.0.1:{mlflow_port}")
        else:
            out.print(f"MLflow UI:  {redact(tracking_uri())} (the tracking server's own UI)")
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        dead = next(p for p in procs if p.poll() is not None)
        _fail(f"{' '.join(dead.args[2:4])} exited with code {dead.returncode}; the other server is stopped too")


if __name__ == "__main__":
    app()  # as `python -m prefdesk.cli` (the tests' way to run the real program)
