"""The data desk: read pairs, run the data checks (Great Expectations suites), quarantine
what must not be trained on, and report.

    report = run_data_desk(paths, settings, out_dir, tokenizer=None, eval_prompts=None)

Invariant: ``report.accepted + report.quarantined == report.rows_in``. A row that could not
be read, a pair a check rejects (schema, too long, degenerate, second copy of a duplicate,
both sides of a contradiction, low annotator agreement, eval leakage) and a judged tie are
all quarantined, each once, with the first reason that applies.

The checks themselves (expectations, quarantine rule, report, gate) are small objects in
`validations.checks.CHECKS`; this module runs them in stages and writes the outputs.
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

from prefdesk.atomic import write_text
from prefdesk.config import DataSettings, PrefdeskConfig
from prefdesk.pairs import Pair, Quarantined, write_pairs_jsonl
from prefdesk.readers import read_pairs
from prefdesk.validations import features as F
from prefdesk.validations.checks import CHECKS, Check, Desk, reason_key

CHECK_ORDER = tuple(c.name for c in CHECKS)


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
    expectations: dict[str, bool] = field(default_factory=dict)  # GX expectation label -> success: the verdict

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


def dataset_hash(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


def run_for_config(paths: list[str], cfg: PrefdeskConfig, out_dir: str | Path, policy=None) -> DataReport:
    """The data desk as the flow and `prefdesk validate` both run it: the model's tokenizer
    for the length check, every evaluation prompt for the leakage check, and, when the
    caller has one loaded, the policy (for the reference model's view of the labels)."""
    from prefdesk.evalsets import load_evalset
    from prefdesk.models import load_tokenizer

    evalset = load_evalset(cfg.data.eval, cfg.eval.refusal_sets, cfg.eval.factuality)
    tokenizer = policy.tokenizer if policy is not None else load_tokenizer(cfg.model.name)
    return run_data_desk(paths, cfg.data, out_dir, tokenizer=tokenizer, eval_prompts=evalset.all_prompt_texts(),
                         policy=policy)


def run_data_desk(paths: list[str], settings: DataSettings, out_dir: str | Path, tokenizer=None,
                  eval_prompts: list[str] | None = None, data_docs: bool = True, policy=None) -> DataReport:
    """Read, check, quarantine, write ``accepted_pairs.jsonl``, ``quarantine.jsonl``,
    ``data_report.json`` and Great Expectations Data Docs (``data_docs/``) into out_dir.

    The stages: the pair frame; every check's row expectations (one suite), whose
    offending rows the checks' quarantine rules take, first reason wins; the accepted
    frame and every check's expectations over it; the summary figures and theirs. A
    check's verdict is its expectations' success (`validations.checks`)."""
    from prefdesk.validations import gx_suites  # lazy: imports great_expectations

    clock = _Clock()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    read = read_pairs(list(paths), settings.format, settings.columns or None, label_map=settings.label_map or None)
    clock.lap("read")
    d = Desk(settings=settings, read=read, rows=_row_frame(read.pairs, tokenizer), policy=policy,
             eval_norms=_norms(eval_prompts))
    checks = [c for c in CHECKS if c.applies(d)]
    clock.lap("features")
    runner = gx_suites.Runner(out / "data_docs" if data_docs else None)
    _run_suite(runner, "prefdesk_rows", d.rows, [e for c in checks for e in c.row_expectations(d)], d)
    clock.lap("gx_rows")
    for c in checks:
        for i, why in c.quarantine(d):
            d.reason_of.setdefault(i, (c.name, why))
    accepted = np.ones(d.n_read, dtype=bool)
    accepted[list(d.reason_of)] = False
    d.accepted = d.rows[accepted].reset_index(drop=True)
    d.wins, *side = F.win_columns(d.accepted)
    d.side = tuple(side)
    frame = pd.concat([d.accepted[["row", "id", "prompt_all_norm"]], d.wins], axis=1)
    for c in checks:
        for col, values in c.accepted_columns(d).items():
            frame[col] = values
    clock.lap("dataset_features")
    if d.n_acc:
        _run_suite(runner, "prefdesk_dataset", frame, [e for c in checks for e in c.accepted_expectations(d)], d)
    clock.lap("gx_dataset")
    d.summary = {k: v for c in checks for k, v in c.summary(d).items()}
    clock.lap("summary")  # the label-direction signals are most of it
    summary = pd.DataFrame([{"row": 0, **d.summary}])
    _run_suite(runner, "prefdesk_summary", summary, [e for c in checks for e in c.summary_expectations(d)], d)
    clock.lap("gx_summary")
    results = [_result(c, d) for c in checks]
    accepted_pairs = [p for p, ok in zip(read.pairs, accepted) if ok]
    quarantined = sorted(read.quarantined + [_quarantined(read.pairs[i], check, why)
                                             for i, (check, why) in d.reason_of.items()],
                         key=lambda q: (q.source, q.line))
    report = _write(out, read.rows_in, accepted_pairs, quarantined, results, runner, clock)
    assert report.accepted + report.quarantined == report.rows_in, "data desk lost rows"
    return report


class _Clock:
    """Seconds per stage, for the report (the scale benchmark reads them)."""

    def __init__(self) -> None:
        self.t0 = self.t = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self.t, 3)
        self.t = now

    def total(self) -> dict[str, float]:
        return {**self.seconds, "total": round(time.perf_counter() - self.t0, 3)}


def _norms(prompts: list[str] | None) -> list[str]:
    texts = [p for p in (prompts or []) if isinstance(p, str) and p.strip()]
    return F.normalize_series(pd.Series(texts, dtype=object)).tolist() if texts else []


def _row_frame(pairs: list[Pair], tokenizer) -> pd.DataFrame:
    """The pair frame plus what the row checks compare: position, first copy, contradiction."""
    df = F.pair_frame(pairs, tokenizer)
    df["row"] = np.arange(len(df), dtype=np.int64)
    df["duplicate_of"] = F.mark_duplicates(df)
    eligible = df["duplicate_of"].isna() & (df["chosen_ws_hash"] != df["rejected_ws_hash"])
    df["contradiction_of"] = F.mark_contradictions(df, eligible)
    return df


def _run_suite(runner, name: str, frame: pd.DataFrame, expectations: list, d: Desk) -> None:
    if expectations:
        d.results.update({r.label: r for r in runner.run(name, frame, expectations)})


def _result(check: Check, d: Desk) -> CheckResult:
    """A check's row in the report: its figures, and its expectations' verdict."""
    o = check.report(d)
    own = [r for r in d.results.values() if r.check == check.name]
    quarantined = d.read_quarantined(check.name) + len(d.quarantined_by(check.name))
    return CheckResult(name=check.name, figure=o.figure, threshold=o.threshold if check.gate else None,
                       passed=all(r.success for r in own) if check.gate else True, reason=o.reason, gate=check.gate,
                       figures=o.figures, offending_ids=o.offending_ids, quarantined=quarantined,
                       expectations={r.label: r.success for r in own})


def _quarantined(pair: Pair, check: str, why: str) -> Quarantined:
    raw = json.dumps({"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected}, ensure_ascii=False)
    return Quarantined(source=pair.source, line=pair.line, reason=why, check=check, raw=raw[:500], id=pair.id)


def _write(out: Path, rows_in: int, accepted: list[Pair], quarantined: list[Quarantined],
           checks: list[CheckResult], runner, clock: _Clock) -> DataReport:
    """accepted_pairs.jsonl, quarantine.jsonl, Data Docs and data_report.json."""
    accepted_path, quarantine_path = out / "accepted_pairs.jsonl", out / "quarantine.jsonl"
    write_pairs_jsonl(accepted, str(accepted_path))
    write_text(quarantine_path, "".join(
        json.dumps({"file": q.source, "line": q.line, "reason": q.reason, "check": q.check, "id": q.id, "raw": q.raw},
                   ensure_ascii=False) + "\n" for q in quarantined))
    clock.lap("write")
    docs = runner.build_docs()
    clock.lap("data_docs")
    failed = [f"{c.name}: {c.reason}" for c in checks if c.gate and not c.passed]
    report = DataReport(
        rows_in=rows_in, accepted=len(accepted), quarantined=len(quarantined), checks=checks,
        passed=not failed, failed=failed, accepted_path=str(accepted_path), quarantine_path=str(quarantine_path),
        docs_dir=str(docs) if docs else None, dataset_hash=dataset_hash([p.id for p in accepted]),
        quarantine_reasons=dict(Counter(reason_key(q.reason) for q in quarantined).most_common()),
        seconds=clock.total(), report_path=str(out / "data_report.json"))
    write_text(report.report_path, json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    return report
