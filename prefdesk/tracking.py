"""MLflow tracking without the thread-local active run, and a store checked before any work.

Prefect may run a task in another thread, where `mlflow.active_run()` is empty; so every
write goes through an `MlflowClient` with an explicit run id.

The store is checked in the first seconds of a command (`check_store`): a tracking server
that is down, a folder that is read-only or full, or a half-made database fail there, with a
message naming the (redacted) URI and what to do, instead of after minutes of MLflow's own
retries. The local SQLite store is created atomically (built beside, then renamed) under a
lock, so a full disk or a kill during creation can never leave a store broken for good.

Runs are opened and closed in one place (`tracked_run`), for the nightly flow and
`prefdesk train` alike. Each run records which process owns it, so the next run on the same
host can mark a run whose process died (kill -9, a power cut) as KILLED instead of leaving it
RUNNING forever.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from prefdesk.atomic import file_lock
from prefdesk.config import home
from prefdesk.redact import move_http_credentials, redact

T = TypeVar("T")
# MLflow's UI shows an experiment as model training (runs, charts), not the GenAI (traces) view.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
DEFAULT_TIMEOUT_S = 10.0


class StoreError(RuntimeError):
    """The tracking store cannot be used; the message says which and what to do."""


def tracking_uri(state: Path | None = None) -> str:
    move_http_credentials()
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    state = state or home()
    state.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{state / 'mlflow.db'}"


def artifact_root(state: Path | None = None) -> str:
    return str((state or home()) / "mlartifacts")


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def client():
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


# --- the store, checked and created before any work -------------------------------------

def _store_timeout() -> float:
    return float(os.environ.get("PREFDESK_STORE_TIMEOUT", DEFAULT_TIMEOUT_S))


def no_space(exc: BaseException) -> bool:
    """ENOSPC anywhere in the exception chain, or SQLite's word for it."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "database or disk is full" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _probe_writable(folder: Path) -> None:
    """Create, fill and remove a small file: the folder takes writes now."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".prefdesk-probe-{os.getpid()}"
        try:
            with open(probe, "wb") as fh:
                fh.write(b"\0" * 65536)
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            probe.unlink(missing_ok=True)
    except OSError as exc:
        if no_space(exc):
            raise StoreError(f"no space left on {folder} (the MLflow store): free some space, "
                             "or set PREFDESK_HOME to a folder on another disk") from None
        raise StoreError(f"the MLflow store folder {folder} is not writable ({exc.strerror}): "
                         "fix its permissions, or set PREFDESK_HOME to a writable folder") from None




def _schema_state(db: Path) -> tuple[str | None, int]:
    """(alembic revision, rows of user data) of a SQLite store, read without MLflow."""
    import sqlite3

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=_store_timeout())
    try:
        tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        rev = con.execute("select version_num from alembic_version").fetchone() if "alembic_version" in tables else None
        rows = sum(con.execute(f"select count(*) from {t}").fetchone()[0]
                   for t in ("runs", "registered_models") if t in tables)
        return (rev[0] if rev else None), rows
    finally:
        con.close()


def _head_revision() -> str:
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


def _create_sqlite_store(db: Path) -> None:
    """Build the whole schema in a file beside `db`, then rename it into place."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    tmp = db.with_name(f".{db.name}.creating-{os.getpid()}")
    leftovers = [tmp, tmp.with_name(tmp.name + "-journal"), tmp.with_name(tmp.name + "-wal")]
    chatty = [logging.getLogger(n) for n in ("mlflow.store.db.utils", "alembic.runtime.migration")]
    levels = [lg.level for lg in chatty]
    try:
        for lg in chatty:  # 'Creating initial MLflow database tables...' is not news to the user
            lg.setLevel(logging.WARNING)
        store = SqlAlchemyStore(f"sqlite:///{tmp}", artifact_root())
        store.engine.dispose()
        os.replace(tmp, db)
    except Exception as exc:
        if no_space(exc):
            raise StoreError(f"no space left on {db.parent} while creating the MLflow store {db}: "
                             "free some space, or set PREFDESK_HOME to a folder on another disk") from None
        raise StoreError(f"cannot create the MLflow store {db}: {type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:300]}") from None
    finally:
        for lg, level in zip(chatty, levels):
            lg.setLevel(level)
        for p in leftovers:
            p.unlink(missing_ok=True)


def prepare_sqlite_store(db: Path, write: bool = True) -> None:
    """A usable SQLite store at `db`: created atomically, or a half-made one set aside.

    A store whose schema is not MLflow's current one but holds no run and no model is what a
    crash during creation leaves (before this existed: 'table webhooks already exists' on every
    later call); it is renamed to `*.broken-<time>` and built again. One that holds data is
    never touched: the message says how to upgrade it.
    """
    if write:
        _probe_writable(db.parent)
    elif not db.exists():
        raise StoreError(f"no MLflow store at {db} yet: run `prefdesk run` or `prefdesk train` first")
    # concurrent first runs create the store once
    with file_lock(db.with_name(f".{db.name}.lock")) if write else contextlib.nullcontext():
        if db.exists() and db.stat().st_size > 0:
            try:
                revision, rows = _schema_state(db)
            except Exception as exc:
                raise StoreError(f"the MLflow store {db} cannot be read ({' '.join(str(exc).split())}): "
                                 "move it away to start a new store") from None
            head = _head_revision()
            if revision == head:
                return
            if rows or not write:
                raise StoreError(
                    f"the MLflow store {db} has schema {revision}, this MLflow expects {head}: back it up, "
                    f"then run `mlflow db upgrade sqlite:///{db}`")
            aside = db.with_name(f"{db.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(db, aside)
            logging.getLogger("prefdesk").warning(
                "the MLflow store %s was half-made (schema %s, no runs): set aside as %s, creating it again",
                db, revision, aside.name)
        _create_sqlite_store(db)


def _bounded(fn: Callable[[], T], timeout: float, what: str) -> T:
    """Run `fn` in a daemon thread and give up after `timeout` s (a hung database or proxy)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    t = threading.Thread(target=target, name="prefdesk-store-check", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise StoreError(f"{what} did not answer within {timeout:g} s: check that it is up and "
                         "reachable (PREFDESK_STORE_TIMEOUT sets this limit)")
    if "error" in box:
        raise box["error"]
    return box["value"]


@contextlib.contextmanager
def quick_http(timeout: float, retries: int = 0) -> Iterator[None]:
    """MLflow's REST client with few retries and a short timeout (its defaults retry for minutes)."""
    names = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries), "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, int(timeout)))}
    old = {k: os.environ.get(k) for k in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _explain(exc: BaseException, shown: str, timeout: float) -> StoreError | None:
    """A one-line reason for a failed round trip to a tracking server, or None if not one."""
    chain, seen = [], exc
    while seen is not None:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    names = {type(e).__name__ for e in chain}
    if "ConnectionRefusedError" in names:
        return StoreError(f"cannot reach the MLflow tracking server {shown}: connection refused. Start it, "
                          "or point MLFLOW_TRACKING_URI at a running one (unset it for the local store)")
    if "gaierror" in names or "NameResolutionError" in names:
        return StoreError(f"cannot reach the MLflow tracking server {shown}: its host name does not resolve")
    if names & {"ReadTimeout", "ConnectTimeout", "Timeout", "TimeoutError", "ReadTimeoutError", "timeout"}:
        return StoreError(f"the MLflow tracking server {shown} did not answer within {timeout:g} s: check that it "
                          "is up (PREFDESK_STORE_TIMEOUT sets this limit)")
    if names & {"ConnectionError", "NewConnectionError", "MaxRetryError", "SSLError"}:
        return StoreError(f"cannot reach the MLflow tracking server {shown}: "
                          f"{' '.join(redact(chain[-1]).split())[:200]}")
    code = getattr(exc, "get_http_status_code", lambda: None)()
    if code in (401, 403):
        return StoreError(f"the MLflow tracking server {shown} refused the credentials (HTTP {code}): check "
                          "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN")
    return None


def _probe_http(uri: str, shown: str, timeout: float) -> None:
    """One plain request to a tracking server before MLflow is even imported (seconds on a busy
    machine): refused, unresolvable, silent or refusing the credentials fails here. Anything
    else (TLS with a private CA, a proxy's quirk) is left to MLflow's own client to judge."""
    import base64
    import urllib.error
    import urllib.request

    req = urllib.request.Request(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        req.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
    elif user:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password or ''}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout):
            return
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise StoreError(f"the MLflow tracking server {shown} refused the credentials (HTTP {exc.code}): check "
                             "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN") from None
        return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        explained = _explain(reason if isinstance(reason, BaseException) else exc, shown, timeout)
        if explained is not None:
            raise explained from None


def check_store(experiment: str | None = None, write: bool = True, timeout: float | None = None) -> str:
    """The tracking store is reachable, writable and has a usable schema, within `timeout` s.

    With an experiment and `write`, creates it (tagged as a training experiment) as the write
    that proves it; a local store's folder is probed with a real write in any case. Returns
    the experiment id ('' when none); raises `StoreError` with a one-line reason otherwise.
    """
    timeout = timeout or _store_timeout()
    uri = tracking_uri()
    shown = redact(uri)
    # Cheap checks first: MLflow's import alone takes seconds on a busy machine.
    if uri.startswith(("http://", "https://")):
        _probe_http(uri, shown, timeout)
    db = sqlite_path(uri)
    if db is not None:
        prepare_sqlite_store(db, write=write)  # probes the folder before it imports MLflow
    elif uri.startswith(("file:", "/")) or "://" not in uri:
        _probe_writable(Path(uri.removeprefix("file://")))
    import mlflow.tracking  # noqa: F401  (imported here, outside the server's time budget)

    def round_trip() -> str:
        if write and experiment:
            return ensure_experiment(experiment)  # the write that proves it
        c = client()
        if experiment:
            exp = c.get_experiment_by_name(experiment)
            return exp.experiment_id if exp else ""
        c.search_experiments(max_results=1)
        return ""

    try:
        with quick_http(timeout):
            return _bounded(round_trip, timeout, f"the MLflow tracking store {shown}")
    except StoreError:
        raise
    except Exception as exc:
        explained = _explain(exc, shown, timeout)
        if explained is not None:
            raise explained from None
        if no_space(exc):
            raise StoreError(f"no space left on the MLflow store {shown}") from None
        raise StoreError(f"the MLflow tracking store {shown} cannot be used: {type(exc).__name__}: "
                         f"{' '.join(redact(exc).split())[:300]}") from None


def ensure_experiment(name: str) -> str:
    """The experiment's id, created if missing; tagged so MLflow's UI opens it as training."""
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is None:
        from mlflow.exceptions import MlflowException

        # A local store keeps artifacts under PREFDESK_HOME; a tracking server chooses its own place.
        local = "://" not in tracking_uri() or tracking_uri().startswith(("sqlite:", "file:"))
        try:
            return c.create_experiment(name, artifact_location=Path(artifact_root()).as_uri() if local else None,
                                       tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException:  # created meanwhile by a concurrent first run
            exp = c.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        c.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


# --- runs: who owns them, and one place that opens and closes them -----------------------

def _process_start(pid: int) -> str:
    """The kernel's start time of `pid` (ticks since boot): with the pid, names one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[1].split()
    return "" if fields[0] == "Z" else fields[19]


def process_tags() -> dict[str, str]:
    return {"prefdesk.host": socket.gethostname(), "prefdesk.pid": str(os.getpid()),
            "prefdesk.pid_start": _process_start(os.getpid())}


def _alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if Path("/proc").is_dir():
        now = _process_start(pid)
        return bool(now) and (not start or now == start)
    return True


def reap_stale_runs(experiment_id: str) -> list[Any]:
    """Mark KILLED the RUNNING runs of this host whose process is gone; returns those runs."""
    c = client()
    host = socket.gethostname()
    runs = c.search_runs([experiment_id], filter_string=f"attributes.status = 'RUNNING' and tags.`prefdesk.host` = '{host}'",
                         max_results=500)
    stale = []
    for run in runs:
        tags = run.data.tags
        try:
            pid = int(tags.get("prefdesk.pid", ""))
        except ValueError:
            continue
        if _alive(pid, tags.get("prefdesk.pid_start", "")):
            continue
        c.set_tag(run.info.run_id, "prefdesk.ended", f"marked KILLED by a later run: its process {pid} on {host} was gone")
        c.set_terminated(run.info.run_id, status="KILLED")
        stale.append(run)
    return stale


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

        ts = int(time.time() * 1000)
        self._client.log_batch(
            self.run_id, metrics=[Metric(k, v, ts, step or 0) for k, v in clean.items()]
        )

    def log_params(self, params: dict[str, object]) -> None:
        if self._client is None:
            return
        from mlflow.entities import Param

        items = [Param(k, redact(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._client.log_batch(self.run_id, params=items[i : i + 100])

    def set_tags(self, tags: dict[str, str]) -> None:
        if self._client is None:
            return
        for k, v in tags.items():
            self._client.set_tag(self.run_id, k, redact(v))

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        if self._client is None:
            return
        if Path(path).is_dir():
            self._client.log_artifacts(self.run_id, path, artifact_path)
        else:
            self._client.log_artifact(self.run_id, path, artifact_path)


def start_run(experiment: str, run_name: str | None = None, tags: dict[str, str] | None = None) -> str:
    """Create a run explicitly (not `mlflow.start_run`), so any thread can log to it by id.

    Runs of this host left RUNNING by a dead process are marked KILLED first."""
    c = client()
    experiment_id = ensure_experiment(experiment)
    reap_stale_runs(experiment_id)
    run = c.create_run(experiment_id, run_name=run_name, tags={**process_tags(), **(tags or {})})
    return run.info.run_id


def end_run(run_id: str, status: str = "FINISHED") -> None:
    if status == "FINISHED":
        client().set_terminated(run_id, status=status)
        return
    # A failing or cancelled command must still end within seconds, server or no server.
    with quick_http(5):
        _bounded(lambda: client().set_terminated(run_id, status=status), 10, "the MLflow tracking store")


@contextlib.contextmanager
def tracked_run(experiment: str, run_name: str, tags: dict[str, str] | None = None,
                params: dict[str, object] | None = None) -> Iterator[Tracker]:
    """An MLflow run that always ends: FINISHED, FAILED on an error, KILLED on Ctrl-C/SIGTERM.

    The one place runs are opened and closed (the nightly flow and `prefdesk train`)."""
    run_id = start_run(experiment, run_name=run_name, tags=tags)
    status = "FAILED"
    try:
        tracker = Tracker(run_id)
        if params:
            tracker.log_params(params)
        yield tracker
        status = "FINISHED"
    except BaseException as exc:
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SIGTERM, a Prefect cancellation
            status = "KILLED"
        try:
            end_run(run_id, status)
        except Exception as end_exc:  # never hide the first error behind the second
            logging.getLogger("prefdesk").warning("could not mark MLflow run %s %s: %s", run_id, status,
                                                  redact(end_exc))
        raise
    end_run(run_id, status)
