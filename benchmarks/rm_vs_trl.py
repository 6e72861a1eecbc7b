"""prefdesk's reward model against TRL's RewardTrainer on SmolLM2-135M-Instruct, in one run.

    python benchmarks/rm_vs_trl.py                 # TRL, then prefdesk (~6 min on 2 quiet cores)
    python benchmarks/rm_vs_trl.py --skip-trl      # prefdesk only
    python benchmarks/rm_vs_trl.py --data PATH     # another HH-RLHF file (.jsonl.gz)

The same pairs for both: the first --pairs pairs of Anthropic HH harmless-base (test split)
whose prompt + answer fit in --max-length tokens for both answers (neither side truncates),
split by prompt with `plugins.reward_model.split_heldout` (the plugin's own split, seed 0,
--heldout-share): both train on the same training pairs and are scored on the same held-out
pairs. LoRA r=16 alpha=32 on all linear layers plus a trained scalar head; batch 4; one
epoch; lr 1e-4 with linear decay; no reward centring; seed 0. Both compute in the dtype
prefdesk picks for the machine (bf16 on a CPU with AMX, else fp32, where bf16 is emulated
and slow: printed). TRL runs with its best settings for a CPU (that precision, no gradient
checkpointing, no dataloader workers) on
`AutoModelForSequenceClassification` (num_labels=1, LoRA task SEQ_CLS: the head trains
in full, as prefdesk's does).

Prints each side's training pairs/s and the ratio, and both held-out pair accuracies. TRL's
time is `trainer.train()` alone; prefdesk's is the whole `fit_reward_model` call (encoding,
training, held-out scoring, saving), so the ratio does not flatter prefdesk.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.dpo_vs_trl import DEFAULT_DATA, hh_pairs  # noqa: E402  (the same data, read the same way)

LR, SEED = 1e-4, 0


def run_trl(train, held, args, dtype: torch.dtype) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from prefdesk.models import ensure_embedded, load_tokenizer

    def rows(pairs):
        return [{"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
                 "rejected": [{"role": "assistant", "content": p.rejected}]} for p in pairs]

    t0 = time.perf_counter()
    tok = load_tokenizer("smollm2-135m-instruct")
    model = AutoModelForSequenceClassification.from_pretrained(ensure_embedded(), num_labels=1, dtype=dtype)
    model.config.pad_token_id = tok.pad_token_id
    with tempfile.TemporaryDirectory() as out:
        cfg = RewardConfig(
            output_dir=out, learning_rate=LR, lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0,
            num_train_epochs=1, per_device_train_batch_size=args.batch, per_device_eval_batch_size=8,
            max_length=args.max_length, bf16=dtype == torch.bfloat16, gradient_checkpointing=False, use_cpu=True,
            dataloader_num_workers=0, logging_steps=1, report_to=[], save_strategy="no", seed=SEED, disable_tqdm=True,
        )
        peft_cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="SEQ_CLS")
        trainer = RewardTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows(train)),
                                processing_class=tok, peft_config=peft_cfg)
        setup = time.perf_counter() - t0
        t = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t
        accuracy = trainer.evaluate(Dataset.from_list(rows(held)))["eval_accuracy"]
    return {"seconds": seconds, "setup": setup, "pairs_per_s": len(train) / seconds, "accuracy": accuracy,
            "dtype": str(dtype)}


def run_prefdesk(pairs, n_train: int, args) -> dict:
    from prefdesk.plugins.reward_model import RewardModelParams, fit_reward_model
    from prefdesk.config import ModelSettings
    from prefdesk.context import RunContext, RunSettings
    from prefdesk.models import build_policy
    from prefdesk.tracking import Tracker

    t0 = time.perf_counter()
    policy = build_policy(ModelSettings(), seed=SEED)
    setup = time.perf_counter() - t0
    params = RewardModelParams(learning_rate=LR, epochs=1, batch_size=args.batch, heldout_share=args.heldout_share)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = RunContext(policy=policy, tracker=Tracker(), pairs=pairs,
                         settings=RunSettings(output_dir=Path(tmp), seed=SEED, max_length=args.max_length, progress=False))
        t = time.perf_counter()
        _, res = fit_reward_model(ctx, params)
        seconds = time.perf_counter() - t
    return {"seconds": seconds, "setup": setup, "pairs_per_s": n_train / seconds, "dtype": str(policy.dtype),
            "load": os.getloadavg()[0],
            "accuracy": res.metrics["rm/pair_accuracy"], "figures": res.metrics}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="HH-RLHF harmless-base test (.jsonl.gz)")
    ap.add_argument("--pairs", type=int, default=160)
    ap.add_argument("--heldout-share", type=float, default=0.2)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--prefdesk-first", action="store_true",
                    help="run prefdesk before TRL (on a shared machine, run both orders: load drifts)")
    args = ap.parse_args()

    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from prefdesk.plugins.reward_model import split_heldout
    from prefdesk.models import choose_dtype, load_tokenizer

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    pairs = hh_pairs(args.data, args.pairs, args.max_length, load_tokenizer("smollm2-135m-instruct"))
    train, held = split_heldout(pairs, args.heldout_share, SEED)
    print(f"{len(pairs)} HH harmless-base pairs: {len(train)} to train on, {len(held)} held out (by prompt); "
          f"max_length {args.max_length}, batch {args.batch}, one epoch")

    trl, ours = None, None
    if args.prefdesk_first:
        ours = run_prefdesk(pairs, len(train), args)
    if not args.skip_trl:
        trl = run_trl(train, held, args, choose_dtype("auto", torch.device("cpu")))
        print(f"TRL RewardTrainer: {trl['seconds']:.1f} s train ({trl['setup']:.1f} s setup, {trl['dtype']}) "
              f"-> {trl['pairs_per_s']:.3f} pairs/s; held-out accuracy {trl['accuracy']:.3f}; "
              f"load average {os.getloadavg()[0]:.1f}")
    ours = ours or run_prefdesk(pairs, len(train), args)
    f = ours["figures"]
    print(f"prefdesk reward_model: {ours['seconds']:.1f} s incl. held-out scoring and saving ({ours['setup']:.1f} s "
          f"setup, {ours['dtype']}) -> {ours['pairs_per_s']:.3f} pairs/s; held-out accuracy {ours['accuracy']:.3f} "
          f"(margin {f['rm/margin']:.3f}, reward {f['rm/reward_mean']:.3f} ± {f['rm/reward_std']:.3f}, "
          f"length correlation {f['rm/length_correlation']:+.3f}); load average {ours['load']:.1f}")
    if trl:
        print(f"speed-up: {ours['pairs_per_s'] / trl['pairs_per_s']:.2f}x; held-out accuracy prefdesk "
              f"{ours['accuracy']:.3f} vs TRL {trl['accuracy']:.3f} on the same {len(held)} pairs")


if __name__ == "__main__":
    main()
