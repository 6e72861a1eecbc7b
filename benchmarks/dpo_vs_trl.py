"""prefdesk's DPO plugin against TRL's DPOTrainer on SmolLM2-135M-Instruct, in one run.

    python benchmarks/dpo_vs_trl.py                  # precision check, TRL, prefdesk (~8 min, 2 cores)
    python benchmarks/dpo_vs_trl.py --skip-trl       # prefdesk only
    python benchmarks/dpo_vs_trl.py --no-precision   # skip the bf16-vs-fp32 measurement
    python benchmarks/dpo_vs_trl.py --skip-trl --no-precision --compile   # engine with torch.compile

Same 64 pairs (the first pairs of Anthropic HH harmless-base test whose prompt + answer
fit in --max-length tokens for both answers, so neither side truncates and both see the
same tokens), LoRA r=16 alpha=32 on all linear layers, batch 4, one epoch, lr 1e-4 with
linear decay, beta 0.1, sigmoid loss, seed 0. TRL runs with its best settings for a CPU
(bf16=True, no gradient checkpointing, no dataloader workers).

Prints each side's pairs/s and the ratio, both loss curves per step, the engine's
FLOP/s as a fraction of the bf16 matmul rate measured in the same run, and the bf16 vs
fp32 forward+backward time of one batch.

FLOP count (useful work on real tokens; padding is not counted):
    train step  4·N_trunk·tok + 6·N_lora·tok + 3·attn + 4·V·H·ans
    reference   2·N_trunk·tok + attn + 2·V·H·ans         (once per pair, no grad)
where N_trunk are the frozen decoder weights without the embedding (forward 2N, backward
only the activation gradient, 2N: frozen weights need no weight gradient), N_lora the
adapter weights (6N as usual), attn = Σ_seq 2·L·T²·d (causal QK^T and AV) and the LM head
(V·H) runs on answer tokens only. The usual 6·N·tokens is printed too for comparison.
"""

from __future__ import annotations

import argparse
import math
import os
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


def matmul_rate(n: int = 4096, reps: int = 3) -> float:
    """FLOP/s of a large bf16 matmul: the machine's practical bf16 peak."""
    a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
    a @ b
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def precision(pairs, batch_pairs: int = 4, reps: int = 3) -> dict[str, float]:
    """Median forward+backward seconds of one real batch; LoRA weights fp32 in every case.

    fp32: fp32 base.  bf16-peft: bf16 base, peft computing the adapter in fp32 (casting
    activations up and down).  bf16: the engine's path, bf16 base and bf16 autocast.
    """
    import contextlib

    from prefdesk.config import ModelSettings
    from prefdesk.engine.batching import collate, encode_pairs
    from prefdesk.engine.logprobs import compute_context, sequence_logps
    from prefdesk.models import build_policy

    pols = {"bf16": build_policy(ModelSettings(dtype="bf16")), "fp32": build_policy(ModelSettings(dtype="fp32"))}
    pols["bf16-peft"] = pols["bf16"]
    tok = pols["bf16"].tokenizer
    enc = encode_pairs(tok, pairs[:batch_pairs], 256)
    b = collate(enc, tok.pad_token_id, multiple=16)
    times: dict[str, list[float]] = {dt: [] for dt in pols}
    for _ in range(reps + 1):  # the first round warms up
        for dt, p in pols.items():
            ctx = compute_context(p.model, p.dtype, "cpu") if dt == "bf16" else contextlib.nullcontext()
            t = time.perf_counter()
            with ctx:
                s, _ = sequence_logps(p.model, b.input_ids, b.attention_mask, b.answer_mask)
            s.sum().backward()
            times[dt].append(time.perf_counter() - t)
            p.model.zero_grad(set_to_none=True)
    med = {dt: sorted(v[1:])[len(v[1:]) // 2] for dt, v in times.items()}
    del pols
    return {"shape": tuple(b.input_ids.shape), **med}


def model_flops(policy, encoded) -> dict[str, float]:
    inner = policy.model.get_base_model()
    cfg = inner.config
    n_embed = inner.get_input_embeddings().weight.numel()
    n_lora = sum(p.numel() for p in policy.trainable_parameters())
    n_base = sum(p.numel() for n, p in inner.named_parameters() if "lora_" not in n)
    n_trunk = n_base - n_embed  # the LM head is tied to the embedding
    H, V, L = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    d_attn = cfg.num_attention_heads * getattr(cfg, "head_dim", H // cfg.num_attention_heads)
    seqs = [e for ep in encoded for e in (ep.chosen, ep.rejected)]
    tok = sum(len(e.input_ids) for e in seqs)
    ans = sum(e.answer_len - (1 if e.answer_start == 0 else 0) for e in seqs)
    attn = sum(2 * L * len(e.input_ids) ** 2 * d_attn for e in seqs)
    train = 4 * n_trunk * tok + 6 * n_lora * tok + 3 * attn + 4 * V * H * ans
    ref = 2 * n_trunk * tok + attn + 2 * V * H * ans
    return {"train": train, "ref": ref, "six_n": 6 * (n_base + n_lora) * tok, "tokens": tok, "answer_tokens": ans}


# -- the two contenders ------------------------------------------------------------------


def run_trl(pairs, args) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from prefdesk.models import ensure_embedded, load_tokenizer

    path = ensure_embedded()
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    tok = load_tokenizer("smollm2-135m-instruct")
    rows = [{"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}]} for p in pairs]
    with tempfile.TemporaryDirectory() as out:
        cfg = DPOConfig(
            output_dir=out, beta=BETA, loss_type=["sigmoid"], learning_rate=LR, lr_scheduler_type="linear",
            warmup_steps=0, max_grad_norm=1.0, num_train_epochs=1, per_device_train_batch_size=args.batch,
            max_length=args.max_length, bf16=True, gradient_checkpointing=False, use_cpu=True,
            dataloader_num_workers=0, logging_steps=1, report_to=[], save_strategy="no", seed=SEED,
            disable_tqdm=True,
        )
        peft_cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = DPOTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok,
                             peft_config=peft_cfg)
        setup = time.perf_counter() - t0
        t = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"seconds": seconds, "setup": setup, "losses": losses, "pairs_per_s": len(pairs) / seconds}


def run_prefdesk(pairs, args) -> dict:
    from plugins.dpo import DPOOptimizer
    from prefdesk.config import ModelSettings
    from prefdesk.engine.batching import encode_pairs
    from prefdesk.models import build_policy
    from prefdesk.tracking import Tracker

    t0 = time.perf_counter()
    policy = build_policy(ModelSettings())
    setup = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        params = DPOOptimizer.Params(
            beta=BETA, loss_type="sigmoid", learning_rate=LR, epochs=1, batch_size=args.batch,
            max_length=args.max_length, seed=SEED, output_dir=f"{tmp}/run", progress=False,
        )
        t = time.perf_counter()
        res = DPOOptimizer().fit(policy, pairs, params, Tracker(), cache_root=Path(tmp) / "refs")
        seconds = time.perf_counter() - t
    flops = model_flops(policy, encode_pairs(policy.tokenizer, pairs, args.max_length))
    return {
        "seconds": seconds, "setup": setup, "losses": res.extra["loss_curve"],
        "pairs_per_s": len(pairs) / seconds,
        "pairs_per_s_warm_cache": len(pairs) / (seconds - res.extra["reference_seconds"]),
        "reference_seconds": res.extra["reference_seconds"], "train_seconds": res.extra["train_seconds"],
        "padding_share": res.extra["padding_share"], "dtype": str(policy.dtype), "flops": flops,
        "metrics": res.metrics,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="HH-RLHF harmless-base test (.jsonl.gz)")
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--no-precision", action="store_true")
    ap.add_argument("--compile", action="store_true", help="PREFDESK_COMPILE=1: torch.compile the decoder layers")
    args = ap.parse_args()
    if args.compile:
        os.environ["PREFDESK_COMPILE"] = "1"

    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from prefdesk.models import load_tokenizer

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    pairs = hh_pairs(args.data, args.pairs, args.max_length, load_tokenizer("smollm2-135m-instruct"))
    print(f"{len(pairs)} HH harmless-base pairs, max_length {args.max_length}, batch {args.batch}")
    peak = matmul_rate()
    print(f"bf16 matmul 4096^3: {peak / 1e12:.3f} TFLOP/s (the machine's bf16 rate for the fraction below)")

    if not args.no_precision:
        p = precision(pairs)
        print(f"precision, forward+backward of one batch {p['shape']}: fp32 {p['fp32']:.2f} s, bf16 base with "
              f"peft's fp32 adapter compute {p['bf16-peft']:.2f} s, bf16 autocast (the engine) {p['bf16']:.2f} s "
              f"-> bf16 is {p['fp32'] / p['bf16']:.2f}x faster than fp32")

    trl = None
    if not args.skip_trl:
        trl = run_trl(pairs, args)
        print(f"TRL DPOTrainer: {trl['seconds']:.1f} s train ({trl['setup']:.1f} s setup) "
              f"-> {trl['pairs_per_s']:.3f} pairs/s")
    ours = run_prefdesk(pairs, args)
    print(f"prefdesk dpo:   {ours['seconds']:.1f} s incl. reference pass {ours['reference_seconds']:.1f} s "
          f"({ours['setup']:.1f} s setup, {ours['dtype']}, padding {ours['padding_share']:.1%}) "
          f"-> {ours['pairs_per_s']:.3f} pairs/s; {ours['pairs_per_s_warm_cache']:.3f} pairs/s with a warm "
          f"reference cache")
    if trl:
        print(f"speed-up: {ours['pairs_per_s'] / trl['pairs_per_s']:.2f}x (reference pass counted), "
              f"{ours['pairs_per_s_warm_cache'] / trl['pairs_per_s']:.2f}x (warm cache)")
    f = ours["flops"]
    achieved = (f["train"] + f["ref"]) / ours["seconds"]
    print(f"engine FLOP/s: {achieved / 1e12:.3f} TFLOP/s useful = {achieved / peak:.1%} of the bf16 matmul rate "
          f"({f['tokens']} tokens, {f['answer_tokens']} answer tokens; "
          f"6·N·tokens convention: {f['six_n'] / ours['train_seconds'] / 1e12:.3f} TFLOP/s)")
    print("loss per step:")
    print("  step  " + ("TRL       " if trl else "") + "prefdesk")
    n = max(len(ours["losses"]), len(trl["losses"]) if trl else 0)
    for i in range(n):
        a = f"{trl['losses'][i]:.4f}    " if trl and i < len(trl["losses"]) else ("          " if trl else "")
        b = f"{ours['losses'][i]:.4f}" if i < len(ours["losses"]) else ""
        print(f"  {i + 1:4d}  {a}{b}")
    if trl:
        mt, mo = sum(trl["losses"]) / len(trl["losses"]), sum(ours["losses"]) / len(ours["losses"])
        print(f"  mean  {mt:.4f}    {mo:.4f}")


if __name__ == "__main__":
    main()
