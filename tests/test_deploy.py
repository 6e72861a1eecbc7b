"""The nightly deployment on a real Prefect server on loopback (never the temporary one, which
schedules nothing): `prefect deploy --all` takes deployments/prefect.yaml as written, and
`prefdesk serve` serves the same deployment and runs what the API asks of it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from prefdesk.cli import nightly_deployment
from prefdesk.lifecycle import free_port, wait_http

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.name=tiny", "model.dtype=fp32", "train.params.max_steps=2", "train.params.batch_size=2", "data.limit=8",
        "eval.max_new_tokens=4", "eval.max_prompts=2", "eval.batch_size=4", "registry.model_name=serve-policy"]
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="servers as child processes and signals")


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    """A clean environment: no Prefect/MLflow settings of the caller, state under `tmp`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    env.update(PREFDESK_HOME=str(tmp / "home"), PREFECT_HOME=str(tmp / "prefect"), HF_HUB_OFFLINE="1",
               PYTHONPATH=str(ROOT), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false",
               TOKENIZERS_PARALLELISM="false", **extra)
    return env


def api(url: str, path: str, body: dict | None = None) -> dict | list:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method="GET" if body is None else "POST",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A real `prefect server start` on a free loopback port, its PREFECT_HOME in tmp."""
    tmp = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = _env(tmp)
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health", proc, 180)
        yield f"http://127.0.0.1:{port}/api", env
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def deployed(prefect_server):
    """deployments/prefect.yaml deployed as its header says: the pool, then `prefect deploy --all`."""
    url, env = prefect_server
    env = {**env, "PREFECT_API_URL": url}
    subprocess.run([sys.executable, "-m", "prefect", "work-pool", "create", "prefdesk", "--type", "process"],
                   env=env, cwd=ROOT, check=True, capture_output=True, timeout=120)
    res = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all",
                          "--prefect-file", "deployments/prefect.yaml"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return url, env


def test_prefect_yaml_deploys_as_written(deployed):
    url, env = deployed
    spec = nightly_deployment()
    dep = api(url, f"/deployments/name/prefdesk-nightly/{spec['name']}")
    assert dep["entrypoint"] == "flows/nightly.py:nightly" and dep["work_pool_name"] == "prefdesk"
    [sched] = dep["schedules"]
    assert (sched["schedule"]["cron"], sched["schedule"]["timezone"], sched["active"]) == ("0 2 * * *", "UTC", True)
    assert dep["global_concurrency_limit"]["limit"] == 1
    assert dep["parameters"] == {"config_path": None, "overrides": []}
    assert dep["job_variables"]["env"]["HF_HUB_OFFLINE"] == "1"
    # the scheduler has put the next nights on the calendar
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        runs = api(url, "/flow_runs/filter", {"deployments": {"id": {"any_": [dep["id"]]}},
                                              "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}})
        if runs:
            break
        time.sleep(2)
    assert runs and all(r["expected_start_time"][11:16] == "02:00" for r in runs)


def test_a_process_worker_runs_the_deployed_yaml_from_prefdesk_repo(deployed, tmp_path):
    """The YAML's pull step and entrypoint work: a worker of the pool, in another folder,
    with PREFDESK_REPO naming the repository, runs a flow run asked through the API."""
    url, env = deployed
    dep = api(url, f"/deployments/name/prefdesk-nightly/{nightly_deployment()['name']}")
    run = api(url, f"/deployments/{dep['id']}/create_flow_run", {"parameters": {"overrides": TINY}})
    worker_env = {**env, "PREFDESK_REPO": str(ROOT), "PREFDESK_HOME": str(tmp_path / "home")}
    res = subprocess.run([sys.executable, "-m", "prefect", "worker", "start", "--pool", "prefdesk", "--run-once"],
                         env=worker_env, cwd=tmp_path, capture_output=True, text=True, timeout=420)
    state = api(url, f"/flow_runs/{run['id']}")["state"]
    assert state["type"] == "COMPLETED", (state, res.stdout[-3000:], res.stderr[-3000:])
    [summary] = (tmp_path / "home" / "runs").glob("*/summary.json")
    assert json.loads(summary.read_text())["flow_run_id"] == run["id"]


def test_serve_starts_a_real_server_serves_the_yaml_deployment_and_runs_it(tmp_path):
    """`prefdesk serve` with no PREFECT_API_URL: its own server (with a scheduler), the YAML's
    deployment, and a run asked through the API finishes."""
    port = free_port()
    env = _env(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "prefdesk.cli", "serve", "--prefect-port", str(port)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_http(f"{url}/health", proc, 180)
        spec = nightly_deployment()
        deadline, dep = time.monotonic() + 120, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                dep = api(url, f"/deployments/name/prefdesk-nightly/{spec['name']}")
                break
            except urllib.error.HTTPError:
                time.sleep(1)
        assert dep is not None, "prefdesk serve created no deployment"
        [sched] = dep["schedules"]
        assert (sched["schedule"]["cron"], sched["schedule"]["timezone"]) == (spec["cron"], spec["timezone"])
        assert dep["global_concurrency_limit"]["limit"] == spec["concurrency_limit"] == 1

        run = api(url, f"/deployments/{dep['id']}/create_flow_run", {"parameters": {"overrides": TINY}})
        deadline, state = time.monotonic() + 420, None
        while time.monotonic() < deadline and proc.poll() is None:
            state = api(url, f"/flow_runs/{run['id']}")["state"]
            if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(2)
        assert state and state["type"] == "COMPLETED", state
        runs = list((tmp_path / "home" / "runs").glob("*/summary.json"))
        assert runs and json.loads(runs[0].read_text())["flow_run_id"] == run["id"]
    finally:
        _stop(proc)
        print(proc.stdout.read()[-3000:] if proc.stdout else "")
    assert proc.returncode is not None
    with pytest.raises(OSError):  # the server it started is gone with it
        urllib.request.urlopen(f"{url}/health", timeout=5)


def test_serve_names_a_taken_port_in_one_line(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = subprocess.run([sys.executable, "-m", "prefdesk.cli", "serve", "--prefect-port", str(port)], env=_env(tmp_path),
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == (
        f"error: port {port} on 127.0.0.1 is taken: if it is `prefdesk ui`'s Prefect server, "
        f"export PREFECT_API_URL=http://127.0.0.1:{port}/api; else choose --prefect-port")


def test_gpu_pool_template_and_k8s_deployment_are_accepted_by_the_server(prefect_server):
    """The Kubernetes GPU pool (deployments/k8s-gpu-job-template.json) as the server takes it,
    and deployments/prefect-k8s-gpu.yaml deployed to it: the server checks the job variables
    against the template's schema. No cluster: nothing runs."""
    url, env = prefect_server
    env = {**env, "PREFECT_API_URL": url}
    template = json.loads((ROOT / "deployments" / "k8s-gpu-job-template.json").read_text())
    api(url, "/work_pools/", {"name": "prefdesk-gpu", "type": "kubernetes", "base_job_template": template})
    res = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all",
                          "--prefect-file", "deployments/prefect-k8s-gpu.yaml"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    dep = api(url, "/deployments/name/prefdesk-nightly/nightly-gpu")
    assert dep["work_pool_name"] == "prefdesk-gpu" and dep["job_variables"]["gpus"] == 4
    assert dep["schedules"][0]["schedule"]["cron"] == nightly_deployment()["cron"]
