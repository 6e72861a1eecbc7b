"""Peak memory of a DPO step against an SFT step on the same batch: the reference is ~free.

    python benchmarks/memory.py                    # SmolLM2-135M-Instruct, bf16 (~2 min)
    python benchmarks/memory.py --model tiny       # the random tiny model (seconds)

Each measurement runs in a fresh subprocess and reads the kernel's resident-set
high-water mark (VmHWM in /proc/self/status, reset after the model is loaded through
/proc/self/clear_refs where the kernel allows it). Measured, on the same pairs with the
same batch size and steps:

  sft        the engine with the SFT loss and no reference at all (the floor)
  dpo        the DPO plugin: reference log-probs precomputed once (adapter off, no grad),
             then training steps that read them from the cache
  dpo-live   the DPO plugin with reference_cache=false: a no-grad reference forward
             (adapter off) inside every training step

The reference is the same module with the adapter switched off, so no second copy of the
weights exists; the script prints what such a copy would have cost for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

MODES = ("sft", "dpo", "dpo-live")


def _status(field: str) -> float:
    """A /proc/self/status figure in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(mode: str, args) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    from dpo_vs_trl import DEFAULT_DATA, hh_pairs
    from prefdesk.plugins.dpo import DPOOptimizer
    from prefdesk.plugins.sft import sft_loss
    from prefdesk.config import ModelSettings
    from prefdesk.context import RunContext, RunSettings
    from prefdesk.engine.loop import train
    from prefdesk.models import build_policy
    from prefdesk.tracking import Tracker

    policy = build_policy(ModelSettings(name=args.model))
    pairs = hh_pairs(args.data or DEFAULT_DATA, args.pairs, args.max_length, policy.tokenizer)
    base_bytes = sum(p.numel() * p.element_size() for n, p in policy.model.named_parameters() if "lora_" not in n)
    loaded = _status("VmRSS")
    reset = _reset_peak()
    with tempfile.TemporaryDirectory() as tmp:
        settings = RunSettings(output_dir=Path(tmp) / "run", max_length=args.max_length, progress=False,
                               cache_root=Path(tmp) / "refs", reference_cache=(mode != "dpo-live"))
        ctx = RunContext(policy=policy, settings=settings, tracker=Tracker(), pairs=pairs)
        params = DPOOptimizer.Params(max_steps=args.steps, batch_size=args.batch)
        if mode == "sft":  # the shared fields; the loss is SFT's
            train(ctx, params, sft_loss, name="sft", use_reference=False)
        else:
            DPOOptimizer().fit(ctx, params)
    return {"mode": mode, "peak_mib": _status("VmHWM"), "loaded_mib": loaded, "peak_reset": reset,
            "base_mib": base_bytes / 2**20, "dtype": str(policy.dtype), "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", type=Path, default=None, help="HH-RLHF harmless-base test (.jsonl.gz)")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--child", choices=MODES)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args)))
        return

    rows = {}
    for mode in MODES:
        cmd = [sys.executable, __file__, "--child", mode, "--model", args.model, "--pairs", str(args.pairs),
               "--batch", str(args.batch), "--steps", str(args.steps), "--max-length", str(args.max_length)]
        if args.data:
            cmd += ["--data", str(args.data)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows[mode] = json.loads(next(l for l in out.splitlines() if l.startswith("RESULT "))[7:])
    first = rows["sft"]
    print(f"{args.model} ({first['dtype']}), {args.pairs} pairs, batch {args.batch}, {args.steps} steps, "
          f"max_length {args.max_length}; peak RSS per fresh process"
          + ("" if first["peak_reset"] else " (peak not reset after loading: includes the load)"))
    print(f"  {'mode':9s} {'peak MiB':>9s} {'loaded MiB':>11s} {'step MiB':>9s}")
    for mode, r in rows.items():
        print(f"  {mode:9s} {r['peak_mib']:9.0f} {r['loaded_mib']:11.0f} {r['peak_mib'] - r['loaded_mib']:9.0f}")
    sft = rows["sft"]
    for mode in ("dpo", "dpo-live"):
        r = rows[mode]
        extra = (r["peak_mib"] - r["loaded_mib"]) - (sft["peak_mib"] - sft["loaded_mib"])
        print(f"{mode} / sft peak: {r['peak_mib'] / sft['peak_mib']:.3f}  "
              f"(step memory {extra:+.0f} MiB vs sft)")
    print(f"a second copy of the base as reference would add {first['base_mib']:.0f} MiB "
          f"({first['base_mib'] / sft['peak_mib']:.0%} of the SFT peak)")


if __name__ == "__main__":
    main()
