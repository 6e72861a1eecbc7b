"""The label-direction check on real sets: agreement of each signal with the labels as
published and with chosen and rejected swapped, with Wilson 95% intervals, and the verdict.

    python benchmarks/direction_check.py [--data ../shared/data] [--reference] [--sample 64]

`--reference` adds the reference model's own preference (the embedded SmolLM2-135M in
fp32 on a CPU, mean token log-prob, on a seeded sample of `--sample` pairs): minutes per
set on two busy cores, seconds on a GPU. It is scored once per set: on the swapped pairs
every vote is exactly the opposite (same sample, same log-probs), so the flipped line
mirrors it. The rubric and the features are rerun on the swapped pairs. The sets (see
`<data>/README.md`): CoCoNot preference pairs (helpful vs over-refusal), hh-rlhf
harmless-base test (human harmlessness preferences), PandaLM test set (three annotators,
majority label).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from prefdesk.pairs import Pair  # noqa: E402
from prefdesk.readers import read_pairs  # noqa: E402
from prefdesk.validations.direction import estimate, reference_votes, signal  # noqa: E402
from prefdesk.validations.features import pair_frame, win_columns  # noqa: E402

SETS = {
    "coconot_pref": "coconot/coconot_pref.jsonl",
    "hh-rlhf harmless-base test": "hh-rlhf/harmless-base-test.jsonl.gz",
    "pandalm testset-v1": "pandalm/testset-v1.json",
}


def flip(pairs: list[Pair]) -> list[Pair]:
    return [Pair(prompt=p.prompt, chosen=p.rejected, rejected=p.chosen, source=p.source, line=p.line, meta=p.meta)
            for p in pairs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"),
                    help="folder holding the sets (default: ../shared/data next to the repository)")
    ap.add_argument("--reference", action="store_true", help="add the reference model's signal (loads SmolLM2)")
    ap.add_argument("--sample", type=int, default=64, help="pairs the reference model scores")
    args = ap.parse_args()
    policy = None
    if args.reference:
        from prefdesk.config import ModelSettings
        from prefdesk.models import build_policy

        import torch

        policy = build_policy(ModelSettings(dtype="auto" if torch.cuda.is_available() else "fp32"), trainable=False)
    for name, rel in SETS.items():
        path = Path(args.data) / rel
        if not path.exists():
            print(f"{name}: {path} absent, skipped")
            continue
        pairs = read_pairs([str(path)]).pairs
        print(f"\n{name}: {len(pairs)} pairs")
        ref = None
        if policy is not None:
            t = time.perf_counter()
            ref = reference_votes(policy, pairs, max_length=512, sample=args.sample)
            print(f"  reference model: {len(ref)} pairs scored in {time.perf_counter() - t:.1f} s")
        for label, these, sign in (("original", pairs, 1), ("flipped", flip(pairs), -1)):
            t = time.perf_counter()
            wins, _, _ = win_columns(pair_frame(these))
            est = estimate(these, wins)
            if ref is not None:
                est.signals.append(signal("reference", sign * ref))
            took = time.perf_counter() - t
            verdict = "PROBABLY FLIPPED" if est.flipped else "not flagged"
            print(f"  {label:8s} {verdict:16s} ({took:.1f} s)")
            for s in est.signals:
                print(f"    {s.line()}")


if __name__ == "__main__":
    main()
