"""Night 2 costs a fraction of night 1: the work already done is not redone.

Night 1: `--pairs` pairs of a real preference set arrive in an empty inbox. Night 2: a
further `--new-share` of that many (5% by default) arrive, together with nothing else.
Each night runs the data-and-preparation phases the nightly flow runs before its first
training step, with the same code:

  ingest     `prefdesk.inbox.ingest_night`: read the new files, dedupe, write the window
  tokenize   the data desk's token counts of the window (`prefdesk.engine.tokcache`)
  validate   the data desk on the window (`validations.desk.run_for_config`, GX included;
             its token counts now come from the cache filled by `tokenize`)
  reference  encode the accepted pairs for training, fingerprint the base, and the
             reference log-probs of every pair (`prefdesk.engine.refcache`, on-disk cache)

Both nights run in one process under a fresh PREFDESK_HOME (cold caches), after an untimed
warm-up on other pairs of the same set that pays the one-time costs a long-running worker
pays once (imports, Great Expectations' context, loading the model), so the ratio compares
work, not import time. The model load itself is not a phase (the flow loads it for training
either way). Prints seconds per phase per night and the ratio night 2 / night 1 (goal: at
most 1/3).

  .venv/bin/python benchmarks/nightly_incremental.py                  # tiny model, 300 pairs
  .venv/bin/python benchmarks/nightly_incremental.py --model smollm2-135m-instruct --pairs 100

The default model is the tiny one: SmolLM2-135M scores about 2 to 4 s per pair on a 2-core
CPU, so 300 pairs would take 10 to 20 minutes on night 1 alone; with it, pass fewer pairs.

The default data is Anthropic HH-RLHF harmless-base test (`../shared/data/hh-rlhf/`,
whole dialogues; the prompt is the shared prefix; `$PREFDESK_SHARED_DATA` moves the
folder), its first `--pairs` pairs, then the next ones as night 2's new pairs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("PREFDESK_SHARED_DATA") or ROOT.parent / "shared" / "data")
DEFAULT_DATA = SHARED / "hh-rlhf" / "harmless-base-test.jsonl.gz"
PHASES = ("ingest", "tokenize", "validate", "reference")


def _write_pairs(pairs, path: Path) -> None:
    """Pairs as an ordinary pair file (TRL rows), as a team would drop it into the inbox."""
    with open(path, "w", encoding="utf-8") as fh:
        for p in pairs:
            fh.write(json.dumps({**p.meta, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected},
                                ensure_ascii=False) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="a preference set (any format prefdesk reads); "
                    "default: HH-RLHF harmless-base test in $PREFDESK_SHARED_DATA or ../shared/data")
    ap.add_argument("--pairs", type=int, default=300, help="pairs on night 1 (default 300)")
    ap.add_argument("--new-share", type=float, default=0.05, help="new pairs on night 2, as a share of --pairs")
    ap.add_argument("--model", default="tiny", help="tiny (default: minutes on a shared CPU) or smollm2-135m-instruct")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"))
    ap.add_argument("--home", default=None, help="PREFDESK_HOME for the run (default: a fresh temporary folder)")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not Path(args.data).exists():
        sys.exit(f"--data: {args.data} does not exist (the shared data folder is ../shared/data)")
    work = Path(args.home or tempfile.mkdtemp(prefix="prefdesk-nightly-bench-"))
    os.environ["PREFDESK_HOME"] = str(work)  # before any prefdesk import reads it: cold caches

    import torch

    from prefdesk.config import load_config
    from prefdesk.engine.batching import encode_pairs, pad_multiple
    from prefdesk.engine.logprobs import use_shared_prefix
    from prefdesk.engine.refcache import RefCache, base_fingerprint, default_root, reference_logps
    from prefdesk.engine.tokcache import pair_token_counts
    from prefdesk.inbox import ingest_night
    from prefdesk.models import build_policy
    from prefdesk.pairs import read_pairs_jsonl
    from prefdesk.readers import read_pairs
    from prefdesk.validations.desk import run_for_config

    n_new = max(1, math.ceil(args.pairs * args.new_share))
    source = read_pairs([args.data])
    need = args.pairs + n_new + 16
    if len(source.pairs) < need:
        sys.exit(f"--data: {args.data} has {len(source.pairs)} readable pairs, the benchmark needs {need}")
    inbox = work / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    cfg = load_config(None, [f"model.name={args.model}", f"model.dtype={args.dtype}", f"data.inbox={inbox}",
                             f"data.max_length={args.max_length}", "data.fail_on_data_gates=false"])
    window_cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"format": "auto", "columns": {}})})

    t = time.perf_counter()
    policy = build_policy(cfg.model, trainable=False)
    load_seconds = time.perf_counter() - t
    tok = policy.tokenizer
    shared = use_shared_prefix(policy.model)
    multiple = pad_multiple(policy.dtype, policy.device.type)

    # -- warm-up (untimed): other pairs of the same set, in a scratch folder and cache
    scratch = work / "warmup"
    scratch.mkdir()
    _write_pairs(source.pairs[-16:], scratch / "warm.jsonl")
    run_for_config([str(scratch / "warm.jsonl")], cfg, scratch / "data")
    warm = read_pairs([str(scratch / "warm.jsonl")]).pairs[:4]
    reference_logps(policy, encode_pairs(tok, warm, args.max_length), args.batch_size,
                    RefCache("warmup", scratch / "refs", shared=shared), multiple=multiple, shared=shared)

    def night(k: int, pairs) -> dict[str, float]:
        _write_pairs(pairs, inbox / f"night{k}.jsonl")
        out = work / "runs" / f"night{k}"
        sec: dict[str, float] = {}
        t = time.perf_counter()
        n = ingest_night(cfg.data, out / "data", run=str(out))
        sec["ingest"] = time.perf_counter() - t
        t = time.perf_counter()
        window = read_pairs([n.window_path]).pairs
        pair_token_counts(tok, window)
        sec["tokenize"] = time.perf_counter() - t
        t = time.perf_counter()
        report = run_for_config([n.window_path], window_cfg, out / "data")
        sec["validate"] = time.perf_counter() - t
        t = time.perf_counter()
        accepted = read_pairs_jsonl(str(report.accepted_path))
        encoded = encode_pairs(tok, accepted, args.max_length)
        t_enc = time.perf_counter()
        cache = RefCache(base_fingerprint(policy), default_root(), shared=shared)
        t_fp = time.perf_counter()
        with torch.no_grad():
            reference_logps(policy, encoded, args.batch_size, cache, multiple=multiple, shared=shared)
        sec["reference"] = time.perf_counter() - t
        scored = sum(e.tokens for e in encoded[-cache.misses:]) if cache.misses else 0
        print(f"{n.says()}; desk accepted {report.accepted} of {report.rows_in}; reference cache {cache.hits} hits, "
              f"{cache.misses} misses ({scored} tokens scored); reference phase: encode {t_enc - t:.2f} s, "
              f"fingerprint {t_fp - t_enc:.2f} s, log-probs {time.perf_counter() - t_fp:.2f} s", flush=True)
        return sec

    first = night(1, source.pairs[: args.pairs])
    second = night(2, source.pairs[args.pairs: args.pairs + n_new])
    t1, t2 = sum(first.values()), sum(second.values())
    print()
    print(f"model {args.model} ({policy.dtype}, {policy.device}, loaded in {load_seconds:.1f} s, not a phase); "
          f"data {args.data}; {args.pairs} pairs, then {n_new} new; max_length {args.max_length}")
    print(f"{'phase':<10} {'night 1 s':>10} {'night 2 s':>10} {'ratio':>7}")
    for p in PHASES:
        print(f"{p:<10} {first[p]:>10.2f} {second[p]:>10.2f} {second[p] / first[p] if first[p] else float('nan'):>7.3f}")
    ratio = t2 / t1
    print(f"{'total':<10} {t1:>10.2f} {t2:>10.2f} {ratio:>7.3f}")
    print(f"night 2 / night 1 data-and-preparation time: {ratio:.3f} (goal <= 0.333: "
          f"{'met' if ratio <= 1 / 3 else 'NOT met'})")
    print(json.dumps({"night1": first, "night2": second, "ratio": ratio, "pairs": args.pairs, "new": n_new,
                      "model": args.model}))


if __name__ == "__main__":
    main()
