"""How the data desk scales: 20,000 and 200,000 synthetic pairs with planted defects.

Each set is written to a temporary JSONL first (so reading counts), then checked with
`run_data_desk`. Prints seconds for each size, the ratio (200k / 20k; 10.0 is linear) and
seconds per 1,000 pairs. Target: 200,000 pairs in under 30 s on a 2-core machine.

    python benchmarks/validate_scale.py [--sizes 20000 200000] [--no-docs]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefdesk.config import DataSettings  # noqa: E402
from prefdesk.validations.desk import run_data_desk  # noqa: E402

WORDS = ("the model answer data train pair prompt value check long short good bad useful "
         "clear wrong right maybe because however therefore example list item step first").split()


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def make_rows(n: int, seed: int = 0) -> tuple[list[str], dict[str, int]]:
    """JSONL lines: clean pairs plus ~1% each of degenerates, duplicates, contradictions,
    too-long pairs and unreadable rows."""
    rng = random.Random(seed)
    lines: list[str] = []
    planted = dict(degenerate=0, duplicate=0, contradiction=0, too_long=0, bad=0)
    kept: list[dict] = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.01 and kept:
            lines.append(json.dumps(rng.choice(kept)))
            planted["duplicate"] += 1
        elif roll < 0.02 and kept:
            src = rng.choice(kept)
            lines.append(json.dumps({"prompt": src["prompt"], "chosen": src["rejected"], "rejected": src["chosen"]}))
            planted["contradiction"] += 1
        elif roll < 0.03:
            a = _text(rng, 5, 30)
            lines.append(json.dumps({"prompt": f"q{i} " + _text(rng, 3, 12), "chosen": a, "rejected": "  " + a.upper()}))
            planted["degenerate"] += 1
        elif roll < 0.04:
            lines.append(json.dumps({"prompt": f"q{i} " + _text(rng, 3, 12), "chosen": _text(rng, 600, 900),
                                     "rejected": _text(rng, 5, 30)}))
            planted["too_long"] += 1
        elif roll < 0.05:
            lines.append(rng.choice(['{"prompt": "broken', '{"prompt": "x", "chosen": "y"}', '[1, 2]',
                                     '{"prompt": "x", "chosen": 3, "rejected": "z"}']))
            planted["bad"] += 1
        else:
            row = {"prompt": f"question {i}: " + _text(rng, 3, 15), "chosen": _text(rng, 10, 80),
                   "rejected": _text(rng, 10, 80)}
            if rng.random() < 0.05:
                row["rejected"] = "I'm sorry, but I can't help with that. " + row["rejected"]
            kept.append(row)
            lines.append(json.dumps(row))
    return lines, planted


def run(n: int, docs: bool) -> float:
    lines, planted = make_rows(n)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pairs.jsonl"
        path.write_text("\n".join(lines) + "\n")
        t = time.perf_counter()
        report = run_data_desk([str(path)], DataSettings(), Path(tmp) / "out", data_docs=docs)
        secs = time.perf_counter() - t
    assert report.accepted + report.quarantined == report.rows_in == n
    print(f"{n:>8,} pairs: {secs:6.2f} s  ({secs / n * 1000:.3f} s per 1k)  accepted {report.accepted:,} "
          f"quarantined {report.quarantined:,}  planted {planted}")
    print(f"          stages: {report.seconds}")
    print(f"          reasons: {dict(list(report.quarantine_reasons.items())[:8])}")
    return secs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    ap.add_argument("--no-docs", action="store_true", help="skip building Data Docs")
    args = ap.parse_args()
    times = {n: run(n, not args.no_docs) for n in args.sizes}
    if len(times) >= 2:
        small, large = min(times), max(times)
        ratio = times[large] / times[small]
        print(f"ratio {large:,}/{small:,} pairs: {ratio:.2f} (linear = {large / small:.1f}); "
              f"{times[large] / large * 1000:.3f} s per 1k pairs at {large:,}")
        if large >= 200_000:
            print(f"target 200k < 30 s: {'met' if times[large] < 30 else 'MISSED'}")


if __name__ == "__main__":
    main()
