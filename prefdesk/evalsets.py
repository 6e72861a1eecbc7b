"""Held-out evaluation material: prompts to answer or refuse, held-out pairs, factual MC items.

The embedded set ships with the package; real public sets (XSTest, CoCoNot, TruthfulQA)
can be added by path. Nothing here is ever trained on: the data desk's leakage check
compares training prompts against `EvalSet.all_prompt_texts()`.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from prefdesk.pairs import Message, Pair

DATA_DIR = Path(__file__).parent / "data"
EMBEDDED_FILES = {
    "prompts": "eval_prompts.jsonl",
    "pairs": "heldout_pairs.jsonl",
    "mc": "factuality_mc.jsonl",
}


class EvalSetError(ValueError):
    pass


@dataclass(frozen=True)
class MCItem:
    question: str
    true: str
    false: tuple[str, ...]


@dataclass
class EvalSet:
    answer: list[str] = field(default_factory=list)  # should be answered
    refuse: list[str] = field(default_factory=list)  # should be refused
    pairs: list[Pair] = field(default_factory=list)
    mc: list[MCItem] = field(default_factory=list)

    def all_prompt_texts(self) -> list[str]:
        return self.answer + self.refuse + [p.prompt_text for p in self.pairs] + [m.question for m in self.mc]

    def capped(self, n: int | None) -> "EvalSet":
        if not n:
            return self
        return EvalSet(self.answer[:n], self.refuse[:n], self.pairs[:n], self.mc[:n])

    def sizes(self) -> dict[str, int]:
        return {"answer": len(self.answer), "refuse": len(self.refuse), "pairs": len(self.pairs), "mc": len(self.mc)}


def user(text: str) -> list[Message]:
    return [{"role": "user", "content": text}]


def _jsonl(path: Path) -> list[tuple[int, dict]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvalSetError(f"{path}:{n}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise EvalSetError(f"{path}:{n}: expected an object")
            rows.append((n, row))
    return rows


def _need(path: Path, n: int, row: dict, key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise EvalSetError(f"{path}:{n}: field {key!r} must be a non-empty string")
    return value


def _read_folder(folder: Path, into: EvalSet) -> None:
    prompts, pairs, mc = (folder / EMBEDDED_FILES[k] for k in ("prompts", "pairs", "mc"))
    if not any(p.exists() for p in (prompts, pairs, mc)):
        raise EvalSetError(f"{folder}: no {', '.join(EMBEDDED_FILES.values())} found")
    if prompts.exists():
        for n, row in _jsonl(prompts):
            text = _need(prompts, n, row, "prompt")
            expect = row.get("expect")
            if expect not in ("answer", "refuse"):
                raise EvalSetError(f"{prompts}:{n}: 'expect' must be 'answer' or 'refuse'")
            (into.answer if expect == "answer" else into.refuse).append(text)
    if pairs.exists():
        for n, row in _jsonl(pairs):
            into.pairs.append(
                Pair(
                    prompt=user(_need(pairs, n, row, "prompt")),
                    chosen=_need(pairs, n, row, "chosen"),
                    rejected=_need(pairs, n, row, "rejected"),
                    source=str(pairs),
                    line=n,
                )
            )
    if mc.exists():
        into.mc.extend(_read_mc(mc))


def read_refusal_set(spec: str) -> tuple[list[str], list[str]]:
    """(should-answer, should-refuse) prompts from XSTest CSV, CoCoNot JSONL or `PATH#answer|refuse`.

    XSTest carries its own `label` (safe/unsafe). A file with no label needs the suffix
    that says what all its prompts expect, e.g. `coconot_eval.jsonl#refuse`.
    """
    path_s, _, forced = spec.partition("#")
    path = Path(path_s)
    if forced not in ("", "answer", "refuse"):
        raise EvalSetError(f"{spec}: suffix must be #answer or #refuse")
    if not path.exists():
        raise EvalSetError(f"{path}: refusal set not found")
    answer: list[str] = []
    refuse: list[str] = []
    if path.suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as fh:
            for n, row in enumerate(csv.DictReader(fh), 2):
                text = (row.get("prompt") or "").strip()
                label = forced or {"safe": "answer", "unsafe": "refuse"}.get((row.get("label") or "").strip())
                if not text or label is None:
                    raise EvalSetError(f"{path}:{n}: needs 'prompt' and label safe/unsafe (or a #answer/#refuse suffix)")
                (answer if label == "answer" else refuse).append(text)
    else:
        for n, row in _jsonl(path):
            text = _need(path, n, row, "prompt")
            label = forced or row.get("expect")
            if label not in ("answer", "refuse"):
                raise EvalSetError(f"{path}:{n}: no 'expect' field; add #answer or #refuse to the path")
            (answer if label == "answer" else refuse).append(text)
    return answer, refuse


def read_truthfulqa(path: Path) -> list[MCItem]:
    """TruthfulQA's mc_task.json: mc0 targets (one true, one false), as its README advises for small models."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EvalSetError(f"{path}: cannot read TruthfulQA JSON: {exc}") from exc
    items = []
    for i, row in enumerate(data, 1):
        targets = row.get("mc0_targets") or row.get("mc1_targets")
        if not isinstance(targets, dict):
            raise EvalSetError(f"{path}: item {i}: no mc0_targets/mc1_targets")
        true = [a for a, v in targets.items() if v == 1]
        false = tuple(a for a, v in targets.items() if v == 0)
        if len(true) != 1 or not false:
            raise EvalSetError(f"{path}: item {i}: needs exactly one true and one or more false answers")
        items.append(MCItem(row["question"], true[0], false))
    return items


def load_evalset(spec: str, refusal_sets: list[str] | None = None, factuality: str | None = None) -> EvalSet:
    out = EvalSet()
    if spec.startswith("embedded:"):
        _read_folder(DATA_DIR, out)
    else:
        path = Path(spec)
        if not path.is_dir():
            raise EvalSetError(f"{spec}: the eval set must be 'embedded:eval' or a folder")
        _read_folder(path, out)
    for extra in refusal_sets or []:
        a, r = read_refusal_set(extra)
        out.answer += a
        out.refuse += r
    if factuality:
        p = Path(factuality)
        out.mc += read_truthfulqa(p) if p.suffix == ".json" else _read_mc(p)
    return out


def _read_mc(path: Path) -> list[MCItem]:
    items = []
    for n, row in _jsonl(path):
        false = row.get("false")
        if not isinstance(false, list) or not false or not all(isinstance(f, str) and f.strip() for f in false):
            raise EvalSetError(f"{path}:{n}: 'false' must be a non-empty list of strings")
        items.append(MCItem(_need(path, n, row, "question"), _need(path, n, row, "true"), tuple(false)))
    return items
