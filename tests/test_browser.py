"""Both UIs seen in a real browser: `prefdesk ui` starts the Prefect and MLflow servers on
loopback, `prefdesk run` runs the nightly flow against them, and headless Chromium renders the
pages (JavaScript run, data fetched) that a user would open. The checks read the rendered
text: the flow run and its gate table in Prefect, the registered version with its aliases and
the run's figures in MLflow. Screenshots go under the run folder (`<run_dir>/screenshots`)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

from prefdesk.lifecycle import free_port, wait_http

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.name=tiny", "model.dtype=fp32", "train.params.max_steps=2", "train.params.batch_size=2", "data.limit=8",
        "eval.max_new_tokens=4", "eval.max_prompts=2", "eval.batch_size=4", "registry.model_name=browser-policy"]
# every gate dropped but one any run passes: the version becomes champion as well as challenger
LENIENT = [f"gates.{g}=null" for g in ("moved", "length_inflation", "length_collapse", "over_refusal",
                                        "under_refusal", "factuality", "pair_accuracy", "win_rate",
                                        "under_refusal_abs", "over_refusal_abs", "sycophancy", "distinguishable")] + [
    "gates.kl_budget.bound=100"]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--window-size=1440,1000", "--hide-scrollbars"]
# slow: two servers, a nightly run and eight page renders take a little over 2 minutes on 2 cores
pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform != "linux", reason="Debian's chromium and child servers")]


def chromium() -> str:
    """Debian's `chromium`, installed with apt-get when missing (root only); else a plain skip."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip("chromium is not installed and cannot be installed here (needs apt-get as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    res = subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], env=env, capture_output=True, text=True, timeout=900)
    if res.returncode != 0:  # a stale package list: once more after an update
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=300)
        res = subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], env=env, capture_output=True, text=True, timeout=900)
    found = shutil.which("chromium")
    if not found:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"chromium could not be installed (apt-get install chromium exited {res.returncode}: {last})")
    return found


def _browse(browser: str, url: str, *action: str, budget_ms: int = 20000) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        return subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
                               *action, url], capture_output=True, text=True, timeout=180)


def page_text(browser: str, url: str, expect: list[str]) -> str:
    """The visible text of `url` after its JavaScript has rendered (`--dump-dom`); a slow page
    gets more virtual time, up to three tries, until every `expect` string is there."""
    text = ""
    for budget in (20000, 40000, 80000):
        dom = _browse(browser, url, "--dump-dom", budget_ms=budget).stdout
        dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
        text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())
        if all(e in text for e in expect):
            break
    return text


def screenshot(browser: str, url: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _browse(browser, url, f"--screenshot={path}")
    assert path.exists() and path.stat().st_size > 10_000, f"no screenshot of {url}"
    return path


def js_number(x: float) -> str:
    """How the MLflow UI (JavaScript) prints a figure; the same as Python's repr in this range."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def desk(tmp_path_factory):
    """`prefdesk ui` on free ports and one nightly run against its two servers."""
    browser = chromium()
    tmp = tmp_path_factory.mktemp("browser")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    env.update(PREFDESK_HOME=str(tmp / "home"), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    pport, mport = free_port(), free_port()
    ui = subprocess.Popen([sys.executable, "-m", "prefdesk.cli", "ui", "--prefect-port", str(pport), "--mlflow-port", str(mport)],
                          env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{pport}/api/health", ui, 300)
        wait_http(f"http://127.0.0.1:{mport}/health", ui, 300)
        run_env = {**env, "PREFECT_API_URL": f"http://127.0.0.1:{pport}/api", "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mport}"}
        sets = [a for s in TINY + LENIENT for a in ("--set", s)]
        res = subprocess.run([sys.executable, "-m", "prefdesk.cli", "run", *sets, "--json"], env=run_env, cwd=ROOT,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        summary = json.loads(res.stdout.strip().splitlines()[-1])
        yield {"browser": browser, "prefect": f"http://127.0.0.1:{pport}", "mlflow": f"http://127.0.0.1:{mport}",
               "summary": summary, "shots": Path(summary["run_dir"]) / "screenshots"}
    finally:
        from prefdesk.lifecycle import stop

        stop([ui], grace_s=30)


def test_prefect_ui_shows_the_flow_run_and_its_gate_table(desk):
    b, base, s = desk["browser"], desk["prefect"], desk["summary"]
    flow_run = _get(f"{base}/api/flow_runs/{s['flow_run_id']}")
    run_page = f"{base}/runs/flow-run/{s['flow_run_id']}"
    text = page_text(b, run_page, [flow_run["name"], "Completed"])
    assert flow_run["name"] in text and "Completed" in text and "prefdesk-nightly" in text, text[:2000]

    req = urllib.request.Request(f"{base}/api/artifacts/filter", method="POST", headers={"content-type": "application/json"},
                                 data=json.dumps({"artifacts": {"key": {"any_": ["gates"]},
                                                                "flow_run_id": {"any_": [s["flow_run_id"]]}}}).encode())
    with urllib.request.urlopen(req, timeout=30) as r:
        [artifact] = json.loads(r.read())
    gate_page = f"{base}/artifacts/artifact/{artifact['id']}"
    [gate] = s["gates"]
    text = page_text(b, gate_page, [gate["reason"]])
    # the rendered table: its header, the gate's row, and the flow run it belongs to
    assert "gate passed reason" in text, text[:2000]
    assert f"{gate['name']} true {gate['reason']}" in text, text[:2000]
    assert f"Flow Run {flow_run['name']}" in text
    for name, url in (("prefect-flow-run.png", run_page), ("prefect-gate-table.png", gate_page)):
        print(screenshot(b, url, desk["shots"] / name))


def test_mlflow_ui_shows_the_version_with_its_aliases_and_the_run_figures(desk):
    b, base, s = desk["browser"], desk["mlflow"], desk["summary"]
    reg = s["registry"]
    assert set(reg["aliases"]) == {"champion", "challenger"}
    version_page = f"{base}/#/models/{reg['model_name']}/versions/{reg['version']}"
    text = page_text(b, version_page, ["@ champion", "@ challenger"])
    assert f"{reg['model_name']} Version {reg['version']}" in text, text[:2000]
    assert "@ champion" in text and "@ challenger" in text, text[:2000]
    assert "gate_all 1" in text  # the version's tags: its gates passed

    exp = _get(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name={s['experiment']}")["experiment"]
    run_page = f"{base}/#/experiments/{exp['experiment_id']}/runs/{s['run_id']}"
    figures = {k: v for k, v in s["drift"].items() if k.startswith("drift/") and 1e-4 <= abs(v) < 1e15}
    assert figures, s["drift"]
    text = page_text(b, run_page, [f"{k} {js_number(v)}" for k, v in figures.items()])
    for k, v in figures.items():
        assert f"{k} {js_number(v)}" in text, (k, v, text[:3000])
    assert "gate/all 1" in text and "train/loss" in text
    for name, url in (("mlflow-model-version.png", version_page), ("mlflow-run.png", run_page)):
        print(screenshot(b, url, desk["shots"] / name))
