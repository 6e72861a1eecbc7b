"""Faults a nightly job meets in production, each reproduced for real: a tracking server that is
down or hangs, a store that is read-only, a full disk, SIGTERM, kill -9, concurrent promotions,
and credentials in the tracking URI. Real MLflow stores, real processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prefdesk.cli import app
from prefdesk.redact import move_http_credentials, redact, split_credentials

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cr3t-tok3n-7f1d"
LINUX = sys.platform == "linux"


# --- helpers -------------------------------------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    env.update(PREFDESK_HOME=str(home), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), **extra)
    return env


def _cli(*args: str, env: dict[str, str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "prefdesk.cli", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _processes_of(home: Path) -> list[int]:
    """Live processes started for this PREFDESK_HOME (it is in their environment)."""
    needle = f"PREFDESK_HOME={home}\0".encode()
    found = []
    for p in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (p / "environ").read_bytes() and int(p.name) != os.getpid():
                if (p / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(p.name))
        except OSError:
            continue
    return found


def _wait_gone(home: Path, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _processes_of(home):
            return []
        time.sleep(0.2)
    return _processes_of(home)


def _reap(home: Path) -> None:
    for pid in _processes_of(home):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _unshare_prefix() -> list[str]:
    """A private mount namespace (root, or a user namespace), where a tiny tmpfs is a full disk."""
    if not LINUX:
        pytest.skip("a private tmpfs needs Linux namespaces")
    prefix = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-r", "-m"]
    try:
        ok = subprocess.run([*prefix, "true"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        pytest.skip("unshare is not permitted here: no private tmpfs to fill")
    return prefix


def _on_full_disk(folder: Path, size: str, script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run a shell script with `folder` mounted as a tmpfs of `size` (gone afterwards)."""
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run([*_unshare_prefix(), "sh", "-c", f"mount -t tmpfs -o size={size} tmpfs '{folder}' && {script}"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


# --- credentials ------------------------------------------------------------------------------

def test_credentials_are_redacted_in_any_text():
    text = (f"API request to http://alice:{SECRET}@mlflow.internal:5000/api failed; "
            f"db postgresql://bob:{SECRET}@db/x, https://{SECRET}@host/p?token={SECRET}&page=2")
    out = redact(text)
    assert SECRET not in out
    assert "http://***@mlflow.internal:5000/api" in out and "page=2" in out
    assert split_credentials(f"https://alice:{SECRET}@h:443/x") == ("https://h:443/x", "alice", SECRET)


def test_http_credentials_go_to_mlflow_environment_not_the_uri(monkeypatch):
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"https://alice:{SECRET}@mlflow.example:8443/")
    move_http_credentials()
    assert os.environ["MLFLOW_TRACKING_URI"] == "https://mlflow.example:8443/"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("alice", SECRET)


def test_ui_passes_store_uris_by_environment(monkeypatch, tmp_path):
    from prefdesk.cli import ui_commands

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"postgresql://alice:{SECRET}@db.internal/mlflow")
    cmds = ui_commands(4311, 5011)
    assert all(SECRET not in " ".join(argv) for argv, _ in cmds)
    (prefect_argv, prefect_env), (mlflow_argv, mlflow_env) = cmds
    assert mlflow_env["MLFLOW_BACKEND_STORE_URI"].endswith("@db.internal/mlflow")
    # the Prefect UI must call the API on the port it was given, not on 4200
    assert prefect_env["PREFECT_UI_API_URL"] == "http://127.0.0.1:4311/api"
    assert prefect_env["PREFECT_SERVER_API_PORT"] == "4311"


# --- fail fast: the tracking store ------------------------------------------------------------

@pytest.mark.parametrize("command", [["run", "--set", "model.name=tiny"], ["promote", "1"],
                                     ["train", "--optimizer", "sft", "--data", "embedded:default"]])
def test_unreachable_tracking_server_fails_at_once_naming_it_without_the_secret(command, monkeypatch, tmp_path):
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("PREFDESK_HOME", str(tmp_path / "home"))
    port = _closed_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:{SECRET}@127.0.0.1:{port}/")
    res = CliRunner().invoke(app, command)
    assert res.exit_code == 1
    assert res.output.strip() == (f"error: cannot reach the MLflow tracking server http://127.0.0.1:{port}/: connection "
                                  "refused. Start it, or point MLFLOW_TRACKING_URI at a running one (unset it for the local store)")
    assert not (tmp_path / "home" / "runs").exists()


def test_json_failure_is_a_json_error_object(monkeypatch, tmp_path):
    monkeypatch.setenv("PREFDESK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_closed_port()}/")
    res = CliRunner().invoke(app, ["run", "--json", "--set", "model.name=tiny"])
    obj = json.loads(res.stdout.strip().splitlines()[0])
    assert res.exit_code == 1 and obj["error"].startswith("cannot reach the MLflow tracking server")
    assert obj["status"].startswith("failed: ")


def test_a_server_that_never_answers_fails_within_the_store_timeout(monkeypatch, tmp_path):
    with socket.socket() as hole:  # accepts connections (backlog), never answers
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)
        monkeypatch.setenv("PREFDESK_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("PREFDESK_STORE_TIMEOUT", "2")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{hole.getsockname()[1]}")
        res = CliRunner().invoke(app, ["promote", "1"])
    assert res.exit_code == 1
    assert "did not answer within 2 s" in res.output and "PREFDESK_STORE_TIMEOUT" in res.output


def _sysfs_store(tmp_path: Path) -> str:
    if not Path("/sys/kernel").is_dir():
        pytest.skip("no read-only sysfs here")
    return "sqlite:////sys/prefdesk-store/mlflow.db"  # read-only for root too


def _under_a_file(tmp_path: Path) -> str:
    (tmp_path / "a-file").write_text("not a folder")
    return f"sqlite:///{tmp_path}/a-file/store/mlflow.db"


@pytest.mark.parametrize("store", [_sysfs_store, _under_a_file])
def test_unwritable_store_fails_at_once_naming_the_folder(store, monkeypatch, tmp_path):
    monkeypatch.setenv("PREFDESK_HOME", str(tmp_path / "home"))
    uri = store(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    res = CliRunner().invoke(app, ["promote", "1"])
    assert res.exit_code == 1
    folder = str(Path(uri.removeprefix("sqlite:///")).parent)
    assert res.output.startswith(f"error: the MLflow store folder {folder} is not writable (")
    assert len(res.output.strip().splitlines()) == 1


# --- a full disk never leaves a broken store --------------------------------------------------

def test_full_disk_while_creating_the_store_says_so_and_leaves_nothing_half_made(tmp_path):
    disk = tmp_path / "disk"
    cli = f"'{sys.executable}' -m prefdesk.cli"
    script = (f"{cli} promote 1; echo rc=$?; {cli} promote 1; echo rc=$?; ls -a '{disk}/home'")
    res = _on_full_disk(disk, "200k", script, _env(disk / "home"))
    assert res.stdout.count("rc=1") == 2, res.stdout + res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and all(f"no space left on {disk}/home" in e for e in errors), res.stderr
    assert "already exists" not in res.stderr
    listing = res.stdout.split()
    assert "mlflow.db" not in listing and not [f for f in listing if ".creating-" in f]


def test_a_half_made_store_is_set_aside_and_built_again(tmp_path, monkeypatch):
    """What a full disk left before: a store that MLflow itself can never open again."""
    disk, half = tmp_path / "disk", tmp_path / "half.db"
    make = (f"'{sys.executable}' -c \"from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as S; "
            f"S('sqlite:///{disk}/mlflow.db', '{disk}/a')\" ; cp '{disk}/mlflow.db' '{half}'")
    _on_full_disk(disk, "200k", make, _env(tmp_path / "unused"))
    assert half.exists() and half.stat().st_size > 0
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    broken = tmp_path / "broken.db"
    broken.write_bytes(half.read_bytes())
    for _ in range(2):  # broken for good without the repair
        with pytest.raises(Exception, match="already exists"):
            SqlAlchemyStore(f"sqlite:///{broken}", str(tmp_path / "a"))

    home = tmp_path / "home"
    home.mkdir()
    (home / "mlflow.db").write_bytes(half.read_bytes())
    monkeypatch.setenv("PREFDESK_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from prefdesk.tracking import check_store, client, start_run

    check_store("exp")
    run_id = start_run("exp")
    assert client().get_run(run_id).info.status == "RUNNING"
    assert [p.name for p in home.glob("mlflow.db.broken-*")], "the half-made store is kept aside, not deleted"


def test_outputs_are_written_whole_or_not_at_all(tmp_path):
    disk = tmp_path / "disk"
    code = ("import errno, sys; from pathlib import Path; from prefdesk.atomic import write_json; "
            f"p = Path('{disk}/summary.json'); write_json(p, {{'status': 'old'}}); "
            "\ntry:\n    write_json(p, {'status': 'x' * 400000})\n"
            "except OSError as e:\n    print('errno', e.errno == errno.ENOSPC, e.filename)\n"
            "print(p.read_text()); print(sorted(f.name for f in p.parent.iterdir()))")
    res = _on_full_disk(disk, "64k", f"'{sys.executable}' -c \"{code}\"", _env(tmp_path / "unused"))
    assert f"errno True {disk}/summary.json" in res.stdout, res.stdout + res.stderr
    assert '"status": "old"' in res.stdout and "['summary.json']" in res.stdout


# --- runs of dead processes, concurrent promotions ---------------------------------------------

def test_runs_left_running_by_a_dead_process_are_marked_killed(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFDESK_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from prefdesk.tracking import client, ensure_experiment, process_tags, start_run

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    c = client()
    exp = ensure_experiment("e")
    ghost = c.create_run(exp, tags={**process_tags(), "prefdesk.pid": str(dead.pid)}).info.run_id
    alive = c.create_run(exp, tags=process_tags()).info.run_id  # this process: still running
    new = start_run("e")
    assert c.get_run(ghost).info.status == "KILLED"
    assert "was gone" in c.get_run(ghost).data.tags["prefdesk.ended"]
    assert c.get_run(alive).info.status == "RUNNING" and c.get_run(new).info.status == "RUNNING"


def test_tracked_run_ends_killed_on_ctrl_c_and_failed_on_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFDESK_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from prefdesk.lifecycle import Terminated
    from prefdesk.tracking import client, tracked_run

    ids = {}
    for exc, status in ((Terminated("SIGTERM"), "KILLED"), (ValueError("bad"), "FAILED")):
        with pytest.raises(type(exc)):
            with tracked_run("e", "r") as t:
                ids[status] = t.run_id
                raise exc
    with tracked_run("e", "r", params={"a": 1}) as t:
        ids["FINISHED"] = t.run_id
    for status, run_id in ids.items():
        assert client().get_run(run_id).info.status == status


def test_six_concurrent_promotions_leave_one_consistent_champion(tmp_path, monkeypatch):
    from prefdesk.gates import GateReport, GateResult
    from prefdesk.registry import CHAMPION, alias_version, register_artifact
    from prefdesk.tracking import client, end_run, start_run

    home = tmp_path / "home"
    monkeypatch.setenv("PREFDESK_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ok = GateReport([GateResult("win_rate", "drift/win_rate", ">=", 0.5, 0.6, True, "ok")])
    for _ in range(6):
        run = start_run("t")
        end_run(run)
        register_artifact(run, "adapter", "m", ok, promote=False)
    procs = [_cli("promote", str(v), "--model", "m", env=_env(home)) for v in range(1, 7)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, results
    champion = alias_version("m", CHAMPION)
    assert champion in {str(v) for v in range(1, 7)}
    assert str(client().get_registered_model("m").aliases[CHAMPION]) == champion
    holders = [str(v) for v in range(1, 7) if CHAMPION in client().get_model_version("m", str(v)).aliases]
    assert holders == [champion]


# --- signals: SIGTERM ends a command within seconds; kill -9 leaves no server behind -----------

@pytest.mark.skipif(not LINUX, reason="signals and /proc")
def test_sigterm_while_waiting_on_the_tracking_server_ends_at_once(tmp_path):
    home = tmp_path / "home"
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)
        hole.settimeout(120)
        env = _env(home, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{hole.getsockname()[1]}", PREFDESK_STORE_TIMEOUT="300")
        proc = _cli("run", "--set", "model.name=tiny", env=env)
        conn, _ = hole.accept()  # the command is now waiting on the server's answer
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        waited = time.monotonic() - t0
        conn.close()
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "error: cancelled (SIGTERM)"
    assert waited < 10


TINY = ["--set", "model.name=tiny", "--set", "model.dtype=fp32", "--set", "train.params.batch_size=2",
        "--set", "data.limit=8", "--set", "eval.max_new_tokens=4",
        "--set", "eval.max_prompts=2", "--set", "registry.model_name=tiny-policy"]


def _mlflow_runs(home: Path) -> list[tuple[str, str, dict[str, str]]]:
    import sqlite3

    db = home / "mlflow.db"
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        runs = con.execute("select run_uuid, status from runs order by start_time").fetchall()
        tags = con.execute("select run_uuid, key, value from tags").fetchall()
    finally:
        con.close()
    return [(rid, status, {k: v for r, k, v in tags if r == rid}) for rid, status in runs]


def _flow_run_state(home: Path, flow_run_id: str) -> str | None:
    import sqlite3

    con = sqlite3.connect(f"file:{home / 'prefect' / 'prefect.db'}?mode=ro", uri=True, timeout=30)
    try:
        row = con.execute("select state_type from flow_run where replace(id, '-', '') = ?",
                          (flow_run_id.replace("-", ""),)).fetchone()
    finally:
        con.close()
    return row[0] if row else None


def _task_running(home: Path, name: str) -> bool:
    import sqlite3

    db = home / "prefect" / "prefect.db"
    if not db.exists():
        return False
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("select count(*) from task_run where name like ? and state_type = 'RUNNING'",
                               (f"{name}-%",)).fetchone()[0] > 0
        finally:
            con.close()
    except sqlite3.Error:
        return False


def _wait_for(what, proc: subprocess.Popen, seconds: float = 600):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(f"the command ended first: {proc.returncode} {proc.communicate()}")
        time.sleep(0.5)
    raise AssertionError("timed out")


@pytest.mark.skipif(not LINUX, reason="signals and /proc")
def test_sigterm_and_kill9_leave_no_server_and_no_run_running(tmp_path):
    """SIGTERM in training: ends in seconds, runs cancelled, server stopped. kill -9: the server
    dies with the command; the next run marks the dead one's runs KILLED (MLflow), Crashed (Prefect)."""
    home = tmp_path / "home"
    env = _env(home)
    args = ["run", *TINY, "--set", "train.params.max_steps=100000"]
    try:
        # 1. SIGTERM while training
        proc = _cli(*args, env=env)
        _wait_for(lambda: _task_running(home, "train"), proc)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert time.monotonic() - t0 < 20
        assert proc.returncode == 143 and err.strip().splitlines()[-1] == "error: cancelled (SIGTERM)", err[-2000:]
        assert _wait_gone(home, 10) == [], "a server outlived the command"
        [(run_id, status, tags)] = _mlflow_runs(home)
        assert status == "KILLED"
        assert _flow_run_state(home, tags["prefdesk.flow_run_id"]) == "CANCELLED"
        summary = json.loads((Path(tags["prefdesk.run_dir"]) / "summary.json").read_text())
        assert summary["status"] == "cancelled: SIGTERM"

        # 2. kill -9 once its run is open: nothing of it may live on
        proc = _cli(*args, env=env)
        _wait_for(lambda: len(_mlflow_runs(home)) == 2, proc)
        proc.kill()
        proc.communicate()
        assert _wait_gone(home, 15) == [], "the Prefect server was orphaned by kill -9"
        killed_id, status, killed_tags = _mlflow_runs(home)[1]
        assert status == "RUNNING"  # nobody could mark it: its process is gone

        # 3. the next run marks the dead run's records, then is stopped too
        proc = _cli(*args, env=env)
        _wait_for(lambda: len(_mlflow_runs(home)) == 3, proc)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        runs = {rid: (status, tags) for rid, status, tags in _mlflow_runs(home)}
        assert runs[killed_id][0] == "KILLED" and "was gone" in runs[killed_id][1]["prefdesk.ended"]
        assert list(runs.values())[2][1]["prefdesk.after_killed_runs"] == killed_id
        assert _flow_run_state(home, killed_tags["prefdesk.flow_run_id"]) == "CRASHED"
        assert [s for s, _ in runs.values()] == ["KILLED"] * 3
        assert _wait_gone(home, 10) == []
    finally:
        _reap(home)


def _free_port() -> int:
    return _closed_port()


@pytest.mark.skipif(not LINUX, reason="/proc")
def test_a_secret_in_the_tracking_uri_appears_in_no_output_file_or_command_line(tmp_path):
    """A whole nightly run through an MLflow server reached as http://user:SECRET@host."""
    home, server_dir = tmp_path / "home", tmp_path / "server"
    server_dir.mkdir()
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{server_dir}/mlflow.db",
                               "--artifacts-destination", str(server_dir / "artifacts"), "--workers", "1"],
                              env=_env(server_dir / "not-prefdesk"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        from prefdesk.lifecycle import wait_http

        wait_http(f"http://127.0.0.1:{port}/health", server, 180)
        env = _env(home, MLFLOW_TRACKING_URI=f"http://alice:{SECRET}@127.0.0.1:{port}/")
        proc = _cli("run", "--json", *TINY, "--set", "train.params.max_steps=2", env=env)
        command_lines = set()
        while proc.poll() is None:  # every command line of the run's processes, as `ps` shows them
            for pid in _processes_of(home):
                try:
                    command_lines.add(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
                except OSError:
                    pass
            time.sleep(0.3)
        out, err = proc.communicate()
        assert proc.returncode == 0, err[-3000:]
        assert json.loads(out.strip().splitlines()[-1])["status"].startswith(("registered", "promoted"))
        assert any("uvicorn" in c for c in command_lines), "the sampling saw the Prefect server"
        assert not [c for c in command_lines if SECRET in c]
        assert SECRET not in out and SECRET not in err
        leaked = [str(p) for folder in (home, server_dir) for p in folder.rglob("*")
                  if p.is_file() and SECRET.encode() in p.read_bytes()]
        assert not leaked, leaked
    finally:
        server.terminate()
        server.wait(timeout=30)
        _reap(home)


@pytest.mark.skipif(not LINUX, reason="signals and /proc")
def test_ui_serves_prefect_on_its_port_and_sigterm_stops_both_servers(tmp_path):
    home = tmp_path / "home"
    prefect_port, mlflow_port = _free_port(), _free_port()
    proc = _cli("ui", "--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port), env=_env(home))
    try:
        from prefdesk.lifecycle import wait_http

        wait_http(f"http://127.0.0.1:{mlflow_port}/health", proc, 300)
        wait_http(f"http://127.0.0.1:{prefect_port}/api/health", proc, 300)
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{prefect_port}/ui-settings", timeout=30) as r:
            assert json.loads(r.read())["api_url"] == f"http://127.0.0.1:{prefect_port}/api"
        assert len(_processes_of(home)) >= 3  # prefdesk ui and its two servers
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 143 and "cancelled (SIGTERM)" in err
        assert _wait_gone(home, 15) == [], "a UI server outlived `prefdesk ui`"

        from prefdesk.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG
        import sqlite3

        con = sqlite3.connect(home / "mlflow.db")
        assert con.execute("select value from experiment_tags where key = ?", (EXPERIMENT_KIND_TAG,)).fetchall() == [
            (EXPERIMENT_KIND,)]
        con.close()
    finally:
        _reap(home)
