"""Every setting is checked when the config loads, before any work, with one line naming it."""

import json
import types
import typing

import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from typer.testing import CliRunner

from prefdesk.config import ConfigError, ModelSettings, PrefdeskConfig, load_config


def _numeric_fields(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        if name == "gates":  # a gate's bound may be any number by design
            continue
        ann = field.annotation
        args = typing.get_args(ann) if typing.get_origin(ann) in (typing.Union, types.UnionType) else (ann,)
        for a in args:
            metadata = list(field.metadata)
            if typing.get_origin(a) is typing.Annotated:  # e.g. `Count | None`
                a, metadata = typing.get_args(a)[0], metadata + list(a.__metadata__)
                metadata += [c for m in metadata if isinstance(m, FieldInfo) for c in m.metadata]
            if isinstance(a, type) and issubclass(a, BaseModel):
                yield from _numeric_fields(a, f"{prefix}{name}.")
            elif a in (int, float):
                yield f"{prefix}{name}", metadata


def test_every_numeric_setting_has_bounds():
    fields = dict(_numeric_fields(PrefdeskConfig))
    assert {"seed", "data.limit", "data.max_length", "eval.batch_size", "model.lora.r",
            "train.checkpoint_every", "eval.max_new_tokens"} <= set(fields)
    unbounded = [name for name, metadata in fields.items()
                 if not any(getattr(m, attr, None) is not None for m in metadata for attr in ("ge", "gt", "le", "lt"))]
    assert not unbounded, f"numeric settings without bounds: {unbounded}"


@pytest.mark.parametrize("assignment, named", [
    ("data.limit=-3", "data.limit"),
    ("data.limit=0", "data.limit"),
    ("eval.batch_size=0", "eval.batch_size"),
    ("eval.max_new_tokens=0", "eval.max_new_tokens"),
    ("model.lora.r=0", "model.lora.r"),
    ("model.lora.dropout=1.5", "model.lora.dropout"),
    ("data.max_length=0", "data.max_length"),
    ("data.checks.max_duplicate_share=1.5", "data.checks.max_duplicate_share"),
    ("seed=-1", "seed"),
    ("train.checkpoint_every=-1", "train.checkpoint_every"),
    ("gates=[1,2]", "gates"),
    ("gates.kl_budget=3", "gates.kl_budget"),
    ("gates.kl_budget.op=<", "gates.kl_budget.op"),
    ("train.optimizer=nope", "train.optimizer"),
    ("train.params.beta=-1", "train.params.beta"),
    ("train.params.betta=0.2", "train.params.betta"),
    ("train.params.seed=3", "train.params.seed"),
    ("train.params.max_length=64", "data.max_length"),
    ("model.name=/no/such/model", "model.name"),
    ("data.train=[/no/such/pairs.jsonl]", "data.train"),
    ("eval.refusal_sets=[/no/such/xstest.csv#refuse]", "eval.refusal_sets"),
    ("model.nme=oops", "model.nme"),
    ("data.limit", "KEY=VALUE"),
])
def test_a_bad_setting_is_one_line_naming_it(assignment, named):
    with pytest.raises(ConfigError) as info:
        load_config(None, [assignment])
    msg = str(info.value)
    assert named in msg and "\n" not in msg, msg


def test_errors_say_whether_the_file_or_set_holds_the_setting(tmp_path):
    f = tmp_path / "nightly.yaml"
    f.write_text("data:\n  limit: -3\n")
    with pytest.raises(ConfigError, match=r"^.*nightly\.yaml: data\.limit: .*greater than or equal to 1 \(got -3\)$"):
        load_config(f)
    with pytest.raises(ConfigError, match=r"^--set eval\.batch_size: "):
        load_config(f, ["data.limit=5", "eval.batch_size=0"])
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")


def test_one_home_for_seed_max_length_and_checkpoint_cadence():
    cfg = load_config(None, ["seed=7", "train.checkpoint_every=5", "data.max_length=256"])
    assert (cfg.seed, cfg.train.checkpoint_every, cfg.data.max_length) == (7, 5, 256)
    assert "seed" not in ModelSettings.model_fields
    assert PrefdeskConfig().train.checkpoint_every == 20
    assert cfg.flatten()["seed"] == "7"


def test_old_model_seed_is_read_as_seed_with_a_warning(tmp_path):
    f = tmp_path / "old.yaml"
    f.write_text("model:\n  seed: 5\n")
    with pytest.warns(FutureWarning, match=r"old\.yaml: model\.seed is deprecated"):
        cfg = load_config(f)
    assert cfg.seed == 5
    with pytest.raises(ConfigError, match="disagree"):
        load_config(f, ["seed=6"])


def test_the_cli_refuses_a_bad_setting_before_any_work(tmp_path, monkeypatch):
    from prefdesk.cli import app

    monkeypatch.setenv("PREFDESK_HOME", str(tmp_path / "home"))
    res = CliRunner().invoke(app, ["run", "--json", "--set", "data.limit=-3"])
    assert res.exit_code == 1
    err = json.loads(res.stdout.strip().splitlines()[-1])
    assert err["error"] == "--set data.limit: Input should be greater than or equal to 1 (got -3)"
    assert "Traceback" not in res.output
    assert not (tmp_path / "home" / "runs").exists() and not (tmp_path / "home" / "mlflow.db").exists()

    res = CliRunner().invoke(app, ["run", "--set", "train.params.beta=-1"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.strip() == "error: dpo parameters: train.params.beta: Input should be greater than 0 (got -1)"


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    from prefdesk.cli import app

    monkeypatch.setenv("PREFDESK_HOME", str(tmp_path / "home"))
    res = CliRunner().invoke(app, ["--debug", "run", "--set", "gates=[1,2]"])
    assert res.exit_code == 1
    assert "Traceback" in res.output and "error: gates: expected a mapping" in res.output
