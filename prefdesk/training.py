"""One optimizer run: plugin lookup, parameters, needs, the run context, fit.

Shared by the flow's train task and `prefdesk train`, so both run exactly the same path.
The flow also gives a stable `work_dir` per (data, config), so a nightly run that was
killed resumes from its last checkpoint when it is started again.

`check_needs(cfg)` runs before any work (the CLI calls it before reading data, the flow
before ingest): a plugin that needs something this configuration cannot provide fails in
the first second, with the need named.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from prefdesk import plugin
from prefdesk.config import PrefdeskConfig
from prefdesk.context import PairCheck, RunContext, RunSettings
from prefdesk.pairs import Message, Pair
from prefdesk.plugin import TrainResult
from prefdesk.tracking import Tracker

log = logging.getLogger("prefdesk")


def provided_by(cfg: PrefdeskConfig) -> tuple[set[str], dict[str, str]]:
    """(needs this configuration can meet, how to meet each of the others)."""
    have = {"sampler", "judge"}  # the policy can always generate; a judge is always configured
    if cfg.data.train:
        have |= {"pairs", "prompts"}
    if getattr(cfg.data, "prompts", None):
        have.add("prompts")
    if cfg.train.reward_model or _judge_is_learned(cfg.train.judge):
        have.add("reward_model")
    hints = {
        "pairs": "set data.train to pair files",
        "prompts": "set data.prompts to prompt files, or data.train to pair files",
        "reward_model": "set train.reward_model to a reward-model folder or models:/NAME@ALIAS "
                        "(train one with `prefdesk train --optimizer reward_model`)",
    }
    return have, hints


def _judge_is_learned(name: str) -> bool:
    from prefdesk import judges

    ep = judges.available().get(name)
    if ep is None:
        return False
    try:
        return bool(getattr(ep.load(), "learned", False))
    except Exception:  # a broken judge is reported when it is built, not here
        return False


def check_needs(cfg: PrefdeskConfig) -> type:
    """The optimizer class, after checking its parameters and that its needs can be met."""
    cls = plugin.load(cfg.train.optimizer)
    cls.Params.model_validate(cfg.train.params)
    have, hints = provided_by(cfg)
    plugin.check_needs(cls, have, hints)
    return cls


def run_settings(cfg: PrefdeskConfig, output_dir: str | Path, *, progress: bool = True) -> RunSettings:
    from prefdesk.config import home

    return RunSettings(
        output_dir=Path(output_dir),
        seed=cfg.seed,
        max_length=cfg.data.max_length,
        max_new_tokens=cfg.eval.max_new_tokens,
        checkpoint_every=cfg.train.checkpoint_every,
        cache_root=home() / "cache" / "refs",
        progress=progress,
        kl_budget=_kl_budget(cfg),
    )


def load_prompts(cfg: PrefdeskConfig, folder: str | Path) -> list[list[Message]] | None:
    """The prompt files of `data.prompts` (None when there are none); refused rows go to
    `prompt_quarantine.jsonl` in `folder`, one line each with file, line and reason."""
    if not cfg.data.prompts:
        return None
    from prefdesk.readers import read_prompts

    res = read_prompts(cfg.data.prompts, cfg.data.format)
    Path(folder).mkdir(parents=True, exist_ok=True)
    with open(Path(folder) / "prompt_quarantine.jsonl", "w", encoding="utf-8") as fh:
        for q in res.quarantined:
            fh.write(json.dumps({"file": q.source, "line": q.line, "reason": q.reason, "raw": q.raw}, ensure_ascii=False) + "\n")
    log.info("prompts: %d rows in, %d prompts, %d repeated, %d quarantined", res.rows_in, len(res.prompts),
             res.duplicates, len(res.quarantined))
    if not res.prompts:
        raise ValueError(f"data.prompts: no usable prompt in {', '.join(cfg.data.prompts)} "
                         f"(see {Path(folder) / 'prompt_quarantine.jsonl'})")
    return res.prompts


def _kl_budget(cfg: PrefdeskConfig) -> float | None:
    """The tightest upper bound on KL per token among the gates (what an optimizer may spend)."""
    bounds = [g.bound for g in cfg.gates.values()
              if g.metric == "drift/kl_per_token" and g.op in ("<=", "<") and g.relative_to == "absolute"]
    return min(bounds) if bounds else None


def train_adapter(
    cfg: PrefdeskConfig,
    pairs: Sequence[Pair],
    output_dir: str | Path,
    tracker: Tracker,
    *,
    prompts: Sequence[list[Message]] | None = None,
    check_pairs: PairCheck | None = None,
    callbacks: Sequence[Callable[[Any], None]] = (),
) -> TrainResult:
    """Run the configured optimizer on accepted pairs (and prompts), as the flow and the CLI do."""
    from prefdesk.models import build_policy

    cls = check_needs(cfg)
    params = plugin.parse_params(cls, cfg.train.params)
    if cfg.data.limit:
        pairs = list(pairs)[: cfg.data.limit]
    if "pairs" in plugin.needs_of(cls) and not pairs:
        raise ValueError("no accepted pairs to train on")
    tracker.log_params({f"optimizer.{k}": v for k, v in params.model_dump().items()})
    policy = build_policy(cfg.model, seed=cfg.seed)
    tracker.set_tags({"prefdesk.optimizer": cls.name, "prefdesk.quantized": str(policy.quantized).lower(),
                      "prefdesk.dtype": str(policy.dtype).replace("torch.", "")})
    judge = None
    # `wants`: what a plugin uses when the run provides it (rm_ppo: a given reward model instead of training one)
    if plugin.needs_of(cls) & {"judge", "reward_model"} or (cfg.train.reward_model and "reward_model" in getattr(cls, "wants", ())):
        from prefdesk import judges

        name = cfg.train.judge
        options = {}
        if cfg.train.reward_model:
            name, options = "reward_model", {"source": cfg.train.reward_model}
        judge = judges.create(name, policy=policy, **options)
    ctx = RunContext(policy=policy, settings=run_settings(cfg, output_dir), tracker=tracker, pairs=list(pairs),
                     prompts=list(prompts) if prompts else None, judge=judge, check_pairs=check_pairs,
                     callbacks=callbacks)
    plugin.check_needs(cls, ctx.provides())
    return cls().fit(ctx, params)


def work_dir(root: Path, cfg: PrefdeskConfig, accepted_path: str | Path) -> Path:
    """Same accepted pairs and same model/train config -> same folder (and its checkpoints)."""
    h = hashlib.sha256(Path(accepted_path).read_bytes())
    h.update(json.dumps([cfg.seed, cfg.model.model_dump(mode="json"), cfg.train.model_dump(mode="json"), cfg.data.limit,
                         cfg.data.max_length], sort_keys=True).encode())
    return root / f"{cfg.train.optimizer}-{h.hexdigest()[:16]}"
