"""prefdesk's DPO plugin against TRL's DPOTrainer on SmolLM2-135M-Instruct, in one run.

    python benchmarks/dpo_vs_trl.py                  # checks, TRL, prefdesk shared + separate prompts
    python benchmarks/dpo_vs_trl.py --skip-trl       # prefdesk only
    python benchmarks/dpo_vs_trl.py --no-precision   # skip the per-batch precision/layout timings
    python benchmarks/dpo_vs_trl.py --pairs 16       # a quarter of the work (slow or busy machines)
    python benchmarks/dpo_vs_trl.py --compile on     # torch.compile from the start (default: the engine's auto)

Same pairs (the first pairs of Anthropic HH harmless-base test whose prompt + answer fit in
--max-length tokens for both answers, so neither side truncates and both see the same
tokens), LoRA r=16 alpha=32 on all linear layers, batch 4, one epoch, lr 1e-4 with linear
decay, beta 0.1, sigmoid loss, seed 0.

Precision: both sides use the dtype `model.dtype: auto` picks on this machine (printed
with its reason: bf16 on AMX or avx512_bf16 CPUs, fp32 where bf16 is emulated); TRL gets
bf16 autocast (`bf16=True`) exactly when prefdesk runs bf16, `--trl-dtype` overrides.
TRL runs with its best settings for a CPU: no gradient checkpointing, no dataloader
workers, and `precompute_ref_log_probs=True` (the reference computed once before
training, like prefdesk's reference pass; the same forwards as computing it in every step,
in larger no-grad batches, and it gives TRL a warm-cache figure too). TRL's time counts
the trainer's construction (tokenization and the reference precompute) and training;
prefdesk's counts `fit` (tokenization, reference pass, training): cold caches on both.

prefdesk runs twice, in alternation when --repeats > 1: with the prompt shared by both
answers (one packed row per pair, the default) and with a row per answer
(`PREFDESK_SHARE_PREFIX=0`); the ratio of the two is the speed-up of sharing alone. The
precision section also times one batch forward+backward in both layouts, interleaved.

FLOP count (useful work on real tokens the layout computes; padding is not counted):
    train step  4·N_trunk·tok + 6·N_lora·tok + 3·attn + 4·V·H·ans
    reference   2·N_trunk·tok + attn + 2·V·H·ans         (once per pair, no grad)
where N_trunk are the frozen decoder weights without the embedding (forward 2N, backward
only the activation gradient, 2N: frozen weights need no weight gradient), N_lora the
adapter weights (6N as usual), tok the tokens computed (a shared prompt once per pair),
attn = 4·L·d·(query-key pairs attended) (QK^T and AV) and the LM head (V·H) runs on answer
tokens only. The usual 6·N·tokens is printed too for comparison.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

# The shared data folder sits next to the repository (see ../shared/data/README.md).
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
LR, BETA, SEED = 1e-4, 0.1, 0
SHORT = {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16"}


# -- data --------------------------------------------------------------------------------


def hh_pairs(path: Path, n: int, max_length: int, tokenizer):
    """The first n HH pairs (read by prefdesk's readers) whose chosen and rejected both fit
    untruncated in max_length."""
    from prefdesk.engine.batching import encode_pair
    from prefdesk.readers import read_pairs

    keep = []
    for p in read_pairs([str(path)]).pairs:
        e = encode_pair(tokenizer, p, max_length)
        if not (e.chosen.truncated or e.rejected.truncated):
            keep.append(p)
        if len(keep) == n:
            break
    return keep


# -- measurements ------------------------------------------------------------------------


def matmul_rate(dtype: torch.dtype, n: int = 2048, reps: int = 3) -> float:
    """FLOP/s of a large matmul in `dtype`: the machine's practical peak for the fraction below."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def batch_timings(pairs, dtypes: list[str], batch_pairs: int = 4, reps: int = 3) -> dict:
    """Median forward+backward CPU seconds of one real batch per variant, variants interleaved.

    CPU time (the process's, all threads) rather than wall time: on a shared machine the
    wall clock mostly measures the other jobs.

    Variants: each dtype in `dtypes` with the engine's path (shared prompt; bf16 under
    autocast with the adapter computed in bf16), the first dtype with a row per answer
    (`separate`: the layout effect alone), and for bf16 the base with peft computing the
    adapter in fp32 (`bf16-peft`). LoRA weights are fp32 in every case.
    """
    import contextlib

    from prefdesk.config import ModelSettings
    from prefdesk.engine.batching import collate, encode_pairs
    from prefdesk.engine.logprobs import batch_logps, compute_context
    from prefdesk.models import build_policy

    pols = {dt: build_policy(ModelSettings(dtype=dt)) for dt in dtypes}
    tok = pols[dtypes[0]].tokenizer
    enc = encode_pairs(tok, pairs[:batch_pairs], 256)
    variants = {dt: (pols[dt], True, True) for dt in dtypes}
    variants[f"{dtypes[0]}-separate"] = (pols[dtypes[0]], True, False)
    if "bf16" in pols:
        variants["bf16-peft"] = (pols["bf16"], False, True)
    times: dict[str, list[float]] = {v: [] for v in variants}
    shapes = {}
    for _ in range(reps + 1):  # the first round warms up
        for v, (p, amp, shared) in variants.items():
            b = collate(enc, tok.pad_token_id, multiple=16, shared=shared)
            shapes[v] = tuple(b.input_ids.shape)
            ctx = compute_context(p.model, p.dtype, "cpu") if amp else contextlib.nullcontext()
            t = time.process_time()
            with ctx:
                s, _ = batch_logps(p.model, **b.inputs())
            s.sum().backward()
            times[v].append(time.process_time() - t)
            p.model.zero_grad(set_to_none=True)
    del pols
    return {"median": {v: _median(x[1:]) for v, x in times.items()}, "shapes": shapes}


def model_flops(policy, encoded, shared: bool) -> dict[str, float]:
    from prefdesk.engine.batching import shared_prefix

    inner = policy.model.get_base_model()
    cfg = inner.config
    n_embed = inner.get_input_embeddings().weight.numel()
    n_lora = sum(p.numel() for p in policy.trainable_parameters())
    n_base = sum(p.numel() for n, p in inner.named_parameters() if "lora_" not in n)
    n_trunk = n_base - n_embed  # the LM head is tied to the embedding
    H, V, L = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    d_attn = cfg.num_attention_heads * getattr(cfg, "head_dim", H // cfg.num_attention_heads)
    tok, attended = 0, 0
    for ep in encoded:
        seqs = ep.answers
        pre = shared_prefix(seqs) if shared else 0
        tok += pre + sum(len(e.input_ids) - pre for e in seqs)
        attended += pre * (pre + 1) // 2  # the prompt, causal, once
        for e in seqs:
            a = len(e.input_ids) - pre
            attended += a * pre + a * (a + 1) // 2  # each answer sees the prompt and itself
    data_tokens = sum(ep.tokens for ep in encoded)
    ans = sum(e.answer_len - (1 if e.answer_start == 0 else 0) for ep in encoded for e in ep.answers)
    attn = 4 * L * d_attn * attended
    train = 4 * n_trunk * tok + 6 * n_lora * tok + 3 * attn + 4 * V * H * ans
    ref = 2 * n_trunk * tok + attn + 2 * V * H * ans
    return {"train": train, "ref": ref, "six_n": 6 * (n_base + n_lora) * tok, "tokens": tok,
            "data_tokens": data_tokens, "answer_tokens": ans}


# -- the contenders ----------------------------------------------------------------------


def run_trl(pairs, args, dtype: str) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from prefdesk.models import ensure_embedded, load_tokenizer

    path = ensure_embedded()
    bf16 = dtype == "bf16"
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if bf16 else torch.float32)
    tok = load_tokenizer("smollm2-135m-instruct")
    rows = [{"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}]} for p in pairs]
    load = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as out:
        cfg = DPOConfig(
            output_dir=out, beta=BETA, loss_type=["sigmoid"], learning_rate=LR, lr_scheduler_type="linear",
            warmup_steps=0, max_grad_norm=1.0, num_train_epochs=1, per_device_train_batch_size=args.batch,
            max_length=args.max_length, bf16=bf16, gradient_checkpointing=False, use_cpu=True,
            dataloader_num_workers=0, logging_steps=1, report_to=[], save_strategy="no", seed=SEED,
            disable_tqdm=True, precompute_ref_log_probs=True, precompute_ref_batch_size=args.batch,
        )
        peft_cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        t, c = time.perf_counter(), time.process_time()
        trainer = DPOTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok,
                             peft_config=peft_cfg)
        setup = time.perf_counter() - t  # tokenization + the reference precompute
        t = time.perf_counter()
        trainer.train()
        train = time.perf_counter() - t
        cpu = time.process_time() - c
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    seconds = setup + train
    return {"seconds": seconds, "load": load, "setup": setup, "train_seconds": train, "losses": losses,
            "pairs_per_s": len(pairs) / seconds, "pairs_per_s_warm": len(pairs) / train, "dtype": dtype,
            "cpu_per_pair": cpu / len(pairs)}


def run_prefdesk(pairs, args, shared: bool) -> dict:
    from prefdesk.plugins.dpo import DPOOptimizer
    from prefdesk.config import ModelSettings
    from prefdesk.context import RunContext, RunSettings
    from prefdesk.engine.batching import encode_pairs
    from prefdesk.models import build_policy
    from prefdesk.tracking import Tracker

    os.environ["PREFDESK_SHARE_PREFIX"] = "1" if shared else "0"
    t0 = time.perf_counter()
    policy = build_policy(ModelSettings())
    load = time.perf_counter() - t0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            params = DPOOptimizer.Params(beta=BETA, loss_type="sigmoid", learning_rate=LR, epochs=1,
                                         batch_size=args.batch)
            settings = RunSettings(output_dir=Path(tmp) / "run", seed=SEED, max_length=args.max_length,
                                   progress=False, cache_root=Path(tmp) / "refs")
            ctx = RunContext(policy=policy, settings=settings, tracker=Tracker(), pairs=pairs)
            t, c = time.perf_counter(), time.process_time()
            res = DPOOptimizer().fit(ctx, params)
            seconds = time.perf_counter() - t
            cpu = time.process_time() - c
    finally:
        os.environ.pop("PREFDESK_SHARE_PREFIX", None)
    flops = model_flops(policy, encode_pairs(policy.tokenizer, pairs, args.max_length), shared)
    return {
        "seconds": seconds, "load": load, "losses": res.extra["loss_curve"],
        "pairs_per_s": len(pairs) / seconds,
        "pairs_per_s_warm": len(pairs) / (seconds - res.extra["reference_seconds"]),
        "reference_seconds": res.extra["reference_seconds"], "train_seconds": res.extra["train_seconds"],
        "padding_share": res.extra["padding_share"], "dtype": SHORT[policy.dtype], "cpu_per_pair": cpu / len(pairs),
        "compiled": res.extra["compiled"], "layout": res.extra["layout"], "flops": flops, "metrics": res.metrics,
    }


def _best(runs: list[dict]) -> dict:
    """The run with the median pairs/s (the only one when --repeats 1)."""
    return sorted(runs, key=lambda r: r["pairs_per_s"])[len(runs) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="HH-RLHF harmless-base test (.jsonl.gz)")
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1, help="rounds of (TRL, shared, separate), medians reported")
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--skip-separate", action="store_true", help="no prefdesk run with a row per answer")
    ap.add_argument("--no-precision", action="store_true")
    ap.add_argument("--trl-dtype", choices=["auto", "bf16", "fp32"], default="auto",
                    help="auto: the dtype prefdesk's model.dtype auto picks here")
    ap.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                    help="PREFDESK_COMPILE for prefdesk (auto: on when the planned steps pay for it)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for both sides (0: torch's default)")
    args = ap.parse_args()
    os.environ["PREFDESK_COMPILE"] = args.compile
    if args.threads:
        torch.set_num_threads(args.threads)

    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from prefdesk.hardware import choose_auto_dtype, cpu_info, measure_bf16_gain
    from prefdesk.models import load_tokenizer

    load = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    cpu = cpu_info()
    choice = choose_auto_dtype(torch.device("cpu"))
    ours_dtype = SHORT[choice.dtype]
    trl_dtype = ours_dtype if args.trl_dtype == "auto" else args.trl_dtype
    gain = measure_bf16_gain()
    print(f"CPU: {cpu.describe()}; bf16/fp32 matmul speed ratio now: {gain:.2f}x")
    print(f"dtype: prefdesk {ours_dtype} (model.dtype auto: {choice.reason}); TRL {trl_dtype}"
          + (" (--trl-dtype)" if args.trl_dtype != "auto" else " (the same choice)"))
    pairs = hh_pairs(args.data, args.pairs, args.max_length, load_tokenizer("smollm2-135m-instruct"))
    print(f"{len(pairs)} HH harmless-base pairs, max_length {args.max_length}, batch {args.batch}")
    peak = matmul_rate(choice.dtype)
    print(f"{ours_dtype} matmul 2048^3: {peak / 1e9:.1f} GFLOP/s (the yardstick for the fraction below)")

    if not args.no_precision:
        # bf16 is only timed where it is not emulated (it would take minutes per batch)
        dts = [ours_dtype] + (["fp32" if ours_dtype == "bf16" else "bf16"] if gain >= 0.5 else [])
        p = batch_timings(pairs, dts)
        m, sh = p["median"], p["shapes"]
        line = ", ".join(f"{v} {m[v]:.2f} s {sh[v]}" for v in m)
        print(f"one batch of 4 pairs, forward+backward, CPU s (median of 3, interleaved): {line}")
        print(f"  prefix sharing alone: {m[f'{ours_dtype}-separate'] / m[ours_dtype]:.2f}x faster per batch")
        if "bf16" in m and "fp32" in m:
            print(f"  bf16 (the engine's autocast) is {m['fp32'] / m['bf16']:.2f}x faster than fp32")
        elif gain < 0.5:
            print(f"  bf16 not timed: its matmuls run {gain:.2f}x fp32 here (emulated)")

    rounds: dict[str, list[dict]] = {"trl": [], "shared": [], "separate": []}
    for _ in range(args.repeats):
        if not args.skip_trl:
            rounds["trl"].append(run_trl(pairs, args, trl_dtype))
            r = rounds["trl"][-1]
            print(f"TRL DPOTrainer ({r['dtype']}): {r['seconds']:.1f} s = {r['setup']:.1f} s tokenize + reference "
                  f"precompute, {r['train_seconds']:.1f} s train -> {r['pairs_per_s']:.3f} pairs/s", flush=True)
        for shared in (True, False) if not args.skip_separate else (True,):
            key = "shared" if shared else "separate"
            rounds[key].append(run_prefdesk(pairs, args, shared))
            r = rounds[key][-1]
            print(f"prefdesk dpo ({r['layout']}, {r['dtype']}, compiled: {'yes' if r['compiled'] else 'no'}): "
                  f"{r['seconds']:.1f} s incl. reference pass {r['reference_seconds']:.1f} s (padding "
                  f"{r['padding_share']:.1%}) -> {r['pairs_per_s']:.3f} pairs/s; {r['pairs_per_s_warm']:.3f} pairs/s "
                  f"with a warm reference cache", flush=True)

    trl = _best(rounds["trl"]) if rounds["trl"] else None
    ours = _best(rounds["shared"])
    sep = _best(rounds["separate"]) if rounds["separate"] else None
    print(f"\nsummary (median of {args.repeats} round(s); load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}):")
    print("  contender                          dtype  pairs/s  vs TRL   warm cache  vs TRL   CPU s/pair  vs TRL")
    rows = ([("TRL DPOTrainer", trl)] if trl else []) + ([("prefdesk, a row per answer", sep)] if sep else []) \
        + [("prefdesk, prompt shared (default)", ours)]
    for name, r in rows:
        vs = f"{r['pairs_per_s'] / trl['pairs_per_s']:5.2f}x" if trl else "   -  "
        vw = f"{r['pairs_per_s_warm'] / trl['pairs_per_s_warm']:5.2f}x" if trl else "   -  "
        vc = f"{trl['cpu_per_pair'] / r['cpu_per_pair']:5.2f}x" if trl else "   -  "
        print(f"  {name:<34} {r['dtype']:<5}  {r['pairs_per_s']:7.3f}  {vs}   {r['pairs_per_s_warm']:9.3f}  {vw}"
              f"   {r['cpu_per_pair']:9.2f}  {vc}")
    print("  (CPU s/pair: the process's CPU time per pair, what a loaded machine distorts least)")
    if sep:
        print(f"  prefix sharing alone: {ours['pairs_per_s'] / sep['pairs_per_s']:.2f}x (reference pass counted), "
              f"{ours['pairs_per_s_warm'] / sep['pairs_per_s_warm']:.2f}x (warm cache), "
              f"{sep['cpu_per_pair'] / ours['cpu_per_pair']:.2f}x in CPU time")
    peak = max(peak, matmul_rate(choice.dtype))  # measured again: one reading on a shared machine can be low
    f = ours["flops"]
    achieved = (f["train"] + f["ref"]) / ours["seconds"]
    print(f"engine FLOP/s: {achieved / 1e9:.1f} GFLOP/s useful = {achieved / peak:.1%} of the {ours_dtype} matmul rate "
          f"({f['tokens']} tokens computed for {f['data_tokens']} in the pairs, {f['answer_tokens']} answer tokens; "
          f"6·N·tokens convention: {f['six_n'] / ours['train_seconds'] / 1e9:.1f} GFLOP/s)")
    print("loss per step:")
    cols = [("TRL", trl)] * bool(trl) + [("separate", sep)] * bool(sep) + [("shared", ours)]
    print("  step  " + "".join(f"{n:<10}" for n, _ in cols))
    n = max(len(r["losses"]) for _, r in cols)
    for i in range(n):
        print(f"  {i + 1:4d}  " + "".join(f"{r['losses'][i]:<10.4f}" if i < len(r["losses"]) else " " * 10
                                         for _, r in cols))
    print("  mean  " + "".join(f"{sum(r['losses']) / len(r['losses']):<10.4f}" for _, r in cols))


if __name__ == "__main__":
    main()
