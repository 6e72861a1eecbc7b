"""The parts of a registered model that must travel: the base's identity (found by name,
checked by weights digest), the portable adapter and its card, the prompts pyfunc hands over.
(Logging, registering and loading by URI in a fresh process: tests/test_registry.py.)"""

import json
import shutil

import pandas as pd
import pytest
import torch

from prefdesk.config import ModelSettings
from prefdesk.gates import GateReport, GateResult
from prefdesk.mlflow_model import CardFacts, portable_adapter, prompts_of
from prefdesk.models import (
    BaseIdentity, ModelError, base_identity, bases_dir, folder_digest, resolve_base, tensor_digest, tiny_base,
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private model cache (bases, digests), as on another machine."""
    monkeypatch.setenv("PREFDESK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tiny_weights():
    with torch.random.fork_rng(devices=[]):
        return tiny_base(512, seed=5)


def test_a_local_base_is_found_by_name_in_the_cache_and_checked_by_digest(tmp_path, cache, tiny_weights):
    folder = tmp_path / "trained-here" / "my-base"
    tiny_weights.save_pretrained(folder)
    ident = base_identity(ModelSettings(name=str(folder)))
    assert ident.name == "my-base" and len(ident.sha256) == 64 and ident.seed is None
    assert resolve_base(ident) == str(bases_dir() / "my-base")  # linked into the cache at registration

    # another machine: nothing in its cache yet
    shutil.rmtree(cache)
    with pytest.raises(ModelError, match=r"not on this machine: put its folder at .*bases/my-base"):
        resolve_base(ident)
    shutil.copytree(folder, bases_dir() / "my-base")
    assert resolve_base(ident) == str(bases_dir() / "my-base")
    assert resolve_base(ident, base_path=folder) == str(folder)

    # a different base under the same name is refused, never silently swapped in
    other = tmp_path / "other"
    with torch.random.fork_rng(devices=[]):
        tiny_base(512, seed=6).save_pretrained(other)
    with pytest.raises(ModelError, match="other weights"):
        resolve_base(ident, base_path=other)


def test_digest_is_of_the_weights_not_of_the_file_bytes(tmp_path, cache, tiny_weights):
    from safetensors.torch import save_file

    sd = {k: v.clone() for k, v in tiny_weights.state_dict().items() if k != "lm_head.weight"}  # tied
    for name, meta in (("a", {"format": "pt"}), ("b", {"format": "pt", "converted_by": "another version"})):
        (tmp_path / name).mkdir()
        save_file(sd, tmp_path / name / "model.safetensors", metadata=meta)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() != (tmp_path / "b" / "model.safetensors").read_bytes()
    assert folder_digest(tmp_path / "a") == folder_digest(tmp_path / "b") == tensor_digest(sd.items())
    sd["model.norm.weight"] = sd["model.norm.weight"] + 1e-3
    assert tensor_digest(sd.items()) != folder_digest(tmp_path / "a")


def test_tiny_base_is_rebuilt_from_its_seed_and_checked():
    ident = base_identity(ModelSettings(name="tiny"), seed=3)
    assert ident.name == "tiny" and ident.seed == 3
    assert resolve_base(ident) == "tiny"
    with pytest.raises(ModelError, match="other weights"):
        resolve_base(BaseIdentity("tiny", ident.sha256, seed=4))
    with pytest.raises(ModelError, match="needs its seed"):
        resolve_base(BaseIdentity("tiny", ident.sha256))
    with pytest.raises(ModelError, match="needs name and sha256"):
        BaseIdentity.from_dict({"name": "tiny"})


def _adapter(tmp_path, **tokenizer_config):
    src = tmp_path / "src"
    src.mkdir()
    # the base as PEFT records it: an absolute path of the machine that trained it
    base = str((tmp_path / "cache" / "prefdesk" / "base").resolve())
    (src / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base,
                                                         "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}))
    (src / "README.md").write_text("# Model Card for Model ID\n[More Information Needed]\n")
    (src / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>", **tokenizer_config}))
    (src / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"/home": 1}}}))  # vocabulary, not a path
    return src


def _facts(ok: bool) -> CardFacts:
    gates = GateReport([GateResult("kl_budget", "drift/kl_per_token", "<=", 0.1, 0.02 if ok else 0.3, ok,
                                   "drift/kl_per_token = 0.02" if ok else "drift/kl_per_token = 0.3, outside <= 0.1")],
                       notes=["reward rose"] if not ok else [])
    return CardFacts(base=BaseIdentity("smollm2-135m-instruct", "ab" * 32), run_id="r123", model_name="prefdesk-policy",
                     gates=gates, data_hash="feedface00000000", optimizer="sft", params={"learning_rate": "0.0001"})


def test_portable_adapter_names_the_base_portably_and_carries_our_card(tmp_path):
    out = portable_adapter(_adapter(tmp_path), tmp_path / "out" / "adapter", _facts(ok=False))
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "smollm2-135m-instruct"
    card = (out / "README.md").read_text()
    assert "More Information Needed" not in card
    for fact in ("base_model: smollm2-135m-instruct", "ab" * 32, "feedface00000000", "| optimizer | sft |",
                 "| learning_rate | 0.0001 |", "gates: **failed: kl_budget**", "| kl_budget | drift/kl_per_token | <= 0.1 | 0.3 | FAIL |",
                 "r=8, alpha=16", "`r123`", "Notes: reward rose"):
        assert fact in card, fact


def test_portable_adapter_refuses_any_other_absolute_path(tmp_path):
    src = _adapter(tmp_path, name_or_path="/srv/models/base")
    with pytest.raises(ValueError, match=r"tokenizer_config.json: name_or_path = /srv/models/base"):
        portable_adapter(src, tmp_path / "out" / "adapter", _facts(ok=True))
    with pytest.raises(FileNotFoundError, match="not an adapter folder"):
        portable_adapter(tmp_path, tmp_path / "out2" / "adapter", _facts(ok=True))


def test_prompts_come_from_every_shape_pyfunc_hands_over():
    assert prompts_of(pd.DataFrame({0: ["a", "b"]})) == ["a", "b"]  # a list, as pyfunc passes it
    assert prompts_of(pd.DataFrame({"prompt": [["a", "b"]]})) == ["a", "b"]  # {"prompt": [...]}
    assert prompts_of(pd.DataFrame({"prompt": ["a"], "extra": [1]})) == ["a"]
    assert prompts_of("a") == ["a"] and prompts_of(["a"]) == ["a"]
    with pytest.raises(ValueError, match="one column of prompts"):
        prompts_of(pd.DataFrame({"x": ["a"], "y": ["b"]}))
    with pytest.raises(ValueError, match="must be a string"):
        prompts_of([3])
