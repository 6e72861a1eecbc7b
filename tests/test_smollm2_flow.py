"""The whole nightly flow on the real SmolLM2-135M-Instruct, with a small budget."""

import pytest
from typer.testing import CliRunner

pytestmark = pytest.mark.slow


def test_cli_run_on_smollm2(tmp_path, monkeypatch):
    import json

    from prefect.testing.utilities import prefect_test_harness

    from prefdesk.cli import app
    from prefdesk.registry import CHALLENGER, alias_version

    monkeypatch.setenv("PREFDESK_HOME", str(tmp_path))
    args = ["run", "--json", "--set", "train.params.max_steps=4", "--set", "train.params.batch_size=2",
            "--set", "data.limit=16",
            "--set", "eval.max_prompts=6", "--set", "eval.max_new_tokens=24"]
    with prefect_test_harness(server_startup_timeout=120):
        res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["model"] == "smollm2-135m-instruct"
    assert summary["data"]["passed"], summary["data"]["failed"]
    assert alias_version("prefdesk-policy", CHALLENGER) == summary["registry"]["version"]
    d = summary["drift"]
    assert d["drift/kl_per_token"] > 0, "four DPO steps must move the policy off the reference"
    assert d["drift/mean_length"] > 0 and d["reference/drift/mean_length"] > 0
    assert {g["name"] for g in summary["gates"]} >= {"kl_budget", "over_refusal", "factuality", "win_rate"}
