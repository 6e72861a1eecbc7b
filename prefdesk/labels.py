"""What a label in a pairwise file means: stated by the user or by a known format, never guessed.

A column of 0/1/2 can mean "0 = tie, 1/2 = the better response" (PandaLM) or "0 = first
wins, 1 = second wins, 2 = tie"; read the wrong way, every pair is silently reversed. So a
label is read in one of three ways only:

1. a known format, recognised by its exact, documented key set (`KNOWN_FORMATS`) when no
   column mapping renames its fields; its coding wins over a label map;
2. a label map the user gave (``data.label_map`` / ``--label-map 0=first,1=second,2=tie``):
   the label as written in the file -> ``first``, ``second`` or ``tie``;
3. with no label map, a label that names its outcome: the name of one of the two response
   columns, or ``tie``.

Anything else is ambiguous: the row is quarantined with a reason that says what to pass.
Values are compared as normalised strings, so ``1``, ``"1"``, ``1.0`` and ``" 1 "`` are the
same label, and ``"A"`` matches ``a``.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

OUTCOMES = ("first", "second", "tie")
# The codes that Pair.meta["labels"] and ReadResult.annotations carry: 1 = the first
# response is better, 2 = the second, 0 = tie.
CODE = {"first": 1, "second": 2, "tie": 0}


class LabelError(ValueError):
    """A label that cannot be read; the message is the row's quarantine reason."""


def label_key(value: Any) -> str:
    """The normalised form a label is compared by: 1, "1", 1.0 -> "1"; True -> "true"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    text = str(value).strip().lower()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def show(value: Any) -> str:
    """A label as a person reads it in a reason: 0, 1.5, true, A."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (bool, int, float)) or value is None:
        return json.dumps(value)
    return repr(value)


def parse_label_map(spec: Any) -> dict[str, str]:
    """``"0=first,1=second,2=tie"``, a mapping (YAML may give int keys) or a list of either
    (a repeated CLI option) -> {label key: outcome}. Raises ValueError naming the bad entry."""
    if spec is None or spec == "":
        return {}
    if isinstance(spec, Mapping):
        items = list(spec.items())
    elif isinstance(spec, str):
        items = []
        for part in spec.split(","):
            if not part.strip():
                continue
            key, eq, outcome = part.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"label map entry {part.strip()!r}: expected VALUE=first|second|tie "
                                 "(e.g. 0=first,1=second,2=tie)")
            items.append((key, outcome))
    elif isinstance(spec, Iterable):
        out: dict[str, str] = {}
        for one in spec:
            out.update(parse_label_map(one))
        return out
    else:
        raise ValueError(f"label map {spec!r}: expected VALUE=OUTCOME pairs or a mapping")
    out = {}
    for key, outcome in items:
        name = str(outcome).strip().lower()
        if name not in OUTCOMES:
            raise ValueError(f"label map entry {show(key)}={outcome}: the outcome must be first, second or tie")
        norm = label_key(key)
        if norm in out and out[norm] != name:
            raise ValueError(f"label map: {show(key)} is mapped twice ({out[norm]} and {name})")
        out[norm] = name
    return out


def format_label_map(label_map: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in label_map.items())


def example_map(values: Iterable[Any]) -> str:
    """A --label-map example in the shape of the labels seen (the user still decides)."""
    keys = sorted({label_key(v) for v in values})
    if keys and set(keys) <= {"true", "false"}:
        return "true=first,false=second"
    if all(_is_number(k) for k in keys):
        return "0=first,1=second,2=tie"
    shown = [show(v) for v in sorted({show(v) for v in values})][:3]
    return ",".join(f"{s}={o}" for s, o in zip(shown, OUTCOMES))


def _is_number(key: str) -> bool:
    try:
        return not math.isnan(float(key))
    except ValueError:
        return False


@dataclass(frozen=True)
class KnownFormat:
    """A format whose label coding is documented upstream; recognised by its exact key set."""

    name: str
    keys: frozenset[str]
    codes: Mapping[str, int]
    meaning: str


KNOWN_FORMATS = (
    # WeOpenML/PandaLM data/testset-v1.json: three annotators, 1/2 = the better response, 0 = tie.
    KnownFormat("PandaLM", frozenset({"idx", "motivation_app", "cmp_key", "instruction", "input", "response1",
                                      "response2", "annotator1", "annotator2", "annotator3"}),
                {"1": 1, "2": 2, "0": 0}, "1 = response1 better, 2 = response2 better, 0 = tie"),
    # princeton-nlp/LLMBar Dataset/*/dataset.json: one gold label, 1/2 = the better output.
    KnownFormat("LLMBar", frozenset({"input", "output_1", "output_2", "label"}),
                {"1": 1, "2": 2}, "1 = output_1 better, 2 = output_2 better"),
)


def known_format(keys: Iterable[str]) -> KnownFormat | None:
    keyset = frozenset(keys)
    return next((f for f in KNOWN_FORMATS if f.keys == keyset), None)


@dataclass
class LabelReader:
    """Reads the labels of one file's rows and remembers how, for the file's notes."""

    label_map: Mapping[str, str]
    used: Counter = field(default_factory=Counter)  # how -> rows
    ambiguous: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # column -> label key -> rows

    def decode(self, value: Any, column: str, names: tuple[str, str], known: KnownFormat | None) -> int | None:
        """One label -> 1, 2 or 0 (see CODE); None when the cell is empty."""
        if value is None or (isinstance(value, float) and math.isnan(value)) or (
                isinstance(value, str) and not value.strip()):
            return None
        key = label_key(value)
        if known is not None:
            if key in known.codes:
                return known.codes[key]
            raise LabelError(f"label {show(value)} in column {column!r} is not a {known.name} label "
                             f"({known.meaning})")
        if self.label_map:
            if key in self.label_map:
                return CODE[self.label_map[key]]
            raise LabelError(f"label {show(value)} in column {column!r} is not in the label map "
                             f"({format_label_map(self.label_map)})")
        named = {label_key(names[0]): 1, label_key(names[1]): 2, "tie": 0}
        if key in named:
            return named[key]
        self.ambiguous[column][key] += 1
        raise LabelError(f"ambiguous label {show(value)} in column {column!r}: pass --label-map "
                         f"(e.g. {example_map([value])}) or set data.label_map")

    def row_read(self, known: KnownFormat | None, names: tuple[str, str]) -> None:
        """Count one row whose labels were all read (for the notes)."""
        how = f"known:{known.name}" if known else "map" if self.label_map else f"named:{names[0]}|{names[1]}"
        self.used[how] += 1

    def notes(self, source: str) -> list[str]:
        out = []
        for how, n in self.used.items():
            if how.startswith("known:"):
                fmt = next(f for f in KNOWN_FORMATS if f.name == how.split(":", 1)[1])
                extra = "; the label map does not apply to it" if self.label_map else ""
                out.append(f"{source}: labels read as {fmt.name}: {fmt.meaning} (known format{extra}; {_rows(n)})")
            elif how == "map":
                out.append(f"{source}: labels read with the label map {format_label_map(self.label_map)} "
                           f"(first = the first response is better; {_rows(n)})")
            else:
                first, second = how.split(":", 1)[1].split("|")
                out.append(f"{source}: labels read by name: {first}, {second} or tie ({_rows(n)})")
        for column, values in self.ambiguous.items():
            seen = sorted(values)
            out.append(f"{source}: {_rows(sum(values.values()))} quarantined: ambiguous labels "
                       f"{', '.join(seen[:10])} in column {column!r}; say what they mean with --label-map "
                       f"(e.g. {example_map(seen)}) or data.label_map")
        return out


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"
