"""The computations the data checks need: text normalization, the refusal detector, the
per-pair feature frame, one-sided boilerplate, and inter-annotator agreement.

Everything over many pairs is vectorised with pandas string methods (Arrow-backed in
pandas 3), so 200,000 pairs cost seconds, not minutes.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from prefdesk.pairs import Pair

# ---------------------------------------------------------------- refusal detector

# One detector for the whole project: the patterns live in prefdesk.refusal (the drift
# metrics use them too); this module adds the vectorised form for 200k-row frames.
from prefdesk.refusal import CANDIDATE_SOURCE, REFUSAL_SOURCES, REFUSAL_WINDOW, decide, is_refusal  # noqa: E402,F401


def refusal_flags(texts) -> np.ndarray:
    """`is_refusal` over many texts, vectorised (same sources, same window, same rule, RE2)."""
    arr = texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else _arrow(texts)
    head = pc.utf8_lower(pc.utf8_slice_codeunits(arr, 0, REFUSAL_WINDOW))
    marker_src, disclaimer_src, answered_src = REFUSAL_SOURCES

    def hits(values, source) -> np.ndarray:
        return pc.match_substring_regex(values, source).to_numpy(zero_copy_only=False).astype(bool)

    # One pass over every row finds the few that can be refusals; only those are scanned again
    # to tell the parts apart for `decide`.
    flags = hits(head, CANDIDATE_SOURCE)
    if flags.any():
        few = head.filter(pa.array(flags))
        flags[flags] = decide(hits(few, marker_src), hits(few, disclaimer_src), hits(few, answered_src))
    return flags


# ---------------------------------------------------------------- normalization


def _arrow(values) -> pa.Array:
    if isinstance(values, pd.Series):
        return pa.array(values.to_numpy(dtype=object), type=pa.large_string())
    return pa.array(values, type=pa.large_string())


def fold_whitespace_arrow(arr: pa.Array) -> pa.Array:
    """Whitespace-collapsed and trimmed, case kept: what "the same answer" means for the
    degenerate check (answers that differ only in case can be the point of a pair: a
    capitalisation task), so case never makes a pair degenerate."""
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(arr, r"\s+", " "))


def normalize_arrow(arr: pa.Array) -> pa.Array:
    """Lower-cased, whitespace-collapsed, trimmed (Arrow kernels, RE2): prompt identity
    (leakage, near duplicates) and the case-only finding."""
    return fold_whitespace_arrow(pc.utf8_lower(arr))


def normalize_series(s: pd.Series) -> pd.Series:
    return pd.Series(normalize_arrow(_arrow(s)).to_pandas(types_mapper=None), index=s.index).astype("str")


def normalize(text: str) -> str:
    """Lower-cased, whitespace-collapsed text: what "identical" means for the checks
    (the same Arrow kernels as the frame, so one text normalizes the same either way)."""
    return normalize_arrow(_arrow([text]))[0].as_py()


def _codes(a: pa.Array, b: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Joint integer codes of two text columns: equal code <=> equal text."""
    both = pa.concat_arrays([a, b])
    codes = pc.dictionary_encode(both).indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return codes[: len(a)], codes[len(a):]


# ---------------------------------------------------------------- the pair frame


def approx_tokens(chars: pd.Series | np.ndarray) -> np.ndarray:
    return np.ceil(np.asarray(chars, dtype=float) / 4.0).astype(np.int64)


def pair_frame(pairs: Sequence[Pair], tokenizer=None) -> pd.DataFrame:
    """One row per pair with the columns the row-level checks read."""
    n = len(pairs)
    prompt_text = _arrow([p.prompt_text for p in pairs])
    prompt_all = _arrow(["\n".join(m["content"] for m in p.prompt) for p in pairs])
    # The prompt's identity (roles and stripped turns), as integer codes.
    prompt_sig = _arrow(["\x1e".join(m["role"] + "\x1f" + m["content"].strip() for m in p.prompt) for p in pairs])
    chosen = _arrow([p.chosen for p in pairs])
    rejected = _arrow([p.rejected for p in pairs])
    c_strip, r_strip = pc.utf8_trim_whitespace(chosen), pc.utf8_trim_whitespace(rejected)
    c_norm, r_norm = normalize_arrow(chosen), normalize_arrow(rejected)
    ch, rh = _codes(c_strip, r_strip)
    cwh, rwh = _codes(fold_whitespace_arrow(chosen), fold_whitespace_arrow(rejected))
    cnh, rnh = _codes(c_norm, r_norm)
    df = pd.DataFrame({
        "id": [p.id for p in pairs],
        "source": [p.source for p in pairs],
        "line": np.fromiter((p.line for p in pairs), dtype=np.int64, count=n),
        "prompt_key": pc.dictionary_encode(prompt_sig).indices.to_numpy(zero_copy_only=False).astype(np.int64),
        "agreement": [float(p.meta["agreement"]) if isinstance(p.meta.get("agreement"), (int, float))
                      and int(p.meta.get("n_annotators", 0) or 0) > 1 else np.nan for p in pairs],
        # Integer twins of the texts (equal code <=> equal text): cheap for GX to compare.
        # (norm: case- and whitespace-folded; ws: whitespace-folded only)
        "chosen_hash": ch, "rejected_hash": rh, "chosen_ws_hash": cwh, "rejected_ws_hash": rwh,
        "chosen_norm_hash": cnh, "rejected_norm_hash": rnh,
        "chosen_chars": pc.utf8_length(chosen).to_numpy(zero_copy_only=False).astype(np.int64),
        "rejected_chars": pc.utf8_length(rejected).to_numpy(zero_copy_only=False).astype(np.int64),
    })
    df["id"] = df["id"].astype("str")
    for name, arr in (("prompt_text", prompt_text), ("prompt_all", prompt_all), ("chosen", chosen),
                      ("rejected", rejected), ("chosen_strip", c_strip), ("rejected_strip", r_strip),
                      ("prompt_norm", normalize_arrow(prompt_text)), ("prompt_all_norm", normalize_arrow(prompt_all))):
        df[name] = pd.array(arr.cast(pa.large_string()), dtype=pd.StringDtype("pyarrow"))
    if tokenizer is not None:
        from prefdesk.engine.tokcache import pair_token_counts  # counted once per tokenizer, kept on disk

        tc, tr = pair_token_counts(tokenizer, pairs)
        df["chosen_tokens"] = np.asarray(tc, dtype=np.int64)
        df["rejected_tokens"] = np.asarray(tr, dtype=np.int64)
    else:
        prompt_chars = pc.utf8_length(prompt_all).to_numpy(zero_copy_only=False)
        df["chosen_tokens"] = approx_tokens(prompt_chars + df["chosen_chars"].to_numpy())
        df["rejected_tokens"] = approx_tokens(prompt_chars + df["rejected_chars"].to_numpy())
    df["max_tokens"] = np.maximum(df["chosen_tokens"], df["rejected_tokens"])
    return df


def mark_duplicates(df: pd.DataFrame) -> pd.Series:
    """For each row, the id of the earlier identical pair (None for a first copy)."""
    dup = df["id"].duplicated(keep="first")
    out = pd.Series([None] * len(df), index=df.index, dtype=object)
    out[dup] = df.loc[dup, "id"]
    return out


def mark_contradictions(df: pd.DataFrame, eligible: pd.Series) -> pd.Series:
    """The same prompt and the same two answers labelled both ways: flag every such row.

    Returns, per row, the id of one pair that states the opposite preference (else None).
    """
    out = pd.Series([None] * len(df), index=df.index, dtype=object)
    sub = df[eligible]
    if sub.empty:
        return out
    c, r = sub["chosen_hash"].to_numpy(), sub["rejected_hash"].to_numpy()
    lo, hi = np.minimum(c, r), np.maximum(c, r)
    orient = c < r
    key = pd.DataFrame({"pk": sub["prompt_key"].to_numpy(), "lo": lo, "hi": hi, "o": orient,
                        "id": sub["id"].to_numpy()}, index=sub.index)
    n_orient = key.groupby(["pk", "lo", "hi"])["o"].transform("nunique")
    flagged = key[n_orient > 1]
    if flagged.empty:
        return out
    # The opposite side's first id, per group and orientation.
    first = flagged.groupby(["pk", "lo", "hi", "o"])["id"].first()
    for idx, row in flagged.iterrows():
        out[idx] = first[(row.pk, row.lo, row.hi, not row.o)]
    return out


# ---------------------------------------------------------------- shallow features

_LIST_ITEM = r"(?m)^\s*(?:[-*\x{2022}]|\d+[.)])\s"
_URL_CODE = r"https?://|www\.|```|`[^`\n]+`"
_APOLOGY = r"\b(?:sorry|apologi[sz]e|apologies)\b"


def _count(arr: pa.Array, pattern: str) -> np.ndarray:
    return pc.count_substring_regex(arr, pattern).to_numpy(zero_copy_only=False).astype(float)


def _has(arr: pa.Array, pattern: str) -> np.ndarray:
    return pc.match_substring_regex(arr, pattern).to_numpy(zero_copy_only=False).astype(float)


def _overlaps(prompts: list[str], chosen: list[str], rejected: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Share of each answer's distinct words that occur in the prompt (first 1,000 chars)."""
    oc, orr = np.zeros(len(prompts)), np.zeros(len(prompts))
    for i, (p, c, r) in enumerate(zip(prompts, chosen, rejected)):
        pw = set(p[:1000].split())
        cw, rw = set(c[:1000].split()), set(r[:1000].split())
        oc[i] = len(cw & pw) / len(cw) if cw else 0.0
        orr[i] = len(rw & pw) / len(rw) if rw else 0.0
    return oc, orr


def side_features(arr: pa.Array, overlap: np.ndarray) -> pd.DataFrame:
    low = pc.utf8_lower(arr)
    return pd.DataFrame({
        "length_chars": pc.utf8_length(arr).to_numpy(zero_copy_only=False).astype(float),
        "length_words": _count(arr, r"\S+"),
        "newlines": _count(arr, "\n"),
        "list_items": _count(arr, _LIST_ITEM),
        "refusal": refusal_flags(arr).astype(float),
        "apology": _has(low, _APOLOGY),
        "url_or_code": _has(arr, _URL_CODE),
        "exclamations": _count(arr, "!"),
        "questions": _count(arr, r"\?"),
        "first_person_i": _count(arr, r"\bI\b"),
        "markdown": _count(arr, r"\*\*|(?m)^#+\s"),
        "digits": _count(arr, r"\d"),
        "prompt_overlap": overlap,
    })


def win_columns(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per feature: 1 where chosen has the higher value, 0 where rejected does, 0.5 on ties.

    The mean of a column is the accuracy of "the side with the higher value is chosen";
    the best direction's accuracy is max(mean, 1 - mean).
    """
    low = {k: pc.utf8_lower(_arrow(df[k])).to_pylist() for k in ("prompt_all", "chosen", "rejected")}
    oc, orr = _overlaps(low["prompt_all"], low["chosen"], low["rejected"])
    fc = side_features(_arrow(df["chosen"]), oc).set_axis(df.index)
    fr = side_features(_arrow(df["rejected"]), orr).set_axis(df.index)
    wins = pd.DataFrame(
        np.where(fc.to_numpy() > fr.to_numpy(), 1.0, np.where(fc.to_numpy() < fr.to_numpy(), 0.0, 0.5)),
        columns=[f"win_{c}" for c in fc.columns], index=df.index,
    )
    return wins, fc, fr


def shallow_accuracy(wins: pd.DataFrame) -> dict[str, float]:
    out = {}
    for col in wins.columns:
        m = float(wins[col].mean()) if len(wins) else 0.5
        out[col.removeprefix("win_")] = round(max(m, 1.0 - m), 4)
    return out


# ---------------------------------------------------------------- boilerplate

_OPENING = r"^\W*(?P<p>(?:\S+\s+){0,4}\S+)"
# Matched on the reversed tail, anchored at its start: the last sentence, read backwards.
# (An end-anchored search with a counted repetition is slow even in RE2.)
_CLOSING_REVERSED = r"^(?P<p>[.!?]*[^.!?\n]+)"


def _extract(arr: pa.Array, pattern: str) -> pd.Series:
    got = pc.struct_field(pc.extract_regex(arr, pattern), [0])
    return pd.Series(got.to_numpy(zero_copy_only=False), dtype=object)


def _closing(tail: pa.Array) -> pd.Series:
    rev = _extract(pc.utf8_reverse(tail), _CLOSING_REVERSED)
    out = pd.Series([" ".join(x[::-1].split()) if isinstance(x, str) else None for x in rev], dtype=object)
    ok = out.str.len().between(3, 100)
    return out.where(ok, None)


def _phrases(texts: pd.Series) -> dict[str, pd.Series]:
    arr = _arrow(texts)
    # Lower-case only the ends; whitespace is collapsed on the short extracted phrases.
    head = pc.utf8_lower(pc.utf8_slice_codeunits(arr, 0, 300))
    tail = pc.utf8_lower(pc.utf8_slice_codeunits(pc.utf8_rtrim_whitespace(arr), -200))
    opening = pd.Series([" ".join(x.split()) if isinstance(x, str) else None
                         for x in _extract(head, _OPENING)], dtype=object)
    return {
        "opening": opening.set_axis(texts.index),
        "closing": _closing(tail).set_axis(texts.index),
    }


def one_sided_boilerplate(df: pd.DataFrame, min_share: float = 0.05, ratio: float = 5.0,
                          min_count: int = 3) -> tuple[list[dict], pd.Series]:
    """Opening phrases (first five words) and closing sentences that occur in at least
    `min_share` of one side's answers and at least `ratio` times less on the other side.

    Returns (phrases, affected) where affected marks pairs carrying such a phrase on its
    dominant side only.
    """
    n = len(df)
    affected = pd.Series(np.zeros(n, dtype=bool), index=df.index)
    if n == 0:
        return [], affected
    need = max(min_count, math.ceil(min_share * n))
    pc, pr = _phrases(df["chosen"]), _phrases(df["rejected"])
    found: list[dict] = []
    for kind in ("opening", "closing"):
        c, r = pc[kind], pr[kind]
        vc, vr = c.value_counts(), r.value_counts()
        for side, mine, other, mine_s, other_s in (("chosen", vc, vr, c, r), ("rejected", vr, vc, r, c)):
            top = mine[mine >= need]
            for phrase, count in top.items():
                if not isinstance(phrase, str) or len(phrase) < 8 or " " not in phrase:
                    continue
                other_count = int(other.get(phrase, 0))
                if other_count * ratio > count:
                    continue
                hit = (mine_s == phrase).fillna(False).to_numpy(dtype=bool) & ~(other_s == phrase).fillna(False).to_numpy(dtype=bool)
                affected |= hit
                found.append({"phrase": phrase, "kind": kind, "side": side,
                              "share_on_side": round(count / n, 4), "share_other": round(other_count / n, 4)})
    found.sort(key=lambda d: -d["share_on_side"])
    return found, affected


# ---------------------------------------------------------------- agreement


def fleiss_kappa(items: Sequence[Sequence[int]] | np.ndarray, categories: Sequence[int] | None = None) -> float:
    """Fleiss' kappa.

    `items` is either a list of label lists (one per item, the labels its raters gave) or an
    items x categories count matrix. Items with fewer than two ratings are skipped; items
    may have different numbers of raters (the usual generalisation: each item's agreement
    is over its own rater pairs, category shares over all ratings).
    """
    if isinstance(items, np.ndarray) and items.ndim == 2:
        counts = items.astype(float)
    else:
        cats = sorted(categories or {lab for it in items for lab in it})
        index = {c: j for j, c in enumerate(cats)}
        counts = np.zeros((len(items), len(cats)))
        for i, it in enumerate(items):
            for lab in it:
                counts[i, index[lab]] += 1
    n_i = counts.sum(axis=1)
    keep = n_i >= 2
    counts, n_i = counts[keep], n_i[keep]
    if len(counts) == 0:
        return float("nan")
    p_i = ((counts ** 2).sum(axis=1) - n_i) / (n_i * (n_i - 1))
    p_bar = p_i.mean()
    p_j = counts.sum(axis=0) / n_i.sum()
    p_e = float((p_j ** 2).sum())
    if p_e >= 1.0:
        return 1.0 if p_bar >= 1.0 else float("nan")
    return float((p_bar - p_e) / (1.0 - p_e))


def agreement_stats(items: Sequence[Sequence[int]]) -> dict[str, float]:
    """Share unanimous, mean agreement (share agreeing with the majority label), Fleiss' kappa."""
    multi = [list(it) for it in items if len(it) >= 2]
    if not multi:
        return {"items": 0}
    unanimous = sum(len(set(it)) == 1 for it in multi) / len(multi)
    agree = [Counter(it).most_common(1)[0][1] / len(it) for it in multi]
    return {
        "items": len(multi),
        "share_unanimous": round(unanimous, 4),
        "mean_agreement": round(float(np.mean(agree)), 4),
        "fleiss_kappa": round(fleiss_kappa(multi), 4),
    }
