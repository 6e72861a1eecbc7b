"""The run context: everything an optimizer plugin may use that is not a hyperparameter.

One object for every optimizer family, so DPO (pairs and a loss), RM+PPO (prompts, a
sampler, a reward model, a value head, several trainable modules) and rejection sampling
(prompts, a sampler, a judge, pairs of its own that go through the data desk) all have
the same `fit(ctx, params)`:

    ctx.policy        the base model with named LoRA adapters; `policy.use("reference")`
                      switches them off (the leash, no second copy of the weights),
                      `policy.add_adapter("value")` adds another on the same frozen base
    ctx.pairs         accepted pairs (when the plugin needs "pairs")
    ctx.prompts       prompt-only rows as message lists (when it needs "prompts")
    ctx.sampler       batched generation with per-token log-probs (engine/generate.py)
    ctx.judge         scores and compares answers (prefdesk/judges.py)
    ctx.tracker       MLflow logging by run id
    ctx.settings      seed, token limit, output folder, checkpoint cadence, resume, progress,
                      reference cache
    ctx.checkpointer  saves and restores every trainable module, optimizer, scheduler, RNG
    ctx.check_pairs   the data desk, for pairs a plugin makes itself
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

if TYPE_CHECKING:
    from prefdesk.engine.generate import Sampler
    from prefdesk.judges import Judge
    from prefdesk.models import Policy
    from prefdesk.pairs import Message, Pair
    from prefdesk.tracking import Tracker

log = logging.getLogger("prefdesk")

# The data desk as a function: (pairs a plugin made, a label for the report) -> accepted pairs.
PairCheck = Callable[[list["Pair"], str], list["Pair"]]


@dataclass
class RunSettings:
    """Run settings: what changes how a run is operated, never what it computes (except seed
    and max_length, which the config keeps in one place each and hands down here)."""

    output_dir: Path
    seed: int = 0
    max_length: int = 512
    max_new_tokens: int = 64
    checkpoint_every: int = 0
    resume: bool = True
    reference_cache: bool = True
    cache_root: Path | None = None
    progress: bool = True
    kl_budget: float | None = None  # the drift budget's KL per token (gates.kl_budget), for KL controllers


@dataclass
class RunContext:
    policy: "Policy"
    settings: RunSettings
    tracker: "Tracker"
    pairs: list["Pair"] | None = None
    prompts: list[list["Message"]] | None = None
    judge: "Judge | None" = None
    check_pairs: PairCheck | None = None
    callbacks: Sequence[Callable[[Any], None]] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.policy.device

    @property
    def dtype(self) -> torch.dtype:
        return self.policy.dtype

    @property
    def out_dir(self) -> Path:
        return Path(self.settings.output_dir)

    @cached_property
    def sampler(self) -> "Sampler":
        from prefdesk.engine.generate import Sampler

        return Sampler(self.policy, max_new_tokens=self.settings.max_new_tokens,
                       max_prompt_tokens=self.settings.max_length, progress=self.settings.progress)

    @cached_property
    def checkpointer(self):
        from prefdesk.engine.checkpoint import Checkpointer

        return Checkpointer(self.out_dir / "checkpoints")

    def provides(self) -> set[str]:
        """The plugin needs this context can meet (see prefdesk.plugin.NEEDS)."""
        have = {"sampler"}
        if self.pairs:
            have.add("pairs")
        if self.prompts or self.pairs:
            have.add("prompts")
        if self.judge is not None:
            have.add("judge")
            if getattr(self.judge, "learned", False):
                have.add("reward_model")
        return have

    def prompt_rows(self) -> list[list["Message"]]:
        """The prompts a sampling optimizer works on: the prompt rows when given, else the
        distinct prompts of the pairs, in first-seen order."""
        if self.prompts:
            return list(self.prompts)
        seen: dict[str, list] = {}
        for p in self.pairs or []:
            key = repr([(m["role"], m["content"]) for m in p.prompt])
            seen.setdefault(key, p.prompt)
        return list(seen.values())

    def checked(self, pairs: list["Pair"], label: str) -> list["Pair"]:
        """Pairs a plugin built, after the data desk (the same checks as the night's input)."""
        if self.check_pairs is None:
            log.warning("%s: %d generated pairs were not checked (this context has no data desk)", label, len(pairs))
            return pairs
        return self.check_pairs(pairs, label)
