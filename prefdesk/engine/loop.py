"""The training loop every optimizer plugin shares; a plugin brings only its loss.

Read top to bottom, `train()` does:

1. tokenize every pair once (chat template, exact answer boundary);
2. plan the whole run: length-bucketed batches for each epoch, seeded, so the data order
   is a pure function of (pairs, seed) and a resumed run can find its place by step number;
   a pair is one packed row `[prompt | chosen | rejected]`, so its prompt is computed once
   (`batching`; `PREFDESK_SHARE_PREFIX=0` gives a row per answer, for comparison);
3. compute the reference log-probs in one no-grad pass with the adapter switched off,
   reading and filling the on-disk cache: training steps never run the reference
   (unless `reference_cache=False`, which runs it live, no-grad, in every step);
4. build AdamW over the LoRA weights (fp32, so is its state) and a linear warmup/decay
   schedule, and hand model and optimizer to `accelerate` (CPU, one GPU or
   `accelerate launch` on several, the same code);
5. resume from the newest checkpoint of the same run when there is one;
6. per step: one forward of the packed pairs per micro-batch, the plugin's loss, a
   finiteness check (NaN/inf stops the run with `TrainingDiverged`, before the weights
   are touched), backward, clip, step; metrics to the tracker and the progress bar; a
   checkpoint every `checkpoint_every` steps; after two steps, `torch.compile` is turned
   on when the steps left make it pay (`autocompile`, the estimate logged);
7. save the adapter and return the run's averaged metrics.

Precision: the base runs in the policy's dtype (`model.dtype: auto` picks what the
hardware runs fast: prefdesk.hardware), the LoRA weights and AdamW state stay fp32 while
the adapter computes in the base's dtype under autocast (`compute_context`), and the
log-softmax runs in fp32. An fp16 base (a GPU without bf16) gets a loss scaler. Nothing
here casts the base, so a 4-bit QLoRA base works as is.
No gradient checkpointing: at these sizes it would cost a third more compute for memory
that is not short.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from prefdesk.engine import autocompile
from prefdesk.engine.autocompile import AutoCompile, compile_layers
from prefdesk.engine.batching import (
    LAYOUTS,
    EncodedPair,
    bucketed_batches,
    collate,
    encode_pairs,
    pad_multiple,
    padding_share,
)
from prefdesk.engine.logprobs import AnswerLogps, batch_logps, compute_context, use_shared_prefix
from prefdesk.engine.losses import LossOutput, PairLogps, step_metrics
from prefdesk.engine.refcache import RefCache, base_fingerprint, reference_logps
from prefdesk.engine.checkpoint import trainable
from prefdesk.plugin import TrainParams, TrainResult

if TYPE_CHECKING:
    from pathlib import Path

    from prefdesk.context import RunContext

log = logging.getLogger("prefdesk")

LossFn = Callable[[PairLogps], LossOutput]


class TrainingDiverged(RuntimeError):
    """The loss (or the gradient norm) became NaN or inf; nothing of the run is saved as final."""

    def __init__(self, step: int, what: str, value: float):
        self.step, self.what, self.value = step, what, value
        super().__init__(
            f"training diverged at step {step}: {what} is {value} (not finite); no adapter was saved. "
            "Lower the learning rate or beta, or look for degenerate pairs."
        )


@dataclass
class StepInfo:
    """What a callback sees after each optimizer step (and after that step's checkpoint)."""

    step: int
    total_steps: int
    metrics: dict[str, float]
    checkpoint: "Path | None" = None


@dataclass
class Plan:
    """The whole run's data order: micro-batches of pair indices, in training order."""

    batches: list[list[int]]
    total_steps: int
    per_step: int  # micro-batches per optimizer step over all processes
    world: int

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        lo, hi = step * self.per_step, (step + 1) * self.per_step
        js = [j for j in range(lo + rank, hi, self.world) if j < len(self.batches)]
        if not js:  # tail of a multi-process run: reuse an early batch rather than idle
            js = [(lo + rank) % len(self.batches)]
        return [self.batches[j] for j in js]


def make_plan(encoded: Sequence[EncodedPair], params: TrainParams, seed: int, world: int = 1,
              shared: bool = True) -> Plan:
    lengths = [e.width(shared) for e in encoded]
    per_epoch = math.ceil(len(encoded) / params.batch_size)
    per_step = params.grad_accum * world
    natural = max(1, math.ceil(params.epochs * per_epoch / per_step))
    total = params.max_steps if params.max_steps else natural
    epochs = max(params.epochs, math.ceil(total * per_step / per_epoch)) if params.max_steps else params.epochs
    batches = [b for e in range(epochs) for b in bucketed_batches(lengths, params.batch_size, seed, e)]
    return Plan(batches=batches, total_steps=total, per_step=per_step, world=world)


def linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warmup to the peak, then linear decay to 0 at the last step (TRL's default)."""

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def run_key(name: str, params: TrainParams, fingerprint: str, seed: int, items: Sequence[str] = (),
            layout: str = LAYOUTS[True]) -> str:
    """Identity of a run: a checkpoint is resumed only by the run that wrote it.

    `Params` holds hyperparameters only, so all of it is identity; `items` are the data's
    own identities (for pairs: id and token key, which covers tokenizer and max_length);
    the batch layout changes the data order (bucketing sorts by row width).
    """
    h = hashlib.sha256()
    h.update(json.dumps([name, fingerprint, seed, params.model_dump(mode="json")], sort_keys=True).encode())
    if layout != LAYOUTS[True]:
        h.update(layout.encode())
    for item in items:
        h.update(item.encode())
    return h.hexdigest()[:20]


# -- the loop ----------------------------------------------------------------------------


def _accelerator(policy):
    from accelerate import Accelerator
    from accelerate.state import PartialState

    kwargs = {}
    if not PartialState._shared_state:  # the device choice is process-wide; make it once
        kwargs["cpu"] = policy.device.type == "cpu"
    # A 4-bit base is placed by its device map; accelerate must not move it.
    return Accelerator(device_placement=not policy.quantized, **kwargs)


def train(ctx: "RunContext", params: TrainParams, loss_fn: LossFn, *, name: str = "optimizer",
          use_reference: bool = True) -> TrainResult:
    """Train the policy's adapter on `ctx.pairs` with `loss_fn`; see the module docstring.

    `use_reference=False` skips the reference (reference-free losses; no `train/kl`).
    `ctx.callbacks` run after every optimizer step (after its checkpoint, if any) with a
    `StepInfo`; an exception raised there stops the run as a kill would.
    """
    undo = compile_layers(ctx.policy) if autocompile.mode() == "on" else None
    try:
        return _train(ctx, params, loss_fn, name=name, use_reference=use_reference,
                      auto_compile=autocompile.mode() == "auto")
    finally:
        if undo is not None:
            undo()


def _train(ctx: "RunContext", params: TrainParams, loss_fn: LossFn, *, name: str, use_reference: bool,
           auto_compile: bool) -> TrainResult:
    policy, tracker, run = ctx.policy, ctx.tracker, ctx.settings
    pairs = ctx.pairs
    if not pairs:
        raise ValueError("no pairs to train on")
    t_start = time.perf_counter()
    out_dir = ctx.out_dir
    accelerator = _accelerator(policy)
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    device = accelerator.device if not policy.quantized else policy.device
    from accelerate.utils import set_seed

    set_seed(run.seed)

    # 1-2. tokens and the run's data order
    shared = use_shared_prefix(policy.model)
    encoded = encode_pairs(policy.tokenizer, pairs, run.max_length)
    plan = make_plan(encoded, params, run.seed, world, shared)
    lengths = [e.width(shared) for e in encoded]
    pad_id = policy.tokenizer.pad_token_id
    multiple = pad_multiple(policy.dtype, device.type)

    # 3. the reference, once per pair, from the cache when it is there
    fingerprint = base_fingerprint(policy)
    ref: torch.Tensor | None = None
    cache = RefCache(fingerprint, run.cache_root, shared=shared) if run.reference_cache else None
    t_ref = time.perf_counter()
    if use_reference and run.reference_cache:
        first_epoch = bucketed_batches(lengths, params.batch_size, run.seed, 0)
        ref = reference_logps(policy, encoded, batch_size=params.batch_size, cache=cache, accelerator=accelerator,
                              batches=first_epoch, multiple=multiple, shared=shared)
    ref_seconds = time.perf_counter() - t_ref

    # 4. optimizer, schedule, loss scaler (fp16 only), accelerate
    policy.model.train()
    module = AnswerLogps(policy.model)
    weights = list(trainable(policy.model).values())
    optimizer = torch.optim.AdamW(weights, lr=params.learning_rate, weight_decay=params.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(params.warmup_steps, plan.total_steps))
    scaler = torch.amp.GradScaler(device.type) if policy.dtype == torch.float16 else None
    module, optimizer = accelerator.prepare(module, optimizer)

    # 5. resume
    key = run_key(name, params, fingerprint, run.seed, [f"{e.pair_id}{e.token_key}" for e in encoded],
                  LAYOUTS[shared])
    ckpts = ctx.checkpointer
    modules, optimizers, schedulers = {"policy": policy.model}, {"policy": optimizer}, {"policy": scheduler}
    if scaler is not None:
        schedulers["loss_scaler"] = scaler  # its state_dict is a few numbers: JSON like a scheduler's
    start, sums, count, curve = 0, defaultdict(float), 0, []
    ckpt = ckpts.latest(key) if run.resume else None
    if ckpt is not None:
        loaded = ckpts.load(ckpt, modules, optimizers, schedulers)
        state = loaded["state"]
        start, count, curve = loaded["step"], state["count"], state["loss_curve"]
        sums.update(state["sums"])
        log.info("resuming %s from %s (step %d of %d)", name, ckpt, start, plan.total_steps)

    # 6. the steps
    from tqdm.auto import tqdm

    compiler = AutoCompile(policy, device, plan.total_steps, write=main) if auto_compile else None
    bar = tqdm(total=plan.total_steps, initial=start, desc=name, disable=not (run.progress and main), leave=False)
    tokens_seen, train_seconds = 0, 0.0
    try:
        for step in range(start, plan.total_steps):
            t0 = time.perf_counter()
            micro = plan.micro_batches(step, rank)
            acc: dict[str, float] = defaultdict(float)
            tokens = 0
            for j, idx in enumerate(micro):
                batch = collate([encoded[i] for i in idx], pad_id, idx, multiple, shared=shared).to(device)
                last = j == len(micro) - 1
                with contextlib.nullcontext() if last else accelerator.no_sync(module):
                    with compute_context(policy.model, policy.dtype, device.type):
                        s, n = module(**batch.inputs())
                    lp = PairLogps(s[:, 0], s[:, 1], n[:, 0], n[:, 1])
                    if use_reference:
                        lp.ref_chosen, lp.ref_rejected = _reference_for(policy, batch, ref, device)
                    out = loss_fn(lp)
                    value = float(out.loss.detach())
                    if not math.isfinite(value):
                        raise TrainingDiverged(step + 1, "the loss", value)
                    loss = out.loss / len(micro)
                    accelerator.backward(scaler.scale(loss) if scaler is not None else loss)
                for k, v in step_metrics(lp, out).items():
                    acc[k] += float(v) / len(micro)
                tokens += batch.n_tokens
            if scaler is not None:
                scaler.unscale_(optimizer)
            if params.max_grad_norm and params.max_grad_norm > 0:
                norm = float(accelerator.clip_grad_norm_(weights, params.max_grad_norm))
                if not math.isfinite(norm) and scaler is None:  # fp16: the scaler skips the step and backs off
                    raise TrainingDiverged(step + 1, "the gradient norm", norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            metrics = _reduce(accelerator, dict(acc))
            dt = time.perf_counter() - t0
            train_seconds += dt
            tokens_seen += tokens * world
            metrics["train/tokens_per_s"] = tokens * world / max(dt, 1e-9)
            for k, v in metrics.items():
                sums[k] += v
            count += 1
            curve.append(metrics["train/loss"])
            if main:
                tracker.log_metrics(metrics, step=step + 1)
            bar.set_postfix(loss=f"{metrics['train/loss']:.4f}", tok_s=f"{metrics['train/tokens_per_s']:.0f}")
            bar.update(1)
            if compiler is not None:
                compiler.after_step(step, dt)

            saved = None
            if run.checkpoint_every and (step + 1) % run.checkpoint_every == 0 and step + 1 < plan.total_steps:
                if main:
                    state = {"count": count, "sums": dict(sums), "loss_curve": curve}
                    saved = ckpts.save(step + 1, key, modules, optimizers, schedulers, state)
                accelerator.wait_for_everyone()
            for cb in ctx.callbacks:
                cb(StepInfo(step + 1, plan.total_steps, dict(metrics), saved))
    finally:
        if compiler is not None:
            compiler.finish()
    bar.close()

    # 7. the adapter
    accelerator.wait_for_everyone()
    policy.model.eval()
    adapter = out_dir / "adapter"
    if main:
        policy.save_adapter(adapter)
        # Finished: the checkpoints have done their job. Left behind, they would make the
        # next identical run "resume" its tail instead of logging a whole run of its own.
        ckpts.clear()
    accelerator.wait_for_everyone()
    final = {k: v / max(count, 1) for k, v in sums.items()}
    extra = {
        "loss_curve": curve,
        "final_loss": curve[-1] if curve else float("nan"),
        "reference_seconds": ref_seconds,
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - t_start,
        "tokens": tokens_seen,
        "pairs": len(encoded),
        "truncated_pairs": sum(e.chosen.truncated or e.rejected.truncated for e in encoded),
        "padding_share": padding_share(plan.batches, lengths),
        "layout": LAYOUTS[shared],
        "compiled": autocompile.mode() == "on" or bool(compiler and compiler.undo),
        "ref_cache_hits": cache.hits if cache else 0,
        "ref_cache_misses": cache.misses if cache else 0,
        "resumed_from": str(ckpt) if ckpt else None,
        "base_fingerprint": fingerprint,
    }
    return TrainResult(artifacts={"adapter": str(adapter)}, metrics=final, steps=plan.total_steps, extra=extra)


def _reference_for(policy, batch, ref: torch.Tensor | None, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached values for the batch's pairs, or (reference_cache off) a live no-grad forward."""
    if ref is not None:
        r = ref[batch.index].to(device)
        return r[:, 0], r[:, 1]
    with torch.no_grad(), compute_context(policy.model, policy.dtype, device.type), policy.reference():
        s, _ = batch_logps(policy.model, **batch.inputs())
    return s[:, 0].detach(), s[:, 1].detach()


def _reduce(accelerator, metrics: dict[str, float]) -> dict[str, float]:
    if accelerator.num_processes == 1 or not metrics:
        return metrics
    keys = sorted(metrics)
    t = torch.tensor([metrics[k] for k in keys], device=accelerator.device)
    t = accelerator.reduce(t, reduction="mean")
    return dict(zip(keys, t.tolist()))
