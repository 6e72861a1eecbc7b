"""The scale-out path (deployments/SCALE_OUT.md), tried as far as one CPU machine allows:
the nightly flow tracked by an MLflow server on PostgreSQL, and data-parallel training under
`accelerate launch` with two processes that trains the tiny model as one process does."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from prefdesk.lifecycle import free_port, wait_http

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.name=tiny", "model.dtype=fp32", "train.params.max_steps=2", "train.params.batch_size=2", "data.limit=8",
        "eval.max_new_tokens=4", "eval.max_prompts=2", "eval.batch_size=4", "registry.model_name=pg-policy"]
# Two processes each taking every other micro-batch, against one process accumulating both:
# the same arithmetic up to the order of float sums (measured: 3e-8 apart). One process
# with half the batch is 2e-4 away after one step, so the tolerance tells them apart.
LOSS_TOLERANCE = 1e-5
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="child servers and Debian packages")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", **extra)
    return env


# --- MLflow on PostgreSQL -----------------------------------------------------------------------

def _pg_bin() -> Path:
    """Debian's PostgreSQL binaries, installed with apt-get when missing (root only); else a plain skip."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                       capture_output=True, timeout=900)
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("PostgreSQL is not installed and cannot be installed here (Debian's postgresql, apt-get as root)")
    return Path(found[-1]).parent


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster on a free loopback port (trust auth, user postgres, db mlflow).
    The driver is named in the URI: SQLAlchemy 2.1 takes plain `postgresql://` to mean psycopg 3."""
    pytest.importorskip("psycopg2", reason="MLflow needs psycopg2 for PostgreSQL (pip install psycopg2-binary)")
    bin_ = _pg_bin()
    as_pg: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser: cannot start PostgreSQL as user postgres")
        as_pg = ["runuser", "-u", "postgres", "--"]
    data = Path(tempfile.mkdtemp(prefix="prefdesk-pg-"))
    if as_pg:
        shutil.chown(data, "postgres", "postgres")
    port = free_port()
    run = lambda *a, **kw: subprocess.run([*as_pg, *a], capture_output=True, text=True, timeout=120, **kw)  # noqa: E731
    res = run(str(bin_ / "initdb"), "-D", str(data / "db"), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    assert res.returncode == 0, res.stderr
    res = run(str(bin_ / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"), "-w", "-t", "120", "-o",
              f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start")
    assert res.returncode == 0, res.stderr + (data / "log").read_text()
    try:
        res = run(str(bin_ / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow")
        assert res.returncode == 0, res.stderr
        yield {"uri": f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow", "port": port, "psql": [*as_pg, str(bin_ / "psql")]}
    finally:
        run(str(bin_ / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "stop")
        shutil.rmtree(data, ignore_errors=True)


def _sql(pg: dict, query: str) -> list[str]:
    res = subprocess.run([*pg["psql"], "-h", "127.0.0.1", "-p", str(pg["port"]), "-U", "postgres", "-d", "mlflow",
                          "-At", "-c", query], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


def test_the_flow_tracks_to_an_mlflow_server_on_postgresql(postgres, tmp_path):
    port = free_port()
    env = _clean_env(PREFDESK_HOME=str(tmp_path / "home"), MLFLOW_BACKEND_STORE_URI=postgres["uri"])
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
                              env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/health", server, 300)
        except RuntimeError as exc:
            pytest.fail(f"{exc}: {server.stderr.read()[-3000:] if server.poll() is not None else ''}")
        run_env = {k: v for k, v in env.items() if k != "MLFLOW_BACKEND_STORE_URI"}
        run_env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{port}"
        sets = [a for s in TINY for a in ("--set", s)]
        res = subprocess.run([sys.executable, "-m", "prefdesk.cli", "run", *sets, "--json"], env=run_env, cwd=ROOT,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        s = json.loads(res.stdout.strip().splitlines()[-1])
        assert s["registry"]["model_name"] == "pg-policy" and "challenger" in s["registry"]["aliases"]
        # what the server wrote is in PostgreSQL: the run, finished, its figures, the version and alias
        assert _sql(postgres, f"select status from runs where run_uuid = '{s['run_id']}'") == ["FINISHED"]
        kl = _sql(postgres, f"select value from latest_metrics where run_uuid = '{s['run_id']}' and key = 'drift/kl_per_token'")
        assert kl and abs(float(kl[0]) - s["drift"]["drift/kl_per_token"]) <= 1e-9 * max(1.0, abs(float(kl[0])))
        assert _sql(postgres, "select version from model_versions where name = 'pg-policy'") == [s["registry"]["version"]]
        assert "challenger" in _sql(postgres, "select alias from registered_model_aliases where name = 'pg-policy'")
        # and its artifacts went through the server to its artifact store, not to PREFDESK_HOME
        assert any((tmp_path / "artifacts").rglob("gates.json"))
    finally:
        from prefdesk.lifecycle import stop

        stop([server], grace_s=30)


# --- accelerate launch: two processes train as one ------------------------------------------------

def _launch(n: int, grad_accum: int, out: Path, env: dict[str, str]) -> dict:
    """`accelerate launch` of deployments/ddp_tiny.py. accelerate 1.15's `--cpu` launcher starts a
    single process whatever `--num_processes` says (its CPU multi-process path is mpirun's); the
    torchrun launcher (`--multi_gpu`) starts `n`, and the engine, whose policy is on CPU, joins
    them over gloo (a GPU machine: the same command, NCCL)."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no"]
    launcher += ["--multi_gpu", "--num_processes", str(n), "--main_process_port", str(free_port())] if n > 1 else \
        ["--cpu", "--num_processes", "1"]
    res = subprocess.run([*launcher, str(ROOT / "deployments" / "ddp_tiny.py"), "--grad-accum", str(grad_accum),
                          "--out", str(out)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(out.read_text())


def test_accelerate_launch_two_processes_train_to_the_loss_of_one(tmp_path):
    env = _clean_env(PREFDESK_HOME=str(tmp_path / "home"))
    one = _launch(1, 2, tmp_path / "one.json", env)
    two = _launch(2, 1, tmp_path / "two.json", env)
    assert (one["processes"], two["processes"]) == (1, 2)
    assert len(one["loss_curve"]) == len(two["loss_curve"]) == 4
    assert one["loss_curve"][-1] < one["loss_curve"][0] - 1e-3, "the tiny model did not learn: nothing to compare"
    for step, (a, b) in enumerate(zip(one["loss_curve"], two["loss_curve"]), 1):
        assert abs(a - b) <= LOSS_TOLERANCE, f"step {step}: one process {a}, two processes {b}"


# --- the cluster files are consistent -------------------------------------------------------------

def test_gpu_job_template_declares_every_variable_the_deployment_and_template_use():
    import re

    import yaml

    from prefdesk.config import load_config

    template = json.loads((ROOT / "deployments" / "k8s-gpu-job-template.json").read_text())
    declared = set(template["variables"]["properties"])
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(template["job_configuration"])))
    assert used <= declared, f"placeholders without a variable: {sorted(used - declared)}"
    assert "nvidia.com/gpu" in json.dumps(template["job_configuration"]["job_manifest"])
    spec = yaml.safe_load((ROOT / "deployments" / "prefect-k8s-gpu.yaml").read_text())
    [dep] = spec["deployments"]
    assert set(dep["work_pool"]["job_variables"]) <= declared
    assert dep["entrypoint"] == "flows/nightly.py:nightly"
    # the GPU config parses and asks for QLoRA; its path inside the image is the repository's
    assert dep["parameters"]["config_path"] == "/opt/prefdesk/deployments/gpu.yaml"
    cfg = load_config(ROOT / "deployments" / "gpu.yaml", [], check=False)
    assert (cfg.model.quantization, cfg.model.dtype) == ("4bit", "bf16")
