"""Data-parallel smoke run: DPO on the tiny model under `accelerate launch`, the loss curve to JSON.

The same global batch two ways must train the same: one process with `--grad-accum 2`, or
two processes with `--grad-accum 1` (each rank takes every other micro-batch of the run's
plan, gradients all-reduced). tests/test_scaleout.py runs both on CPU and compares:

    accelerate launch --cpu --num_processes 2 deployments/ddp_tiny.py --grad-accum 1 --out two.json

On a GPU machine drop `--cpu` and set `--num_processes` to the GPU count.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOPICS = ["tea", "rain", "maps", "bread", "clocks", "birds", "rivers", "chess",
          "glass", "paper", "bikes", "salt", "wool", "bees", "kites", "stone"]


def toy_pairs():
    """16 separable pairs (calm chosen, shouting rejected), as tests/conftest.py's toy_pairs."""
    from prefdesk.pairs import Pair

    return [Pair(prompt=[{"role": "user", "content": f"Tell me one thing about {t}."}],
                 chosen=f"Sure. {t.capitalize()} is interesting, and here is a calm fact about it.",
                 rejected=f"NO!!! {t.upper()} {t.upper()} STOP ASKING!!!") for t in TOPICS]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from accelerate import PartialState

    from prefdesk.plugins.dpo import DPOOptimizer
    from prefdesk.config import ModelSettings
    from prefdesk.context import RunContext, RunSettings
    from prefdesk.models import build_policy
    from prefdesk.tracking import Tracker

    work = args.out.parent / f"{args.out.stem}-work"
    policy = build_policy(ModelSettings(name="tiny", dtype="fp32"), seed=0)
    ctx = RunContext(policy=policy, tracker=Tracker(), pairs=toy_pairs(),
                     settings=RunSettings(output_dir=work, cache_root=work / "refs", progress=False, resume=False))
    params = DPOOptimizer.Params(max_steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum)
    res = DPOOptimizer().fit(ctx, params)  # the engine's Accelerator joins the launcher's process group
    state = PartialState()
    if state.is_main_process:
        args.out.write_text(json.dumps({"processes": state.num_processes, "grad_accum": args.grad_accum,
                                        "loss_curve": res.extra["loss_curve"], "steps": res.steps,
                                        "metrics": res.metrics}))


if __name__ == "__main__":
    main()
