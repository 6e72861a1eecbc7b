"""The data checks, one small object each, in the order they quarantine and report.

A check says, in one place, everything about itself:

- its Great Expectations expectations, over one of three frames: ``rows`` (every pair
  read; these also find the offending pairs), ``accepted`` (the accepted pairs, with any
  columns the check adds) and ``summary`` (one row of figures that are no column
  statistic: a share of the input rows, Fleiss' kappa, a count of leaked prompts);
- its quarantine rule (which offending rows leave the accepted set, and why);
- its report (figure, reason, detail figures); and whether it is a gate.

The verdict of a gate is the success of its expectations and nothing else, so Data Docs
and the gates cannot disagree. Expectations that only find rows for a quarantine rule
without a bound of their own carry ``mostly=0.0``: Data Docs lists the rows and shows
them as allowed, as the gate does. Adding a check is one class and one entry in `CHECKS`.

great_expectations is imported only inside the methods (see `validations.gx_suites`).
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable

import numpy as np
import pandas as pd

from prefdesk.config import CheckThresholds, DataSettings
from prefdesk.readers import ReadResult
from prefdesk.validations import features as F


def _gx():
    from prefdesk.validations import gx_suites

    return gx_suites


def _m(check: str, label: str) -> dict[str, str]:
    return {"check": check, "label": label}


@dataclass
class Desk:
    """What the checks read, filled stage by stage by `validations.desk.run_data_desk`."""

    settings: DataSettings
    read: ReadResult
    rows: pd.DataFrame                      # one row per pair read (`features.pair_frame`)
    eval_norms: list[str]
    policy: Any = None                      # optional: the reference model's own preference
    results: dict[str, Any] = field(default_factory=dict)   # GX result by expectation label
    reason_of: dict[int, tuple[str, str]] = field(default_factory=dict)  # row -> (check, reason)
    accepted: pd.DataFrame | None = None    # the accepted pairs' frame
    wins: pd.DataFrame | None = None        # per feature: did chosen have the higher value
    side: tuple[pd.DataFrame, pd.DataFrame] | None = None   # chosen / rejected features
    summary: dict[str, float] = field(default_factory=dict)  # the summary frame's one row
    scratch: dict[str, Any] = field(default_factory=dict)   # a check's own intermediate figures

    @property
    def th(self) -> CheckThresholds:
        return self.settings.checks

    @property
    def n_read(self) -> int:
        return len(self.rows)

    @property
    def n_acc(self) -> int:
        return 0 if self.accepted is None else len(self.accepted)

    @functools.cached_property
    def ids(self) -> np.ndarray:
        """Pair ids by row position (built once: the reports index it per offending row)."""
        return self.rows["id"].to_numpy()

    def offending(self, label: str) -> list[int]:
        r = self.results.get(label)
        return [] if r is None else [int(x) for x in r.ids]

    def observed(self, label: str) -> float:
        r = self.results.get(label)
        return float("nan") if r is None or r.observed_value is None else float(r.observed_value)

    def value(self, key: str) -> float:
        """A figure of the summary frame (what its expectations were checked against)."""
        return float(self.summary.get(key, float("nan")))

    def quarantined_by(self, check: str) -> list[int]:
        return [i for i, (c, _) in self.reason_of.items() if c == check]

    def read_quarantined(self, check: str) -> int:
        """Rows the reader already quarantined under this check ("read" counts as schema)."""
        return sum((q.check if q.check != "read" else "schema") == check for q in self.read.quarantined)


@dataclass
class Outcome:
    figure: float
    reason: str
    threshold: float | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    offending_ids: list[str] = field(default_factory=list)


def share(k: int, n: int) -> float:
    return round(k / n, 4) if n else 0.0


class Check:
    """Base: a check with no expectations, no quarantine and nothing to report."""

    name: ClassVar[str]
    gate: ClassVar[bool] = True

    def applies(self, d: Desk) -> bool:
        return True

    def row_expectations(self, d: Desk) -> list:
        return []

    def quarantine(self, d: Desk) -> Iterable[tuple[int, str]]:
        return ()

    def accepted_columns(self, d: Desk) -> dict[str, Any]:
        return {}

    def accepted_expectations(self, d: Desk) -> list:
        return []

    def summary(self, d: Desk) -> dict[str, float]:
        return {}

    def summary_expectations(self, d: Desk) -> list:
        return []

    def report(self, d: Desk) -> Outcome:  # pragma: no cover - abstract
        raise NotImplementedError


class Schema(Check):
    name = "schema"
    EMPTY = (("prompt_text", "prompt_nonempty", "empty prompt"), ("chosen_strip", "chosen_nonempty", "empty chosen"),
             ("rejected_strip", "rejected_nonempty", "empty rejected"))

    def row_expectations(self, d):
        gxe = _gx().gxe
        return [gxe.ExpectColumnValuesToNotBeNull(column="id", meta=_m(self.name, "id_present"))] + [
            gxe.ExpectColumnValueLengthsToBeBetween(column=col, min_value=1, mostly=0.0, meta=_m(self.name, label))
            for col, label, _ in self.EMPTY
        ] + [gxe.ExpectColumnValuesToBeBetween(column="max_tokens", max_value=d.settings.max_length, mostly=0.0,
                                               meta=_m(self.name, "too_long"))]

    def quarantine(self, d):
        for _, label, what in self.EMPTY:
            yield from ((i, what) for i in d.offending(label))
        if d.settings.too_long == "quarantine":
            tok = d.rows["max_tokens"].to_numpy()
            yield from ((i, f"too long: {int(tok[i])} tokens > max_length {d.settings.max_length}")
                        for i in d.offending("too_long"))

    def summary(self, d):
        return {"schema_share": share(d.read_quarantined(self.name) + len(d.quarantined_by(self.name)), d.read.rows_in)}

    def summary_expectations(self, d):
        return [_gx().gxe.ExpectColumnValuesToBeBetween(column="schema_share", max_value=d.th.max_schema_share,
                                                        meta=_m(self.name, "schema_share"))]

    def report(self, d):
        unreadable = [q for q in d.read.quarantined if q.check == "read"]
        failing = d.quarantined_by(self.name)
        too_long = d.offending("too_long")
        mode = d.settings.too_long
        kept = ("quarantined" if mode == "quarantine"
                else "kept: truncated at train time to the answer and the end of the prompt")
        return Outcome(
            figure=d.value("schema_share"), threshold=d.th.max_schema_share,
            reason=(f"{len(unreadable)} unreadable rows, {len(failing)} pairs failing the schema; "
                    f"{len(too_long)} over max_length {d.settings.max_length} ({kept})"),
            figures={"unreadable_rows": len(unreadable), "schema_failures": len(failing), "too_long": len(too_long),
                     "truncated": len(too_long) if mode == "truncate" else 0, "too_long_mode": mode,
                     "max_length": d.settings.max_length,
                     "unreadable_reasons": dict(Counter(reason_key(q.reason) for q in unreadable).most_common(10))},
            offending_ids=[d.ids[i] for i in failing] + [d.ids[i] for i in too_long if i not in set(failing)])


class Truncation(Check):
    """How many accepted pairs training will cut to max_length (the `truncate` default)."""

    name = "truncation"
    gate = False

    def report(self, d):
        too_long = set(d.offending("too_long"))
        cut = [i for i in sorted(too_long) if i not in d.reason_of]
        return Outcome(
            figure=share(len(cut), d.n_acc),
            reason=(f"{len(cut)} accepted pairs exceed max_length {d.settings.max_length}: training keeps the "
                    "answer and the end of the prompt" if cut else f"no accepted pair exceeds max_length "
                    f"{d.settings.max_length}"),
            figures={"truncated": len(cut), "max_length": d.settings.max_length, "mode": d.settings.too_long},
            offending_ids=[d.ids[i] for i in cut])


class Degenerate(Check):
    """chosen == rejected, as written or after folding whitespace (never case: see CaseOnly)."""

    name = "degenerate"

    def row_expectations(self, d):
        most = 1.0 - d.th.max_degenerate_share
        differ = _gx().ExpectColumnPairValuesToDiffer
        return [differ(column_A="chosen_hash", column_B="rejected_hash", mostly=most, meta=_m(self.name, "identical")),
                differ(column_A="chosen_ws_hash", column_B="rejected_ws_hash", mostly=most,
                       meta=_m(self.name, "identical_after_folding"))]

    def quarantine(self, d):
        ident = d.offending("identical")
        yield from ((i, "degenerate: chosen identical to rejected") for i in ident)
        yield from ((i, "degenerate: chosen identical to rejected after whitespace folding")
                    for i in sorted(set(d.offending("identical_after_folding")) - set(ident)))

    def report(self, d):
        ident, folded = set(d.offending("identical")), set(d.offending("identical_after_folding"))
        degen = sorted(ident | folded)
        return Outcome(
            figure=share(len(degen), d.n_read), threshold=d.th.max_degenerate_share,
            reason=f"{len(ident)} pairs with chosen == rejected, {len(folded - ident)} more after whitespace folding",
            figures={"identical": len(ident), "identical_after_folding": len(folded - ident)},
            offending_ids=[d.ids[i] for i in degen])


class CaseOnly(Check):
    """Answers that differ only in letter case: a finding, never a quarantine (case can be
    the very point of the pair), but worth a look when the task is not about case."""

    name = "case_only"
    gate = False

    def report(self, d):
        r = d.rows
        mask = ((r["chosen_norm_hash"] == r["rejected_norm_hash"]) & (r["chosen_ws_hash"] != r["rejected_ws_hash"]))
        rows = np.flatnonzero(mask.to_numpy())
        return Outcome(figure=float(len(rows)),
                       reason=f"{len(rows)} pairs whose answers differ only in letter case (kept)",
                       figures={"pairs": len(rows)}, offending_ids=[d.ids[i] for i in rows])


class Duplicates(Check):
    name = "duplicates"

    def row_expectations(self, d):
        return [_gx().gxe.ExpectColumnValuesToBeNull(column="duplicate_of", mostly=1.0 - d.th.max_duplicate_share,
                                                     meta=_m(self.name, "second_copy"))]

    def quarantine(self, d):
        dup_of = d.rows["duplicate_of"].to_numpy()
        return ((i, f"duplicate of {dup_of[i]}") for i in d.offending("second_copy"))

    def report(self, d):
        dups = d.offending("second_copy")
        return Outcome(figure=share(len(dups), d.n_read), threshold=d.th.max_duplicate_share,
                       reason=f"{len(dups)} second copies of a pair already read (quarantined)",
                       figures={"second_copies": len(dups)}, offending_ids=[d.ids[i] for i in dups])


class NearDuplicates(Check):
    name = "near_duplicates"
    gate = False

    def accepted_expectations(self, d):
        return [_gx().gxe.ExpectColumnProportionOfUniqueValuesToBeBetween(
            column="prompt_all_norm", min_value=0.0, meta=_m(self.name, "unique_prompt_share"))]

    def report(self, d):
        if not d.n_acc:
            return Outcome(figure=0.0, reason="no accepted pairs")
        prompts = d.accepted["prompt_all_norm"]
        counts, repeated = prompts.value_counts(), prompts.duplicated(keep="first")
        return Outcome(
            figure=round(float(repeated.mean()), 4),
            reason=(f"{int(repeated.sum())} pairs repeat an earlier normalized prompt; {len(counts)} distinct "
                    f"prompts, at most {int(counts.iloc[0])} pairs on one"),
            figures={"distinct_prompts": int(len(counts)), "max_pairs_per_prompt": int(counts.iloc[0]),
                     "unique_prompt_share": d.observed("unique_prompt_share"),
                     "top": [{"prompt": k[:120], "pairs": int(v)} for k, v in counts.head(5).items() if v > 1]})


class LabelConsistency(Check):
    name = "label_consistency"

    def row_expectations(self, d):
        gxe = _gx().gxe
        exps = [gxe.ExpectColumnValuesToBeNull(column="contradiction_of", mostly=1.0 - d.th.max_contradiction_share,
                                               meta=_m(self.name, "contradiction"))]
        if d.rows["agreement"].notna().any():
            exps.append(gxe.ExpectColumnValuesToBeBetween(column="agreement", min_value=d.th.min_agreement, mostly=0.0,
                                                          meta=_m(self.name, "low_agreement")))
        return exps

    def quarantine(self, d):
        con_of, agr = d.rows["contradiction_of"].to_numpy(), d.rows["agreement"].to_numpy()
        yield from ((i, f"contradiction: the same answers are labelled the other way in {con_of[i]}")
                    for i in d.offending("contradiction"))
        if d.settings.low_agreement == "quarantine":
            yield from ((i, f"low agreement: {agr[i]:.2f} < min_agreement {d.th.min_agreement}")
                        for i in d.offending("low_agreement"))

    def report(self, d):
        con, low = d.offending("contradiction"), d.offending("low_agreement")
        ties = d.read_quarantined(self.name)
        return Outcome(
            figure=share(len(con), d.n_read), threshold=d.th.max_contradiction_share,
            reason=(f"{len(con)} pairs labelled both ways (quarantined); {ties} ties; {len(low)} with agreement < "
                    f"{d.th.min_agreement} ({'quarantined' if d.settings.low_agreement == 'quarantine' else 'kept'})"),
            figures={"contradictions": len(con), "ties": ties, "low_agreement": len(low),
                     "low_agreement_mode": d.settings.low_agreement},
            offending_ids=[d.ids[i] for i in con] + [d.ids[i] for i in low])


class Agreement(Check):
    """Inter-annotator agreement, for files that carry every annotator's label."""

    name = "agreement"

    def applies(self, d):
        return bool(d.read.annotations)

    def summary(self, d):
        st = F.agreement_stats(d.read.annotations)
        d.scratch[self.name] = st
        return {"fleiss_kappa": st.get("fleiss_kappa", float("nan")), "mean_agreement": st.get("mean_agreement", 0.0)}

    def summary_expectations(self, d):
        gxe = _gx().gxe
        return [gxe.ExpectColumnValuesToNotBeNull(column="fleiss_kappa", meta=_m(self.name, "kappa_defined")),
                gxe.ExpectColumnValuesToBeBetween(column="fleiss_kappa", min_value=d.th.min_kappa,
                                                  meta=_m(self.name, "fleiss_kappa")),
                gxe.ExpectColumnValuesToBeBetween(column="mean_agreement", min_value=d.th.min_agreement,
                                                  meta=_m(self.name, "mean_agreement"))]

    def report(self, d):
        st = d.scratch[self.name]
        kappa = st.get("fleiss_kappa", float("nan"))
        return Outcome(
            figure=kappa, threshold=d.th.min_kappa, figures=st,
            reason=(f"{st.get('items', 0)} judged items: {st.get('share_unanimous', 0):.0%} unanimous, "
                    f"mean agreement {st.get('mean_agreement', 0):.3f}, Fleiss' kappa {kappa:.3f} "
                    f"(min {d.th.min_kappa})"))


class LabelDirection(Check):
    """Labels read the wrong way round: independent signals agree with them far below chance
    (`validations.direction`)."""

    name = "label_direction"

    def summary(self, d):
        from prefdesk.validations.direction import estimate

        pairs = [d.read.pairs[int(r)] for r in d.accepted["row"]]
        est = estimate(pairs, d.wins, policy=d.policy, max_length=d.settings.max_length,
                       sample=d.settings.direction_sample, threshold=d.th.min_label_direction)
        d.scratch[self.name] = est
        worst = est.worst()
        return {"label_direction": worst.agreement if worst else float("nan"),
                "label_direction_high": worst.high if worst else float("nan")}

    def summary_expectations(self, d):
        return [_gx().gxe.ExpectColumnValuesToBeBetween(column="label_direction_high",
                                                        min_value=d.th.min_label_direction,
                                                        meta=_m(self.name, "label_direction_high"))]

    def report(self, d):
        est = d.scratch[self.name]
        worst = est.worst()
        return Outcome(
            figure=round(d.value("label_direction"), 4), threshold=d.th.min_label_direction, reason=est.reason(),
            figures={"probably_flipped": est.flipped, "worst": worst.name if worst else None,
                     "signals": {s.name: s.to_dict() for s in est.signals}, "min_decisive": est.min_decisive})


class LengthBias(Check):
    name = "length_bias"

    def accepted_expectations(self, d):
        t = d.th.max_length_bias
        return [_gx().gxe.ExpectColumnMeanToBeBetween(column="win_length_chars", min_value=1.0 - t, max_value=t,
                                                      meta=_m(self.name, "chosen_longer_share"))]

    def report(self, d):
        lb, t, acc = d.observed("chosen_longer_share"), d.th.max_length_bias, d.accepted
        if math.isnan(lb):
            return Outcome(figure=lb, threshold=t, reason="no accepted pairs")
        return Outcome(
            figure=round(lb, 4), threshold=t,
            reason=f"chosen is longer in {lb:.0%} of pairs (ties half); allowed {1 - t:.0%}..{t:.0%}",
            figures={"chosen_longer_strict": round(float((acc["chosen_chars"] > acc["rejected_chars"]).mean()), 4),
                     "mean_chars_chosen": round(float(acc["chosen_chars"].mean()), 1),
                     "mean_chars_rejected": round(float(acc["rejected_chars"].mean()), 1)})


class RefusalBias(Check):
    name = "refusal_bias"

    def accepted_columns(self, d):
        fc, fr = d.side
        return {"refusal_diff": (fc["refusal"] - fr["refusal"]).to_numpy()}

    def accepted_expectations(self, d):
        t = d.th.max_refusal_bias
        return [_gx().gxe.ExpectColumnMeanToBeBetween(column="refusal_diff", min_value=-t, max_value=t,
                                                      meta=_m(self.name, "refusal_rate_diff"))]

    def report(self, d):
        rb, t = d.observed("refusal_rate_diff"), d.th.max_refusal_bias
        if math.isnan(rb):
            return Outcome(figure=rb, threshold=t, reason="no accepted pairs")
        rc, rr = float(d.side[0]["refusal"].mean()), float(d.side[1]["refusal"].mean())
        return Outcome(
            figure=round(rb, 4), threshold=t,
            reason=f"refusals: {rc:.0%} of chosen vs {rr:.0%} of rejected (difference {rb:+.2f}, allowed +/-{t})",
            figures={"refusal_rate_chosen": round(rc, 4), "refusal_rate_rejected": round(rr, 4)})


class Boilerplate(Check):
    name = "boilerplate"

    def accepted_columns(self, d):
        phrases, affected = F.one_sided_boilerplate(d.accepted)
        d.scratch[self.name] = (phrases, affected)
        return {"boilerplate": affected.to_numpy(dtype=float)}

    def accepted_expectations(self, d):
        return [_gx().gxe.ExpectColumnMeanToBeBetween(column="boilerplate", max_value=d.th.max_boilerplate_share,
                                                      meta=_m(self.name, "one_sided_share"))]

    def report(self, d):
        phrases, affected = d.scratch.get(self.name, ([], None))
        bp = d.observed("one_sided_share")
        bp = 0.0 if math.isnan(bp) else bp
        top = phrases[0] if phrases else None
        return Outcome(
            figure=round(bp, 4), threshold=d.th.max_boilerplate_share,
            reason=(f"{len(phrases)} one-sided phrases, in {bp:.0%} of pairs"
                    + (f"; top: {top['side']} {top['kind']} {top['phrase'][:60]!r} "
                       f"({top['share_on_side']:.0%} vs {top['share_other']:.0%})" if top else "")),
            figures={"phrases": phrases[:20]},
            offending_ids=d.accepted.loc[affected.to_numpy(), "id"].tolist()[:1000] if d.n_acc else [])


class ShallowFeatures(Check):
    name = "shallow_features"

    def accepted_expectations(self, d):
        acc = d.th.max_shallow_feature_accuracy
        return [_gx().gxe.ExpectColumnMeanToBeBetween(column=col, min_value=1.0 - acc, max_value=acc,
                                                      meta=_m(self.name, col.removeprefix("win_")))
                for col in d.wins.columns]

    def report(self, d):
        t = d.th.max_shallow_feature_accuracy
        accs = F.shallow_accuracy(d.wins) if d.n_acc else {}
        if not accs:
            return Outcome(figure=float("nan"), threshold=t, reason="no accepted pairs")
        best = max(accs, key=accs.get)
        direction = "higher" if float(d.wins[f"win_{best}"].mean()) >= 0.5 else "lower"
        return Outcome(figure=accs[best], threshold=t,
                       reason=f"'{best}' alone picks the chosen side ({direction} wins) in {accs[best]:.0%} of pairs",
                       figures={"accuracy": accs, "best": best, "direction": direction})


class EvalLeakage(Check):
    name = "eval_leakage"

    def row_expectations(self, d):
        if not d.eval_norms:
            return []
        return [_gx().gxe.ExpectColumnValuesToNotBeInSet(column="prompt_norm", value_set=sorted(set(d.eval_norms)),
                                                         mostly=0.0, meta=_m(self.name, "eval_prompt_in_train"))]

    def quarantine(self, d):
        return ((i, "eval leakage: the prompt is an evaluation prompt") for i in d.offending("eval_prompt_in_train"))

    def summary(self, d):
        train = set(d.rows["prompt_norm"])
        d.scratch[self.name] = leaked = sorted({e for e in d.eval_norms if e in train})
        return {"leaked_eval_prompts": float(len(leaked))}

    def summary_expectations(self, d):
        return [_gx().gxe.ExpectColumnValuesToBeBetween(column="leaked_eval_prompts",
                                                        max_value=float(d.th.max_eval_leakage),
                                                        meta=_m(self.name, "leaked_eval_prompts"))]

    def report(self, d):
        t = float(d.th.max_eval_leakage)
        if not d.eval_norms:
            return Outcome(figure=0.0, threshold=t, reason="no eval prompts given")
        leaked, rows = d.scratch[self.name], d.offending("eval_prompt_in_train")
        return Outcome(
            figure=float(len(leaked)), threshold=t,
            reason=f"{len(leaked)} of {len(set(d.eval_norms))} eval prompts are training prompts; "
                   f"{len(rows)} pairs quarantined",
            figures={"leaked_prompts": [x[:120] for x in leaked[:20]], "pairs": len(rows)},
            offending_ids=[d.ids[i] for i in rows])


class QuarantinedShare(Check):
    """Defective input rows over all input rows. A tie is the annotators' verdict, not a
    broken row: it is quarantined (it is no pair) but not counted as a defect."""

    name = "quarantined_share"

    def _counts(self, d) -> tuple[int, int]:
        ties = sum(q.reason.startswith("tie") for q in d.read.quarantined)
        return len(d.read.quarantined) + len(d.reason_of), ties

    def summary(self, d):
        n_q, ties = self._counts(d)
        return {"defect_share": share(n_q - ties, d.read.rows_in), "accepted_pairs": float(d.n_acc)}

    def summary_expectations(self, d):
        gxe = _gx().gxe
        return [gxe.ExpectColumnValuesToBeBetween(column="defect_share", max_value=d.th.max_quarantined_share,
                                                  meta=_m(self.name, "defect_share")),
                gxe.ExpectColumnValuesToBeBetween(column="accepted_pairs", min_value=1,
                                                  meta=_m(self.name, "accepted_pairs"))]

    def report(self, d):
        n_q, ties = self._counts(d)
        return Outcome(
            figure=d.value("defect_share"), threshold=d.th.max_quarantined_share,
            reason=f"{n_q - ties} of {d.read.rows_in} rows quarantined as defective"
            + (f" (+{ties} ties, not pairs)" if ties else "") + ("" if d.n_acc else "; nothing accepted"))


def reason_key(reason: str) -> str:
    """Group quarantine reasons for the summary ("duplicate of 1a2b" -> "duplicate")."""
    for prefix in ("duplicate of", "contradiction", "tie", "too long", "low agreement", "bad JSON",
                   "eval leakage", "invalid UTF-8", "bad CSV row"):
        if reason.startswith(prefix):
            return prefix if prefix != "duplicate of" else "duplicate"
    return reason.split(":")[0][:80]


# Quarantine priority and report order: the first check whose rule takes a row names its reason.
CHECKS: list[Check] = [
    Schema(), Truncation(), Degenerate(), CaseOnly(), Duplicates(), NearDuplicates(), LabelConsistency(), Agreement(),
    LabelDirection(),
    LengthBias(), RefusalBias(), Boilerplate(), ShallowFeatures(), EvalLeakage(), QuarantinedShare(),
]
