"""The computations the data checks need: text normalization, the refusal detector, the
per-pair feature frame, one-sided boilerplate, and inter-annotator agreement.

Everything over many pairs is vectorised with pandas string methods (Arrow-backed in
pandas 3), so 200,000 pairs cost seconds, not minutes.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from prefdesk.pairs import Pair, prompt_key

# ---------------------------------------------------------------- refusal detector

# Phrases that open (or make up) a refusal. Checked in the first REFUSAL_WINDOW characters:
# refusals lead with them, while a helpful answer may quote "I can't" deep inside.
_APOS = "['\u2019]"
REFUSAL_PATTERNS = [
    rf"\bi{_APOS}?m sorry,? but\b",
    rf"\bi am sorry,? but\b",
    rf"\bsorry,? (?:but )?i (?:can{_APOS}?t|cannot|won{_APOS}?t|am unable|{_APOS}?m unable|am not able)",
    rf"\bi (?:can{_APOS}?t|cannot|can not) (?:help|assist|provide|do that|comply|support|fulfil|fulfill|answer|share|create|write|generate|give|engage|participate)",
    rf"\bi won{_APOS}?t (?:help|assist|provide|do that|be able|comply|answer|share|create|write|generate|give|engage|participate)",
    rf"\bi will not (?:help|assist|provide|do that|comply|answer|share|create|write|generate|give|engage|participate)",
    rf"\bi{_APOS}?m (?:not able|unable) to\b",
    r"\bi am (?:not able|unable) to\b",
    r"\bas an ai\b",
    r"\bas a language model\b",
    r"\bi (?:must|have to) (?:decline|refuse)\b",
    rf"\bi{_APOS}?m not (?:comfortable|going to) (?:help|assist|provide|answer|do)",
    r"\bi(?: would|'d) rather not\b",
    r"\bi (?:do not|don't) feel comfortable\b",
    r"\bit(?: is|'s| would be) (?:not appropriate|inappropriate) (?:for me )?to\b",
    r"\bi apologi[sz]e,? but\b",
    r"\bcannot fulfill? (?:this|that|your) request\b",
    r"\bagainst my (?:programming|guidelines|policy|policies)\b",
]
REFUSAL_WINDOW = 300
_REFUSAL_SRC = "(?:" + "|".join(REFUSAL_PATTERNS) + ")"
_REFUSAL_RE = re.compile(_REFUSAL_SRC, re.IGNORECASE)


def is_refusal(text: str) -> bool:
    """True when the answer reads as a refusal ("I'm sorry, but I can't", "As an AI", ...)."""
    return bool(_REFUSAL_RE.search(text[:REFUSAL_WINDOW]))


def refusal_flags(texts: pd.Series) -> pd.Series:
    """`is_refusal` over a Series, vectorised (same patterns, same window)."""
    return texts.str.slice(0, REFUSAL_WINDOW).str.lower().str.contains(_REFUSAL_SRC, regex=True).astype(bool)


# ---------------------------------------------------------------- normalization


def normalize(text: str) -> str:
    """Case-folded, whitespace-collapsed text: what "identical" means for the checks."""
    return " ".join(text.casefold().split())


def normalize_series(s: pd.Series) -> pd.Series:
    return s.str.casefold().str.replace(r"\s+", " ", regex=True).str.strip()


def _hash(s: pd.Series) -> np.ndarray:
    return pd.util.hash_array(s.to_numpy(dtype=object)).astype(np.int64)


# ---------------------------------------------------------------- the pair frame


def approx_tokens(chars: pd.Series | np.ndarray) -> np.ndarray:
    return np.ceil(np.asarray(chars, dtype=float) / 4.0).astype(np.int64)


def pair_frame(pairs: Sequence[Pair], tokenizer=None) -> pd.DataFrame:
    """One row per pair with the columns the row-level checks read."""
    n = len(pairs)
    df = pd.DataFrame({
        "id": [p.id for p in pairs],
        "source": [p.source for p in pairs],
        "line": np.fromiter((p.line for p in pairs), dtype=np.int64, count=n),
        "prompt_text": [p.prompt_text for p in pairs],
        "prompt_all": ["\n".join(m["content"] for m in p.prompt) for p in pairs],
        "prompt_key": [prompt_key(p.prompt) for p in pairs],
        "chosen": [p.chosen for p in pairs],
        "rejected": [p.rejected for p in pairs],
        "agreement": [float(p.meta["agreement"]) if isinstance(p.meta.get("agreement"), (int, float))
                      and int(p.meta.get("n_annotators", 0) or 0) > 1 else np.nan for p in pairs],
    })
    for col in ("prompt_text", "prompt_all", "chosen", "rejected", "id", "prompt_key"):
        df[col] = df[col].astype("str")
    df["chosen_strip"] = df["chosen"].str.strip()
    df["rejected_strip"] = df["rejected"].str.strip()
    df["chosen_norm"] = normalize_series(df["chosen"])
    df["rejected_norm"] = normalize_series(df["rejected"])
    df["prompt_norm"] = normalize_series(df["prompt_text"])
    df["prompt_all_norm"] = normalize_series(df["prompt_all"])
    # Hashed twins of the texts: cheap for GX to compare and to list when a row fails.
    df["chosen_hash"] = _hash(df["chosen_strip"])
    df["rejected_hash"] = _hash(df["rejected_strip"])
    df["chosen_norm_hash"] = _hash(df["chosen_norm"])
    df["rejected_norm_hash"] = _hash(df["rejected_norm"])
    df["chosen_chars"] = df["chosen"].str.len().astype(np.int64)
    df["rejected_chars"] = df["rejected"].str.len().astype(np.int64)
    if tokenizer is not None:
        from prefdesk.engine.tokenize import encode

        tc = [len(encode(tokenizer, p.prompt, p.chosen, max_length=10**9).input_ids) for p in pairs]
        tr = [len(encode(tokenizer, p.prompt, p.rejected, max_length=10**9).input_ids) for p in pairs]
        df["chosen_tokens"] = np.asarray(tc, dtype=np.int64)
        df["rejected_tokens"] = np.asarray(tr, dtype=np.int64)
    else:
        prompt_chars = df["prompt_all"].str.len().to_numpy()
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

_LIST_ITEM = r"(?m)^\s*(?:[-*\u2022]|\d+[.)])\s"
_URL_CODE = r"https?://|www\.|```|`[^`\n]+`"
_APOLOGY = r"\b(?:sorry|apologi[sz]e|apologies)\b"
_FIRST_PERSON = r"\bI\b"
_WORD = r"\S+"
_WORD_TOKEN = re.compile(r"[a-z0-9']+")


def _overlap(prompts: Iterable[str], answers: Iterable[str]) -> np.ndarray:
    """Share of the answer's distinct words that occur in the prompt (first 2,000 chars)."""
    out = []
    for p, a in zip(prompts, answers):
        pw = set(_WORD_TOKEN.findall(p[:2000].lower()))
        aw = set(_WORD_TOKEN.findall(a[:2000].lower()))
        out.append(len(aw & pw) / len(aw) if aw else 0.0)
    return np.asarray(out, dtype=float)


def side_features(texts: pd.Series, prompts: pd.Series) -> pd.DataFrame:
    return pd.DataFrame({
        "length_chars": texts.str.len().to_numpy(dtype=float),
        "length_words": texts.str.count(_WORD).to_numpy(dtype=float),
        "newlines": texts.str.count("\n").to_numpy(dtype=float),
        "list_items": texts.str.count(_LIST_ITEM).to_numpy(dtype=float),
        "refusal": refusal_flags(texts).to_numpy(dtype=float),
        "apology": texts.str.lower().str.contains(_APOLOGY, regex=True).to_numpy(dtype=float),
        "url_or_code": texts.str.contains(_URL_CODE, regex=True).to_numpy(dtype=float),
        "exclamations": texts.str.count("!").to_numpy(dtype=float),
        "questions": texts.str.count(r"\?").to_numpy(dtype=float),
        "first_person_i": texts.str.count(_FIRST_PERSON).to_numpy(dtype=float),
        "markdown": texts.str.count(r"\*\*|(?m)^#+\s").to_numpy(dtype=float),
        "digits": texts.str.count(r"\d").to_numpy(dtype=float),
        "prompt_overlap": _overlap(prompts, texts),
    }, index=texts.index)


def win_columns(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per feature: 1 where chosen has the higher value, 0 where rejected does, 0.5 on ties.

    The mean of a column is the accuracy of "the side with the higher value is chosen";
    the best direction's accuracy is max(mean, 1 - mean).
    """
    fc = side_features(df["chosen"], df["prompt_all"])
    fr = side_features(df["rejected"], df["prompt_all"])
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

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n")


def _opening(text: str) -> str:
    """The first five words, case-folded."""
    return " ".join(text[:300].casefold().split()[:5])


def _closing(text: str) -> str:
    """The last sentence or line (up to 100 characters), case-folded."""
    tail = text.rstrip()[-200:]
    last = _SENTENCE_END.split(tail)[-1].strip().casefold()
    return " ".join(last.split()) if 3 <= len(last) <= 100 else ""


def _phrases(texts: pd.Series) -> dict[str, pd.Series]:
    values = texts.tolist()
    return {
        "opening": pd.Series([_opening(t) for t in values], index=texts.index, dtype=object),
        "closing": pd.Series([_closing(t) for t in values], index=texts.index, dtype=object),
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
                hit = (mine_s == phrase).to_numpy(dtype=bool) & ~(other_s == phrase).to_numpy(dtype=bool)
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
