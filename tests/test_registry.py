"""The MLflow registry side on a real SQLite store: every version is a real MLflow model that
loads back by its URI in a fresh process, and aliases move only through passed gates."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prefdesk.gates import GateReport, GateResult
from prefdesk.registry import (
    CHALLENGER, CHAMPION, PromotionRefused, alias_version, champion_metrics, promote_version, register_candidate,
    registered_adapter,
)
from prefdesk.tracking import Tracker, client, end_run, start_run, tracking_uri

DATA_HASH = "0123456789abcdef"
PROMPTS = ["Hello", "How do I reset my password?"]


def _gates(ok: bool) -> GateReport:
    return GateReport([GateResult("win_rate", "drift/win_rate", ">=", 0.5, 0.6 if ok else 0.4, ok,
                                  "drift/win_rate = 0.6" if ok else "drift/win_rate = 0.4, outside >= 0.5")])


def _run(win_rate: float) -> str:
    """A run as the flow leaves it before registering: config params, metrics, the dataset input."""
    import mlflow.data
    import pandas as pd
    from mlflow.entities import DatasetInput, InputTag

    run_id = start_run("t")
    t = Tracker(run_id)
    t.log_params({"model.name": "tiny", "train.optimizer": "dpo", "optimizer.beta": 0.1, "optimizer.max_steps": 3})
    t.log_metrics({"drift/win_rate": win_rate})
    ds = mlflow.data.from_pandas(pd.DataFrame({"prompt": ["p"], "chosen": ["c"], "rejected": ["r"]}),
                                 source="pairs.jsonl", name="preference-pairs", digest=DATA_HASH)
    client().log_inputs(run_id, datasets=[DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", "train")])])
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Three candidates of model `m` in a private store: v1 fails its gates, v2 passes (champion),
    v3 passes but is registered with promote=False. Aliases are noted after each step."""
    from prefdesk.config import ModelSettings
    from prefdesk.engine.generate import Sampler
    from prefdesk.models import base_identity, build_policy

    tmp = tmp_path_factory.mktemp("registry")
    mp = pytest.MonkeyPatch()
    mp.setenv("PREFDESK_HOME", str(tmp / "home"))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    policy = build_policy(ModelSettings(name="tiny", dtype="fp32"), seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a trained-looking adapter: one that changes the answers
        for n, prm in policy.model.named_parameters():
            if "lora_B" in n:
                prm.copy_(torch.randn(prm.shape, generator=gen) * 0.5)
    adapter = policy.save_adapter(tmp / "trained" / "adapter")
    sampler = Sampler(policy, progress=False)
    answers = {role: sampler.sample([[{"role": "user", "content": p}] for p in PROMPTS], role=role,
                                    max_new_tokens=4).text for role in ("default", "reference")}
    assert answers["default"] != answers["reference"]
    base = base_identity(ModelSettings(name="tiny"), 0)
    regs, seen = [], []
    for win, ok, promote in ((0.4, False, True), (0.6, True, True), (0.7, True, False)):
        run_id = _run(win)
        regs.append(register_candidate(run_id, adapter, "m", _gates(ok), promote=promote, base=base))
        end_run(run_id)
        seen.append((alias_version("m", CHALLENGER), alias_version("m", CHAMPION)))
    yield {"home": tmp / "home", "regs": regs, "seen": seen, "adapter": adapter, "base": base, "answers": answers}
    mp.undo()


def test_failed_candidate_is_challenger_only_and_cannot_be_promoted(store):
    reg = store["regs"][0]
    assert reg.version == "1" and not reg.promoted and reg.aliases == [CHALLENGER]
    assert store["seen"][0] == ("1", None)
    mv = client().get_model_version("m", "1")
    assert mv.tags["gate_all"] == "0" and mv.tags["gate.win_rate"].startswith("FAIL")
    with pytest.raises(PromotionRefused, match="win_rate"):
        promote_version("m", "1")


def test_passing_candidate_becomes_champion_and_no_promote_leaves_it(store):
    assert store["regs"][1].promoted and store["seen"][1] == ("2", "2")
    assert not store["regs"][2].promoted and store["seen"][2] == ("3", "2")
    assert champion_metrics("m")["drift/win_rate"] == pytest.approx(0.6)


def test_version_points_at_a_logged_model_with_signature_and_example(store):
    c = client()
    reg = store["regs"][1]
    mv = c.get_model_version("m", reg.version)
    assert reg.model_uri.startswith("models:/m-") and mv.source == reg.model_uri
    logged = c.get_logged_model(reg.model_uri.removeprefix("models:/"))  # (the SQLite store keeps no mv.model_id)
    assert logged.source_run_id == mv.run_id and logged.status.to_proto() == 2  # READY
    assert {"name": "m", "version": reg.version} in json.loads(logged.tags["mlflow.modelVersions"])
    assert logged.params["train.optimizer"] == "dpo"
    assert any(o.model_id == logged.model_id for o in c.get_run(mv.run_id).outputs.model_outputs)
    assert mv.tags["base"] == "tiny" and mv.tags["base_sha256"] == store["base"].sha256

    from mlflow.models import get_model_info

    info = get_model_info(f"models:/m/{reg.version}")
    assert info.signature.inputs.to_dict() == [{"type": "string", "required": True}]
    assert [p.name for p in info.signature.params.params] == ["max_new_tokens"]
    assert info.saved_input_example_info["artifact_path"] == "input_example.json"
    assert info.metadata["prefdesk"]["base"] == {"name": "tiny", "sha256": store["base"].sha256, "seed": 0}
    assert info.flavors["python_function"]["config"]["base"]["name"] == "tiny"
    # the run keeps the (portable) adapter too
    assert "adapter" in {a.path for a in c.list_artifacts(mv.run_id)}


def test_registered_adapter_is_portable_and_carries_its_card(store):
    adapter = registered_adapter("m", alias=CHAMPION)
    assert adapter.name == "adapter" and (adapter / "adapter_model.safetensors").is_file()
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "tiny"
    for f in adapter.glob("*.json"):
        if f.name != "tokenizer.json":
            text = f.read_text()
            for local in (str(store["home"]), str(store["adapter"].parent), str(Path.home())):
                assert local not in text, (f.name, local)
    card = (adapter / "README.md").read_text()
    assert "Model Card for Model ID" not in card and "More Information Needed" not in card
    mv = client().get_model_version_by_alias("m", CHAMPION)
    for fact in ("base_model: tiny", store["base"].sha256, "seed 0", DATA_HASH, "| optimizer | dpo |", "| beta | 0.1 |",
                 "| win_rate | drift/win_rate | >= 0.5 | 0.6 | pass |", "gates: **all passed**", mv.run_id,
                 "models:/m@champion"):
        assert fact in card, fact
    assert "FAIL" in (registered_adapter("m", version="1") / "README.md").read_text()


def test_champion_loads_by_uri_in_a_fresh_process_and_answers_as_the_trained_policy(store):
    """What a user types, with only MLflow and the tracking URI: the base comes from prefdesk's
    cache (the tiny one rebuilt from its seed), the adapter from the model; the answers are the
    trained policy's, not the bare base's."""
    code = (
        "import json, sys, mlflow\n"
        "m = mlflow.pyfunc.load_model('models:/m@champion', model_config={'dtype': 'fp32'})\n"
        "print('ANSWERS=' + json.dumps(m.predict(json.loads(sys.argv[1]), params={'max_new_tokens': 4})))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", code, json.dumps(PROMPTS)], env=env, capture_output=True, text=True,
                         timeout=300, cwd=store["home"].parent)
    assert res.returncode == 0, res.stderr[-3000:]
    answers = json.loads(res.stdout.split("ANSWERS=", 1)[1])
    assert answers == store["answers"]["default"]


def test_promote_moves_champion_only_to_passed_versions(store):
    promote_version("m", "3")
    assert alias_version("m", CHAMPION) == "3"
    with pytest.raises(PromotionRefused, match="no version"):
        promote_version("m", "99")
