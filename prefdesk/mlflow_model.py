"""A candidate as a real MLflow model, so a user loads it back by its URI on any machine:

    mlflow.pyfunc.load_model("models:/prefdesk-policy@champion").predict(["How do I ...?"])

The model is a pyfunc logged from code (`_MODEL_CODE` imports `PolicyModel`; nothing is
pickled), with the LoRA adapter as its one artifact. It does not carry the base weights:
its `model_config` names the base portably (`BaseIdentity`: name and weights digest, the
seed for the tiny test model), and `load_context` finds that base through prefdesk's model
cache, checks the digest and fails with a clear message when the base is missing or
different. The adapter travels ready to move: its `adapter_config.json` names the base
portably instead of a folder of the training machine, and its README is a card that says
what it is (base, data, optimizer, gates, run), not the PEFT template.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.pyfunc import PythonModel

from prefdesk.gates import GateReport
from prefdesk.models import BaseIdentity

ADAPTER = "adapter"  # the artifact key, and the adapter's folder name inside the model
LOGGED_NAME = "policy"  # the logged model's name within its run
MAX_NEW_TOKENS = 64
# MLflow loads the model and answers this at logging: a short budget keeps that check cheap.
INPUT_EXAMPLE = (["How do I reset my password?"], {"max_new_tokens": 8})
_REQUIREMENTS = ("prefdesk", "mlflow", "torch", "transformers", "peft", "accelerate", "safetensors")

# Code-based logging: MLflow copies this file into the model and runs it at load time.
_MODEL_CODE = '''"""prefdesk's tuned policy as an MLflow pyfunc model (logged from code: nothing is pickled)."""
from mlflow.models import set_model

from prefdesk.mlflow_model import PolicyModel

set_model(PolicyModel())
'''


class PolicyModel(PythonModel):
    """Base (resolved by identity) + LoRA adapter; `predict` answers prompts greedily.

    `model_config` holds `base` (the identity, written at logging) and what a user may
    override at load (`load_model(uri, model_config={...})`; MLflow accepts only keys that
    were logged): `base_path` (a folder holding the base), `dtype`, `quantization`, `batch_size`.

    The signature is given at logging, not inferred from type hints (a DataFrame hint is one
    MLflow infers nothing from): inferring would run the model on the example once more, and
    would make the example's token budget the default.
    """

    def load_context(self, context) -> None:
        from prefdesk.config import ModelSettings
        from prefdesk.engine.generate import Sampler
        from prefdesk.models import build_policy, resolve_base

        cfg = dict(context.model_config or {})
        if "base" not in cfg:
            raise ValueError("this model's config names no base: it was not logged by prefdesk")
        ident = BaseIdentity.from_dict(cfg["base"])
        settings = ModelSettings(name=resolve_base(ident, cfg.get("base_path") or None),
                                 dtype=cfg.get("dtype", "auto"), quantization=cfg.get("quantization", "auto"))
        policy = build_policy(settings, adapter=context.artifacts[ADAPTER], trainable=False, seed=ident.seed or 0)
        self.sampler = Sampler(policy, max_new_tokens=MAX_NEW_TOKENS, batch_size=int(cfg.get("batch_size", 8)),
                               progress=False)

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        """One greedy answer per prompt (a user turn each), in order."""
        budget = int((params or {}).get("max_new_tokens", MAX_NEW_TOKENS))
        prompts = [[{"role": "user", "content": p}] for p in prompts_of(model_input)]
        return self.sampler.sample(prompts, temperature=0.0, max_new_tokens=budget, desc="answering").text


def prompts_of(model_input: Any) -> list[str]:
    """The prompts in what pyfunc hands over: a one-column DataFrame (MLflow's form of a list
    or a string), a `prompt` column, or a plain list; a cell holding a list is several prompts."""
    if isinstance(model_input, pd.DataFrame):
        if "prompt" in model_input.columns:
            cells = model_input["prompt"].tolist()
        elif model_input.shape[1] == 1:
            cells = model_input.iloc[:, 0].tolist()
        else:
            raise ValueError(f"expected one column of prompts (or a 'prompt' column), got {list(model_input.columns)}")
    else:
        cells = [model_input] if isinstance(model_input, str) else list(model_input)
    out: list[str] = []
    for c in cells:
        if hasattr(c, "tolist"):  # a numpy array in a cell
            c = c.tolist()
        for item in c if isinstance(c, (list, tuple)) else [c]:
            if not isinstance(item, str):
                raise ValueError(f"a prompt must be a string, got {type(item).__name__}: {item!r}")
            out.append(item)
    return out


@dataclass
class CardFacts:
    """What the adapter's card says, gathered at registration."""

    base: BaseIdentity
    run_id: str
    model_name: str
    gates: GateReport
    data_hash: str | None = None
    optimizer: str | None = None
    params: dict[str, str] = field(default_factory=dict)


def _cell(value: Any) -> str:
    if isinstance(value, (list, tuple, set)):  # peft keeps target modules as a set: order them
        value = ", ".join(sorted(map(str, value)))
    return str(value).replace("|", "/").replace("\n", " ")


def card_text(facts: CardFacts, lora: dict[str, Any]) -> str:
    """The adapter's README: a model card with the facts a reviewer asks first."""
    g = facts.gates
    verdict = "all passed" if g.passed else "failed: " + ", ".join(r.name for r in g.failed)
    base = f"`{facts.base.name}`, weights sha256 `{facts.base.sha256}`"
    if facts.base.seed is not None:
        base += f", rebuilt from seed {facts.base.seed}"
    tags = ["prefdesk", "lora"] + ([facts.optimizer] if facts.optimizer else [])
    lines = [
        "---",
        f"base_model: {facts.base.name}",
        "library_name: peft",
        "pipeline_tag: text-generation",
        "tags: [" + ", ".join(tags) + "]",
        "---",
        "",
        f"# {facts.model_name}: a LoRA adapter tuned by prefdesk",
        "",
        f"Preference-tuned with **{facts.optimizer or 'an unrecorded optimizer'}** against the frozen base; "
        f"gates: **{verdict}**.",
        "",
        "| | |",
        "|---|---|",
        f"| base | {base} |",
        f"| data | accepted pairs, dataset hash `{facts.data_hash or 'not recorded'}` |",
        f"| optimizer | {facts.optimizer or 'not recorded'} |",
        f"| LoRA | r={lora.get('r')}, alpha={lora.get('lora_alpha')}, target modules {_cell(lora.get('target_modules'))} |",
        f"| MLflow run | `{facts.run_id}` |",
        f"| suspected reward hacking | {'yes' if g.suspected_reward_hacking else 'no'} |",
        "",
        "Load the current champion (or this version, `models:/NAME/VERSION`) with its base, found through "
        "prefdesk's model cache with its weights digest checked:",
        "",
        "```python",
        "import mlflow",
        f'mlflow.pyfunc.load_model("models:/{facts.model_name}@champion").predict(["How do I reset my password?"])',
        "```",
        "",
        "## Optimizer parameters",
        "",
        "| parameter | value |",
        "|---|---|",
        *(f"| {_cell(k)} | {_cell(v)} |" for k, v in sorted(facts.params.items())),
        *([] if facts.params else ["| (none recorded) | |"]),
        "",
        "## Gates",
        "",
        "| gate | metric | bound | value | verdict | reason |",
        "|---|---|---|---|---|---|",
        *(f"| {r.name} | {r.metric} | {r.op} {_fmt(r.limit)} | {_fmt(r.value)} | {'pass' if r.passed else 'FAIL'} "
          f"| {_cell(r.reason)} |" for r in g.results),
    ]
    if g.notes:
        lines += ["", "Notes: " + _cell(" | ".join(g.notes))]
    return "\n".join(lines) + "\n"


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


_ABSOLUTE = re.compile(r"^(/|~/|[A-Za-z]:[\\/]|\\\\)")


def _absolute_paths(node: Any, where: str = "") -> list[str]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _absolute_paths(v, f"{where}.{k}" if where else str(k))]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _absolute_paths(v, f"{where}[{i}]")]
    return [f"{where} = {node}"] if isinstance(node, str) and _ABSOLUTE.match(node) else []


def portable_adapter(src: str | Path, dst: str | Path, facts: CardFacts) -> Path:
    """A copy of the adapter folder that can move: the base named portably, our card as README.

    Every JSON config in it (the tokenizer's vocabulary aside) is checked for absolute paths,
    so a new field that leaks a folder of this machine fails here rather than on the next one.
    """
    src, dst = Path(src), Path(dst)
    if not (src / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{src}: not an adapter folder (no adapter_config.json)")
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    cfg_path = dst / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = facts.base.name
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (dst / "README.md").write_text(card_text(facts, cfg))
    leaks = [f"{f.name}: {p}" for f in sorted(dst.glob("*.json")) if f.name != "tokenizer.json"
             for p in _absolute_paths(json.loads(f.read_text()))]
    if leaks:
        raise ValueError(f"{src}: the adapter would carry absolute paths of this machine: {'; '.join(leaks)}")
    return dst


def signature():
    """Prompts in (strings), answers out (strings), and the one parameter, max_new_tokens."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("string")]),
                          params=ParamSchema([ParamSpec("max_new_tokens", "long", MAX_NEW_TOKENS)]))


def model_config(base: BaseIdentity) -> dict[str, Any]:
    """The logged config: the base's identity and the load-time settings a user may override."""
    return {"base": base.to_dict(), "base_path": "", "dtype": "auto", "quantization": "auto", "batch_size": 8}


def requirements() -> list[str]:
    """Pinned to what logged the model (no requirement inference: that would load the model)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in _REQUIREMENTS:
        try:
            out.append(f"{pkg}=={version(pkg).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return out


def log_policy_model(run_id: str, adapter: str | Path, facts: CardFacts):
    """Log the adapter as a pyfunc model of `run_id` (MLflow 3 logged model); returns its ModelInfo.

    `Model.log` with an explicit run id, not the fluent API: Prefect may run this in a
    thread where MLflow's active run is empty. The logged model is created in the run's
    experiment (under PREFDESK_HOME's artifact root) and carries the run's parameters; MLflow
    checks at logging time that the input example loads the model and predicts.
    """
    import mlflow
    import mlflow.pyfunc
    from mlflow.models import Model

    from prefdesk.tracking import client

    c = client()
    run = c.get_run(run_id)
    if Path(adapter).name != ADAPTER:
        raise ValueError(f"{adapter}: the adapter folder must be named {ADAPTER!r} (its name inside the model)")
    logged = mlflow.initialize_logged_model(
        name=LOGGED_NAME, source_run_id=run_id, experiment_id=run.info.experiment_id, model_type="prefdesk-lora-policy",
        params=dict(run.data.params), tags={"prefdesk.base": facts.base.name, "prefdesk.base_sha256": facts.base.sha256},
    )
    metadata = {"prefdesk": {"base": facts.base.to_dict(), "run_id": run_id, "data_hash": facts.data_hash,
                             "optimizer": facts.optimizer, "gates_passed": facts.gates.passed}}
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "prefdesk_policy.py"
        code.write_text(_MODEL_CODE)
        return Model.log(
            artifact_path=None, name=LOGGED_NAME, flavor=mlflow.pyfunc, run_id=run_id, model_id=logged.model_id,
            python_model=str(code), artifacts={ADAPTER: str(adapter)}, signature=signature(), input_example=INPUT_EXAMPLE,
            model_config=model_config(facts.base), metadata=metadata, pip_requirements=requirements(),
        )


def adapter_of(model_dir: str | Path) -> Path:
    """The adapter folder inside a downloaded model (or a version registered as a bare adapter)."""
    model_dir = Path(model_dir)
    for cand in (model_dir / "artifacts" / ADAPTER, model_dir):
        if (cand / "adapter_config.json").is_file():
            return cand
    raise FileNotFoundError(f"{model_dir} holds no prefdesk adapter (no adapter_config.json)")


def download_adapter(model_uri: str) -> Path:
    """The adapter of `models:/NAME@ALIAS`, `models:/NAME/VERSION` or `models:/m-...`, downloaded."""
    import mlflow.artifacts

    from prefdesk.tracking import client

    client()  # the registry URI of PREFDESK_HOME
    return adapter_of(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
