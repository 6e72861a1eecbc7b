"""The data desk: read pairs, run the data checks (Great Expectations suites), quarantine
what must not be trained on, and report.

    report = run_data_desk(paths, settings, out_dir, tokenizer=None, eval_prompts=None)

Invariant: ``report.accepted + report.quarantined == report.rows_in``. A row that could not
be read, a pair a check rejects (schema, too long, degenerate, second copy of a duplicate,
both sides of a contradiction, low annotator agreement, eval leakage) and a judged tie are
all quarantined, each once, with the first reason that applies.

great_expectations is imported inside `run_data_desk` only (see `validations.gx_suites`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prefdesk.config import DataSettings, PrefdeskConfig
from prefdesk.pairs import Pair, Quarantined, write_pairs_jsonl
from prefdesk.readers import read_pairs
from validations import features as F

CHECK_ORDER = (
    "schema", "degenerate", "duplicates", "near_duplicates", "label_consistency", "agreement",
    "length_bias", "refusal_bias", "boilerplate", "shallow_features", "eval_leakage",
    "quarantined_share",
)


@dataclass
class CheckResult:
    name: str
    figure: float                 # the headline figure, logged as data/check/<name>
    threshold: float | None       # None: reported, not a gate
    passed: bool
    reason: str                   # one line a person can act on
    gate: bool = True
    figures: dict[str, Any] = field(default_factory=dict)
    offending_ids: list[str] = field(default_factory=list)
    quarantined: int = 0          # pairs this check removed from the accepted set

    def to_dict(self, max_ids: int = 200) -> dict[str, Any]:
        d = asdict(self)
        d["offending_count"] = len(self.offending_ids)
        d["offending_ids"] = self.offending_ids[:max_ids]
        return _jsonable(d)


@dataclass
class DataReport:
    rows_in: int
    accepted: int
    quarantined: int
    checks: list[CheckResult]
    passed: bool
    failed: list[str]
    accepted_path: str
    quarantine_path: str
    docs_dir: str | None
    dataset_hash: str
    report_path: str = ""
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def check(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "checks"}
        d["checks"] = [c.to_dict() for c in self.checks]
        return _jsonable(d)

    def metrics(self) -> dict[str, float]:
        m = {
            "data/pairs_in": float(self.rows_in),
            "data/pairs_accepted": float(self.accepted),
            "data/pairs_quarantined": float(self.quarantined),
        }
        for c in self.checks:
            m[f"data/check/{c.name}"] = float(c.figure)
        return m

    def to_markdown(self) -> str:
        lines = [
            f"**Data desk**: {self.rows_in} rows in, {self.accepted} accepted, "
            f"{self.quarantined} quarantined: **{'PASSED' if self.passed else 'FAILED'}**",
            "",
            "| check | figure | threshold | result | reason |",
            "|---|---|---|---|---|",
        ]
        for c in self.checks:
            thr = "-" if c.threshold is None else _fmt(c.threshold)
            res = ("pass" if c.passed else "**FAIL**") if c.gate else "info"
            lines.append(f"| {c.name} | {_fmt(c.figure)} | {thr} | {res} | {c.reason.replace('|', '/')} |")
        if self.quarantine_reasons:
            lines += ["", "| quarantine reason | rows |", "|---|---|"]
            for reason, n in list(self.quarantine_reasons.items())[:15]:
                lines.append(f"| {reason.replace('|', '/')} | {n} |")
        return "\n".join(lines)

    def render(self, console) -> None:
        from rich.table import Table

        status = "[bold green]PASSED[/]" if self.passed else "[bold red]FAILED[/]"
        console.print(f"[bold]Data desk[/]: {self.rows_in} rows in, {self.accepted} accepted, "
                      f"{self.quarantined} quarantined: {status}")
        table = Table(show_lines=False)
        for col in ("check", "figure", "threshold", "result", "reason"):
            table.add_column(col, overflow="fold")
        for c in self.checks:
            res = ("[green]pass[/]" if c.passed else "[red]FAIL[/]") if c.gate else "[dim]info[/]"
            table.add_row(c.name, _fmt(c.figure), "-" if c.threshold is None else _fmt(c.threshold), res, c.reason)
        console.print(table)
        if self.quarantine_reasons:
            q = Table(title="quarantine reasons")
            q.add_column("reason", overflow="fold")
            q.add_column("rows", justify="right")
            for reason, n in list(self.quarantine_reasons.items())[:15]:
                q.add_row(reason, str(n))
            console.print(q)
        console.print(f"accepted pairs: {self.accepted_path}")
        console.print(f"quarantine (open and fix): {self.quarantine_path}")
        if self.docs_dir:
            console.print(f"Great Expectations Data Docs: {Path(self.docs_dir) / 'index.html'}")
        if self.failed:
            console.print("[red]failed gates:[/] " + "; ".join(self.failed))


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        if math.isnan(x):
            return "n/a"
        return f"{x:.4g}"
    return str(x)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return None if math.isnan(f) or math.isinf(f) else f
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _reason_key(reason: str) -> str:
    """Group quarantine reasons for the summary ("duplicate of 1a2b" -> "duplicate")."""
    for prefix in ("duplicate of", "contradiction", "tie", "too long", "low agreement", "bad JSON",
                   "eval leakage", "invalid UTF-8", "bad CSV row"):
        if reason.startswith(prefix):
            return prefix if prefix != "duplicate of" else "duplicate"
    return reason.split(":")[0][:80]


def dataset_hash(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


def run_for_config(paths: list[str], cfg: PrefdeskConfig, out_dir: str | Path) -> DataReport:
    """The data desk as the flow and `prefdesk validate` both run it: the model's tokenizer
    for the length check, and every evaluation prompt for the leakage check."""
    from prefdesk.evalsets import load_evalset
    from prefdesk.models import load_tokenizer

    evalset = load_evalset(cfg.data.eval, cfg.eval.refusal_sets, cfg.eval.factuality)
    return run_data_desk(paths, cfg.data, out_dir, tokenizer=load_tokenizer(cfg.model.name),
                         eval_prompts=evalset.all_prompt_texts())


def run_data_desk(paths: list[str], settings: DataSettings, out_dir: str | Path, tokenizer=None,
                  eval_prompts: list[str] | None = None, data_docs: bool = True) -> DataReport:
    """Read, check, quarantine, write ``accepted_pairs.jsonl``, ``quarantine.jsonl``,
    ``data_report.json`` and Great Expectations Data Docs (``data_docs/``) into out_dir."""
    from validations import gx_suites  # lazy: imports great_expectations

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    th = settings.checks

    read = read_pairs(list(paths), settings.format, settings.columns or None, label_map=settings.label_map or None)
    pairs = read.pairs
    seconds["read"] = time.perf_counter() - t0

    t = time.perf_counter()
    df = F.pair_frame(pairs, tokenizer)
    df["row"] = np.arange(len(df), dtype=np.int64)
    df["duplicate_of"] = F.mark_duplicates(df)
    eligible = df["duplicate_of"].isna() & (df["chosen_norm_hash"] != df["rejected_norm_hash"])
    df["contradiction_of"] = F.mark_contradictions(df, eligible)
    has_agreement = bool(df["agreement"].notna().any())
    eval_norms = F.normalize_series(pd.Series([p for p in (eval_prompts or []) if isinstance(p, str) and p.strip()], dtype=object)).tolist() if eval_prompts else []
    seconds["features"] = time.perf_counter() - t

    t = time.perf_counter()
    docs_dir = out / "data_docs" if data_docs else None
    runner = gx_suites.Runner(docs_dir)
    row_cols = ["row", "id", "prompt_text", "chosen_strip", "rejected_strip", "max_tokens", "chosen_hash",
                "rejected_hash", "chosen_norm_hash", "rejected_norm_hash", "duplicate_of",
                "contradiction_of", "agreement", "prompt_norm"]
    row_results = runner.run("prefdesk_rows", df[row_cols],
                             gx_suites.row_expectations(settings, has_agreement, eval_norms))
    by_label = {r.label: r for r in row_results}
    seconds["gx_rows"] = time.perf_counter() - t

    # ---- quarantine by the row-level results, first reason wins
    ids = df["id"].to_numpy()
    reason_of: dict[int, tuple[str, str]] = {}

    def offending_rows(label: str) -> list[int]:
        r = by_label.get(label)
        return [] if r is None else [int(x) for x in r.ids]

    def quarantine(rows: list[int], check: str, why) -> int:
        n = 0
        for i in rows:
            if i not in reason_of:
                reason_of[i] = (check, why(i))
                n += 1
        return n

    per_check_q: Counter = Counter()
    for label, what in (("prompt_nonempty", "empty prompt"), ("chosen_nonempty", "empty chosen"),
                        ("rejected_nonempty", "empty rejected")):
        per_check_q["schema"] += quarantine(offending_rows(label), "schema", lambda i, w=what: w)
    too_long_rows = offending_rows("too_long")
    max_tok = df["max_tokens"].to_numpy()
    if settings.too_long == "quarantine":
        per_check_q["schema"] += quarantine(
            too_long_rows, "schema",
            lambda i: f"too long: {int(max_tok[i])} tokens > max_length {settings.max_length}")
    ident = set(offending_rows("identical"))
    folded = set(offending_rows("identical_after_folding"))
    per_check_q["degenerate"] += quarantine(sorted(ident), "degenerate", lambda i: "degenerate: chosen identical to rejected")
    per_check_q["degenerate"] += quarantine(
        sorted(folded - ident), "degenerate",
        lambda i: "degenerate: chosen identical to rejected after whitespace and case folding")
    dup_of = df["duplicate_of"].to_numpy()
    per_check_q["duplicates"] += quarantine(offending_rows("second_copy"), "duplicates",
                                            lambda i: f"duplicate of {dup_of[i]}")
    con_of = df["contradiction_of"].to_numpy()
    contradiction_rows = offending_rows("contradiction")
    per_check_q["label_consistency"] += quarantine(
        contradiction_rows, "label_consistency",
        lambda i: f"contradiction: the same answers are labelled the other way in {con_of[i]}")
    low_rows = offending_rows("low_agreement")
    agr = df["agreement"].to_numpy()
    if settings.low_agreement == "quarantine":
        per_check_q["label_consistency"] += quarantine(
            low_rows, "label_consistency",
            lambda i: f"low agreement: {agr[i]:.2f} < min_agreement {th.min_agreement}")
    leak_rows = offending_rows("eval_prompt_in_train")
    per_check_q["eval_leakage"] += quarantine(leak_rows, "eval_leakage",
                                              lambda i: "eval leakage: the prompt is an evaluation prompt")

    accepted_mask = np.ones(len(df), dtype=bool)
    if reason_of:
        accepted_mask[list(reason_of)] = False
    accepted_pairs: list[Pair] = [p for p, ok in zip(pairs, accepted_mask) if ok]
    check_quarantine = [
        Quarantined(source=pairs[i].source, line=pairs[i].line, reason=why, check=check,
                    raw=json.dumps({"prompt": pairs[i].prompt, "chosen": pairs[i].chosen,
                                    "rejected": pairs[i].rejected}, ensure_ascii=False)[:500],
                    id=pairs[i].id)
        for i, (check, why) in reason_of.items()
    ]
    all_quarantined = sorted(read.quarantined + check_quarantine, key=lambda q: (q.source, q.line))

    # ---- dataset-level checks over the accepted pairs
    t = time.perf_counter()
    acc = df[accepted_mask].reset_index(drop=True)
    wins, fc, fr = F.win_columns(acc)
    phrases, affected = F.one_sided_boilerplate(acc)
    ds = pd.concat([acc[["row", "id", "prompt_all_norm"]], wins], axis=1)
    ds["refusal_diff"] = (fc["refusal"] - fr["refusal"]).to_numpy()
    ds["boilerplate"] = affected.to_numpy(dtype=float)
    seconds["dataset_features"] = time.perf_counter() - t
    t = time.perf_counter()
    ds_results = {}
    if len(ds):
        ds_results = {r.label: r for r in runner.run("prefdesk_dataset", ds,
                                                      gx_suites.dataset_expectations(settings, list(wins.columns)))}
    seconds["gx_dataset"] = time.perf_counter() - t

    n_read = len(df)
    n_acc = len(acc)
    checks: list[CheckResult] = []

    # schema
    read_errors = [q for q in read.quarantined if q.check == "read"]
    schema_rows = [i for i, (c, _) in reason_of.items() if c == "schema"]
    schema_fig = (len(read_errors) + len(schema_rows)) / read.rows_in if read.rows_in else 0.0
    thr = th.max_schema_share
    checks.append(CheckResult(
        name="schema", figure=round(schema_fig, 4), threshold=thr, passed=schema_fig <= thr,
        reason=(f"{len(read_errors)} unreadable rows, {len(schema_rows)} pairs failing the schema; "
                f"{len(too_long_rows)} over max_length {settings.max_length} "
                f"({'quarantined' if settings.too_long == 'quarantine' else 'kept, truncated at train time'})"),
        figures={"unreadable_rows": len(read_errors), "schema_failures": len(schema_rows),
                 "too_long": len(too_long_rows), "too_long_mode": settings.too_long,
                 "max_length": settings.max_length,
                 "unreadable_reasons": dict(Counter(_reason_key(q.reason) for q in read_errors).most_common(10))},
        offending_ids=[ids[i] for i in schema_rows] + [ids[i] for i in too_long_rows if i not in set(schema_rows)],
        quarantined=len(read_errors) + per_check_q["schema"]))

    # degenerate
    degen = sorted(ident | folded)
    fig = len(degen) / n_read if n_read else 0.0
    checks.append(CheckResult(
        name="degenerate", figure=round(fig, 4), threshold=th.max_degenerate_share,
        passed=fig <= th.max_degenerate_share,
        reason=f"{len(ident)} pairs with chosen == rejected, {len(folded - ident)} more after whitespace/case folding",
        figures={"identical": len(ident), "identical_after_folding": len(folded - ident)},
        offending_ids=[ids[i] for i in degen], quarantined=per_check_q["degenerate"]))

    # duplicates
    dups = offending_rows("second_copy")
    fig = len(dups) / n_read if n_read else 0.0
    checks.append(CheckResult(
        name="duplicates", figure=round(fig, 4), threshold=th.max_duplicate_share,
        passed=fig <= th.max_duplicate_share,
        reason=f"{len(dups)} second copies of a pair already read (quarantined)",
        figures={"second_copies": len(dups)}, offending_ids=[ids[i] for i in dups],
        quarantined=per_check_q["duplicates"]))

    # near duplicates (report only)
    if n_acc:
        counts = acc["prompt_all_norm"].value_counts()
        shared = acc["prompt_all_norm"].duplicated(keep="first")
        fig = float(shared.mean())
        top = [{"prompt": k[:120], "pairs": int(v)} for k, v in counts.head(5).items() if v > 1]
        uniq = ds_results.get("unique_prompt_share")
        checks.append(CheckResult(
            name="near_duplicates", figure=round(fig, 4), threshold=None, passed=True, gate=False,
            reason=(f"{int(shared.sum())} pairs repeat an earlier normalized prompt; {len(counts)} distinct "
                    f"prompts, at most {int(counts.iloc[0])} pairs on one"),
            figures={"distinct_prompts": int(len(counts)), "max_pairs_per_prompt": int(counts.iloc[0]),
                     "unique_prompt_share": None if uniq is None else uniq.observed_value, "top": top}))
    else:
        checks.append(CheckResult(name="near_duplicates", figure=0.0, threshold=None, passed=True, gate=False,
                                  reason="no accepted pairs"))

    # label consistency
    ties = [q for q in read.quarantined if q.check == "label_consistency"]
    fig = len(contradiction_rows) / n_read if n_read else 0.0
    n_low = len(low_rows)
    checks.append(CheckResult(
        name="label_consistency", figure=round(fig, 4), threshold=th.max_contradiction_share,
        passed=fig <= th.max_contradiction_share,
        reason=(f"{len(contradiction_rows)} pairs labelled both ways (quarantined); {len(ties)} ties; "
                f"{n_low} with agreement < {th.min_agreement} "
                f"({'quarantined' if settings.low_agreement == 'quarantine' else 'kept'})"),
        figures={"contradictions": len(contradiction_rows), "ties": len(ties), "low_agreement": n_low,
                 "low_agreement_mode": settings.low_agreement},
        offending_ids=[ids[i] for i in contradiction_rows] + [ids[i] for i in low_rows],
        quarantined=per_check_q["label_consistency"] + len(ties)))

    # agreement (annotator data only)
    if read.annotations:
        st = F.agreement_stats(read.annotations)
        kappa = st.get("fleiss_kappa", float("nan"))
        ok = (not math.isnan(kappa)) and kappa >= th.min_kappa and st.get("mean_agreement", 0) >= th.min_agreement
        checks.append(CheckResult(
            name="agreement", figure=kappa, threshold=th.min_kappa, passed=bool(ok),
            reason=(f"{st.get('items', 0)} judged items: {st.get('share_unanimous', 0):.0%} unanimous, "
                    f"mean agreement {st.get('mean_agreement', 0):.3f}, Fleiss' kappa {kappa:.3f} "
                    f"(min {th.min_kappa})"),
            figures=st))

    def ds_fig(label: str, default: float = float("nan")) -> float:
        r = ds_results.get(label)
        return default if r is None or r.observed_value is None else float(r.observed_value)

    # length bias
    lb = ds_fig("chosen_longer_share")
    t_lb = th.max_length_bias
    ok = math.isnan(lb) or (1 - t_lb <= lb <= t_lb)
    checks.append(CheckResult(
        name="length_bias", figure=round(lb, 4) if not math.isnan(lb) else lb, threshold=t_lb, passed=ok,
        reason=("no accepted pairs" if math.isnan(lb) else
                f"chosen is longer in {lb:.0%} of pairs (ties half); allowed {1 - t_lb:.0%}..{t_lb:.0%}"),
        figures={"chosen_longer_strict": round(float((acc['chosen_chars'] > acc['rejected_chars']).mean()), 4) if n_acc else None,
                 "mean_chars_chosen": round(float(acc["chosen_chars"].mean()), 1) if n_acc else None,
                 "mean_chars_rejected": round(float(acc["rejected_chars"].mean()), 1) if n_acc else None}))

    # refusal bias
    rb = ds_fig("refusal_rate_diff")
    rc = float(fc["refusal"].mean()) if n_acc else float("nan")
    rr = float(fr["refusal"].mean()) if n_acc else float("nan")
    ok = math.isnan(rb) or abs(rb) <= th.max_refusal_bias
    checks.append(CheckResult(
        name="refusal_bias", figure=round(rb, 4) if not math.isnan(rb) else rb, threshold=th.max_refusal_bias,
        passed=ok,
        reason=("no accepted pairs" if math.isnan(rb) else
                f"refusals: {rc:.0%} of chosen vs {rr:.0%} of rejected (difference {rb:+.2f}, "
                f"allowed +/-{th.max_refusal_bias})"),
        figures={"refusal_rate_chosen": round(rc, 4), "refusal_rate_rejected": round(rr, 4)},
        offending_ids=[]))

    # boilerplate
    bp = ds_fig("one_sided_share", 0.0)
    checks.append(CheckResult(
        name="boilerplate", figure=round(bp, 4), threshold=th.max_boilerplate_share,
        passed=bp <= th.max_boilerplate_share,
        reason=(f"{len(phrases)} one-sided phrases, in {bp:.0%} of pairs"
                + (f"; top: {phrases[0]['side']} {phrases[0]['kind']} {phrases[0]['phrase'][:60]!r} "
                   f"({phrases[0]['share_on_side']:.0%} vs {phrases[0]['share_other']:.0%})" if phrases else "")),
        figures={"phrases": phrases[:20]},
        offending_ids=acc.loc[affected.to_numpy(), "id"].tolist()[:1000] if n_acc else []))

    # shallow features
    accs = F.shallow_accuracy(wins) if n_acc else {}
    if accs:
        best = max(accs, key=accs.get)
        mx = accs[best]
        direction = "higher" if float(wins[f"win_{best}"].mean()) >= 0.5 else "lower"
        checks.append(CheckResult(
            name="shallow_features", figure=mx, threshold=th.max_shallow_feature_accuracy,
            passed=mx <= th.max_shallow_feature_accuracy,
            reason=f"'{best}' alone picks the chosen side ({direction} wins) in {mx:.0%} of pairs",
            figures={"accuracy": accs, "best": best, "direction": direction}))
    else:
        checks.append(CheckResult(name="shallow_features", figure=float("nan"),
                                  threshold=th.max_shallow_feature_accuracy, passed=True, reason="no accepted pairs"))

    # eval leakage
    if eval_norms:
        train_norms = set(df["prompt_norm"])
        leaked = sorted({e for e in eval_norms if e in train_norms})
        checks.append(CheckResult(
            name="eval_leakage", figure=float(len(leaked)), threshold=float(th.max_eval_leakage),
            passed=len(leaked) <= th.max_eval_leakage,
            reason=f"{len(leaked)} of {len(set(eval_norms))} eval prompts are training prompts; "
                   f"{len(leak_rows)} pairs quarantined",
            figures={"leaked_prompts": [x[:120] for x in leaked[:20]], "pairs": len(leak_rows)},
            offending_ids=[ids[i] for i in leak_rows], quarantined=per_check_q["eval_leakage"]))
    else:
        checks.append(CheckResult(name="eval_leakage", figure=0.0, threshold=float(th.max_eval_leakage),
                                  passed=True, reason="no eval prompts given"))

    # quarantined share
    n_q = len(all_quarantined)
    # A tie is the annotators' verdict, not a broken row: it is quarantined (it is no pair)
    # but does not count against the share of defective input.
    n_ties = sum(q.reason.startswith("tie") for q in all_quarantined)
    share = (n_q - n_ties) / read.rows_in if read.rows_in else 0.0
    checks.append(CheckResult(
        name="quarantined_share", figure=round(share, 4), threshold=th.max_quarantined_share,
        passed=share <= th.max_quarantined_share and n_acc > 0,
        reason=f"{n_q - n_ties} of {read.rows_in} rows quarantined as defective"
        + (f" (+{n_ties} ties, not pairs)" if n_ties else "") + ("" if n_acc else "; nothing accepted")))

    checks.sort(key=lambda c: CHECK_ORDER.index(c.name))
    failed = [f"{c.name}: {c.reason}" for c in checks if c.gate and not c.passed]

    # ---- write
    accepted_path = out / "accepted_pairs.jsonl"
    write_pairs_jsonl(accepted_pairs, str(accepted_path))
    quarantine_path = out / "quarantine.jsonl"
    with open(quarantine_path, "w", encoding="utf-8") as fh:
        for q in all_quarantined:
            fh.write(json.dumps({"file": q.source, "line": q.line, "reason": q.reason, "check": q.check,
                                 "id": q.id, "raw": q.raw}, ensure_ascii=False) + "\n")
    t = time.perf_counter()
    docs = runner.build_docs()
    seconds["data_docs"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0

    report = DataReport(
        rows_in=read.rows_in, accepted=len(accepted_pairs), quarantined=n_q, checks=checks,
        passed=not failed, failed=failed, accepted_path=str(accepted_path),
        quarantine_path=str(quarantine_path), docs_dir=str(docs) if docs else None,
        dataset_hash=dataset_hash([p.id for p in accepted_pairs]),
        quarantine_reasons=dict(Counter(_reason_key(q.reason) for q in all_quarantined).most_common()),
        seconds={k: round(v, 3) for k, v in seconds.items()},
    )
    report.report_path = str(out / "data_report.json")
    Path(report.report_path).write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    assert report.accepted + report.quarantined == report.rows_in, "data desk lost rows"
    return report
