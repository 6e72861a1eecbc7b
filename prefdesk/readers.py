"""Every input format into canonical `Pair`s, and a `Quarantined` record for each row that
could not become one.

Files: JSONL, JSON (a list, or ``{"data": [...]}``), gzip of either (``.gz``), CSV, Parquet,
and folders (an inbox: every file inside, sorted). ``format="auto"`` picks the file format
from the suffix (sniffing the content when the suffix says nothing) and the row form per
row. Row forms:

1. TRL standard: ``prompt``, ``chosen``, ``rejected`` strings (other fields go to ``meta``).
2. TRL conversational: message lists; the final assistant message is the answer, and any
   leading messages of ``chosen``/``rejected`` must agree and extend the prompt.
3. Implicit prompt: only ``chosen`` and ``rejected``, whole dialogues, either HH-RLHF text
   (``\\n\\nHuman: ...\\n\\nAssistant: ...``) or message lists; the shared prefix is the prompt.
4. ShareGPT / LLaMA-Factory: ``conversations`` of ``{from, value}`` plus ``chosen`` and
   ``rejected`` (messages or strings).
5. Pairwise judgments: ``instruction`` (+ ``input``) or ``prompt``, ``response1``,
   ``response2`` and labels ``annotator1..N`` or one ``label``/``preference`` column
   (1 or 2 = the better response, 0 = tie). The majority decides; a tie or no majority is
   quarantined with reason ``tie``. Labels and agreement are kept in ``meta``.
6. Any other tabular layout through ``columns`` (canonical name -> column in the file).

A row that cannot be read is never dropped silently: it becomes ``Quarantined`` with the
file, the 1-based line (JSONL/CSV: the physical line in the file; JSON list / Parquet:
the 1-based item index), a reason and the first 500 characters of the raw row. A file that
cannot be read at all raises `DataError`.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from prefdesk.pairs import Message, Pair, Quarantined

FILE_FORMATS = ("jsonl", "json", "csv", "parquet")
ROW_FORMS = ("standard", "conversational", "implicit", "sharegpt", "pairwise")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".pq", ".tsv", ".ndjson")
RAW_CHARS = 500
_PACKAGE_DATA = Path(__file__).resolve().parent / "data"

_ROLE = {
    "user": "user", "human": "user", "prompter": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "model": "assistant",
    "chatgpt": "assistant", "system": "system",
}
_HH_MARK = re.compile(r"\n\n(Human|Assistant):")
_HH_ASSISTANT = "\n\nAssistant:"


class DataError(ValueError):
    """A file that cannot be read at all; the message names the file (and line where known)."""


@dataclass
class ReadResult:
    pairs: list[Pair]
    quarantined: list[Quarantined]
    rows_in: int
    # Label lists of every judged row (pairwise form with two or more annotators), ties and
    # no-majority rows included: what inter-annotator agreement is computed from.
    annotations: list[list[int]] = field(default_factory=list)


class RowError(ValueError):
    """A row that cannot become a pair; the message is the quarantine reason."""


# ---------------------------------------------------------------------------- files


def resolve(path: str) -> list[Path]:
    """Expand one input: ``embedded:NAME`` to package data files, a folder to its data
    files (sorted, recursively), a file to itself."""
    if path.startswith("embedded:"):
        name = path.split(":", 1)[1] or "default"
        if name == "default":
            target = _PACKAGE_DATA / "default_pairs.jsonl"
            if not target.exists():
                raise DataError(f"{path}: embedded file {target} is missing")
            return [target]
        found = sorted(_PACKAGE_DATA.glob(f"{name}*.jsonl"))
        if not found:
            raise DataError(f"{path}: no embedded data file {_PACKAGE_DATA}/{name}*.jsonl")
        return found
    p = Path(path)
    if p.is_dir():
        files = sorted(
            f for f in p.rglob("*")
            if f.is_file() and not f.name.startswith(".")
            and (f.suffix.lower() in DATA_SUFFIXES
                 or (f.suffix.lower() == ".gz" and Path(f.stem).suffix.lower() in DATA_SUFFIXES))
        )
        return files
    if not p.exists():
        raise DataError(f"{path}: no such file or folder")
    return [p]


def _raw_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
        if path.suffix.lower() == ".gz" or data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        # Spreadsheet exports often start with a UTF-8 byte-order mark; JSON parsers refuse it.
        return data[3:] if data[:3] == b"\xef\xbb\xbf" else data
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc


def _detect_format(path: Path, data: bytes) -> str:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    suffix = Path(name).suffix
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        return "json"
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".parquet", ".pq") or data[:4] == b"PAR1":
        return "parquet"
    head = data.lstrip()[:1]
    if head == b"[":
        return "json"
    if head == b"{":
        first = data.lstrip().split(b"\n", 1)[0]
        try:
            json.loads(first)
            return "jsonl"
        except ValueError:
            return "json"
    raise DataError(f"{path}: cannot tell the format (use .jsonl, .json, .csv or .parquet)")


def _raw(obj: Any) -> str:
    if isinstance(obj, (bytes, bytearray)):
        text = obj.decode("utf-8", errors="replace")
    elif isinstance(obj, str):
        text = obj
    else:
        try:
            text = json.dumps(obj, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            text = repr(obj)
    return text[:RAW_CHARS].encode("utf-8", errors="replace").decode("utf-8")


def _rows_jsonl(path: Path, data: bytes) -> Iterator[tuple[int, Any, str | None]]:
    """(line, row or raw text, error) for every non-blank line."""
    for lineno, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield lineno, line, f"invalid UTF-8 at byte {exc.start}"
            continue
        try:
            yield lineno, json.loads(text), None
        except ValueError as exc:
            yield lineno, text, f"bad JSON: {exc}"


def _rows_json(path: Path, data: bytes) -> Iterator[tuple[int, Any, str | None]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: invalid UTF-8 (byte {exc.start})") from exc
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        # A JSONL file named .json: every line an object.
        if exc.msg == "Extra data":
            first = text.lstrip().split("\n", 1)[0]
            try:
                if isinstance(json.loads(first), dict):
                    yield from _rows_jsonl(path, data)
                    return
            except ValueError:
                pass
        raise DataError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from exc
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        items = obj["data"]
    elif isinstance(obj, list):
        items = obj
    elif isinstance(obj, dict) and ("chosen" in obj or "response1" in obj):
        items = [obj]
    else:
        raise DataError(f"{path}:1: JSON must be a list of rows or {{\"data\": [...]}}")
    for i, item in enumerate(items, 1):
        yield i, item, None


def _rows_csv(path: Path, data: bytes) -> Iterator[tuple[int, Any, str | None]]:
    text = data.decode("utf-8", errors="surrogateescape")
    if text.startswith("\ufeff"):
        text = text[1:]
    delimiter = "\t" if path.name.lower().removesuffix(".gz").endswith(".tsv") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise DataError(f"{path}:1: bad CSV header: {exc}") from exc
    if any(_has_surrogate(h) for h in header):
        raise DataError(f"{path}:1: invalid UTF-8 in the CSV header")
    header = [h.strip() for h in header]
    while True:
        start = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield start, "", f"bad CSV row: {exc}"
            continue
        if not values or all(not v.strip() for v in values):
            continue
        if any(_has_surrogate(v) for v in values):
            yield start, ",".join(values).encode("utf-8", "surrogateescape"), "invalid UTF-8"
            continue
        if len(values) != len(header):
            yield start, ",".join(values), (
                f"bad CSV row: {len(values)} fields, header has {len(header)}")
            continue
        yield start, dict(zip(header, values)), None


def _rows_parquet(path: Path, data: bytes) -> Iterator[tuple[int, Any, str | None]]:
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not readable"
        raise DataError(f"{path}: not a readable Parquet file: {exc}") from exc
    for i, row in enumerate(table.to_pylist(), 1):
        yield i, row, None


_READERS = {"jsonl": _rows_jsonl, "json": _rows_json, "csv": _rows_csv, "parquet": _rows_parquet}


# ---------------------------------------------------------------------------- rows


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _text(value: Any, what: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise RowError(f"missing {what}")
    if not isinstance(value, str):
        raise RowError(f"{what} is {type(value).__name__}, not text")
    if _has_surrogate(value):
        raise RowError(f"invalid UTF-8 in {what}")
    if not value.strip():
        raise RowError(f"empty {what}")
    return value


def _message(m: Any, what: str) -> Message:
    if isinstance(m, str):
        raise RowError(f"{what}: expected a message, got text")
    if not isinstance(m, dict):
        raise RowError(f"{what}: expected a message, got {type(m).__name__}")
    role = m.get("role", m.get("from"))
    content = m.get("content", m.get("value"))
    if not isinstance(role, str) or role.lower() not in _ROLE:
        raise RowError(f"{what}: unknown role {role!r}")
    if content is None or not isinstance(content, str):
        raise RowError(f"{what}: content is {type(content).__name__}, not text")
    if _has_surrogate(content):
        raise RowError(f"invalid UTF-8 in {what}")
    return {"role": _ROLE[role.lower()], "content": content}


def _messages(value: Any, what: str) -> list[Message]:
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise RowError(f"{what} is {type(value).__name__}, not a message list")
    if not value:
        raise RowError(f"empty {what}")
    return [_message(m, f"{what}[{i}]") for i, m in enumerate(value)]


def _check_prompt(prompt: list[Message]) -> list[Message]:
    if not prompt or not any(m["content"].strip() for m in prompt):
        raise RowError("empty prompt")
    return prompt


def _answer_and_prefix(value: Any, what: str) -> tuple[list[Message], str]:
    """A chosen/rejected value: text, one message, or a list whose last is the answer."""
    if isinstance(value, str):
        return [], _text(value, what)
    if not isinstance(value, (list, dict)):
        _text(value, what)  # raises: missing / not text
    msgs = _messages(value, what)
    last = msgs[-1]
    if last["role"] != "assistant":
        raise RowError(f"{what}: the last message is from {last['role']}, not the assistant")
    return msgs[:-1], _text(last["content"], what)


def _split_shared(chosen: Any, rejected: Any, prompt: list[Message]) -> tuple[list[Message], str, str]:
    c_pre, c = _answer_and_prefix(chosen, "chosen")
    r_pre, r = _answer_and_prefix(rejected, "rejected")
    if c_pre != r_pre:
        raise RowError("chosen and rejected disagree before the final assistant answer")
    return _check_prompt(prompt + c_pre), c, r


def _parse_hh(text: str) -> list[Message]:
    parts = _HH_MARK.split(text)
    msgs: list[Message] = []
    if parts[0].strip():
        msgs.append({"role": "system", "content": parts[0].strip()})
    for role, content in zip(parts[1::2], parts[2::2]):
        msgs.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    return msgs


def _implicit_text(chosen: str, rejected: str) -> tuple[list[Message], str, str]:
    if _HH_ASSISTANT not in chosen or _HH_ASSISTANT not in rejected:
        raise RowError("implicit prompt: chosen/rejected are not Human/Assistant dialogues")
    shared = len(_common_prefix(chosen, rejected))
    cut = chosen.rfind(_HH_ASSISTANT, 0, shared)
    if cut < 0:
        raise RowError("implicit prompt: chosen and rejected share no dialogue prefix")
    c = chosen[cut + len(_HH_ASSISTANT):].strip()
    r = rejected[cut + len(_HH_ASSISTANT):].strip()
    if "\n\nHuman:" in c or "\n\nHuman:" in r:
        raise RowError("implicit prompt: the dialogues diverge before the final assistant turn")
    prompt = _parse_hh(chosen[:cut])
    if not prompt or prompt[-1]["role"] != "user":
        raise RowError("implicit prompt: the prompt does not end with a Human turn")
    return _check_prompt(prompt), _text(c, "chosen"), _text(r, "rejected")


def _common_prefix(a: str, b: str) -> str:
    n = min(len(a), len(b))
    i = 0
    # Compare in blocks first: dialogues share long prefixes.
    step = 256
    while i + step <= n and a[i:i + step] == b[i:i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return a[:i]


def _implicit_messages(chosen: Any, rejected: Any) -> tuple[list[Message], str, str]:
    c = _messages(chosen, "chosen")
    r = _messages(rejected, "rejected")
    if c[-1]["role"] != "assistant" or r[-1]["role"] != "assistant":
        raise RowError("implicit prompt: the last message is not from the assistant")
    if c[:-1] != r[:-1]:
        raise RowError("implicit prompt: chosen and rejected disagree before the final answer")
    return _check_prompt(c[:-1]), _text(c[-1]["content"], "chosen"), _text(r[-1]["content"], "rejected")


_LABEL_WORDS = {
    "1": 1, "2": 2, "0": 0, "a": 1, "b": 2, "response1": 1, "response2": 2, "tie": 0,
    "draw": 0, "equal": 0, "1.0": 1, "2.0": 2, "0.0": 0,
}


def _label(value: Any, what: str) -> int | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        raise RowError(f"{what} is a boolean, expected 1, 2 or 0")
    if isinstance(value, (int, float)) and value in (0, 1, 2):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in _LABEL_WORDS:
        return _LABEL_WORDS[value.strip().lower()]
    if isinstance(value, str) and not value.strip():
        return None
    raise RowError(f"{what} is {value!r}, expected 1, 2 or 0 (tie)")


_ANNOTATOR = re.compile(r"^annotator_?(\d+)$")


def _pairwise_labels(row: dict[str, Any]) -> tuple[list[int], list[str]]:
    ann_keys = sorted((k for k in row if _ANNOTATOR.match(k)), key=lambda k: int(_ANNOTATOR.match(k).group(1)))
    if ann_keys:
        labels = [lab for k in ann_keys if (lab := _label(row[k], k)) is not None]
    else:
        key = next((k for k in ("label", "preference", "winner") if k in row), None)
        if key is None:
            raise RowError("pairwise row without labels (annotator1..N, label or preference)")
        lab = row[key]
        ann_keys = [key]
        if isinstance(lab, list):
            labels = [x for i, v in enumerate(lab) if (x := _label(v, f"{key}[{i}]")) is not None]
        else:
            one = _label(lab, key)
            labels = [] if one is None else [one]
    if not labels:
        raise RowError("pairwise row without any label")
    return labels, ann_keys


def _pairwise_texts(row: dict[str, Any]) -> tuple[list[Message], str, str]:
    if "prompt" in row:
        prompt_val = row["prompt"]
        prompt = ([{"role": "user", "content": _text(prompt_val, "prompt")}]
                  if not isinstance(prompt_val, list) else _messages(prompt_val, "prompt"))
    else:
        extra = row.get("input")
        if extra is None or (isinstance(extra, float) and math.isnan(extra)):
            extra = ""
        if not isinstance(extra, str):
            raise RowError(f"input is {type(extra).__name__}, not text")
        if _has_surrogate(extra):
            raise RowError("invalid UTF-8 in input")
        instruction = row.get("instruction")
        if isinstance(instruction, str) and not instruction.strip() and extra.strip():
            content = extra  # an empty instruction with an input: the input is the prompt
        else:
            instruction = _text(instruction, "instruction")
            content = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        prompt = [{"role": "user", "content": content}]
    a = _text(row.get("response1"), "response1")
    b = _text(row.get("response2"), "response2")
    return prompt, a, b


def _majority(labels: list[int]) -> tuple[int | None, float]:
    counts = Counter(labels).most_common()
    top, n = counts[0]
    if len(counts) > 1 and counts[1][1] == n:
        return None, n / len(labels)
    return top, n / len(labels)


_STANDARD_KEYS = ("prompt", "chosen", "rejected")
_PAIRWISE_KEYS = ("instruction", "input", "prompt", "response1", "response2", "label",
                  "preference", "winner")


def _apply_columns(row: dict[str, Any], columns: dict[str, str] | None) -> dict[str, Any]:
    if not columns:
        return row
    out = dict(row)
    for canon, src in columns.items():
        if src in row:
            out.pop(src, None)
            out[canon] = row[src]
        elif canon not in row:
            raise RowError(f"column {src!r} (for {canon}) not in row")
    return out


def _meta(row: dict[str, Any], used: tuple[str, ...] | set[str]) -> dict[str, Any]:
    meta = {}
    for k, v in row.items():
        if k in used:
            continue
        if isinstance(v, float) and math.isnan(v):
            continue
        meta[k] = v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v)
    return meta


def row_to_pair(row: Any, source: str, line: int, columns: dict[str, str] | None = None,
                form: str = "auto") -> tuple[Pair | None, str | None, list[int] | None]:
    """One raw row -> (pair, None, labels) or (None, reason, labels)."""
    try:
        if not isinstance(row, dict):
            raise RowError(f"unknown shape: a {type(row).__name__}, not an object")
        row = _apply_columns(row, columns)
        keys = set(row)
        labels: list[int] | None = None
        if form == "pairwise" or (form == "auto" and {"response1", "response2"} <= keys):
            labels, ann_keys = _pairwise_labels(row)
            ann = labels if len(labels) > 1 else None
            try:
                prompt, a, b = _pairwise_texts(row)
            except RowError as exc:
                return None, str(exc), ann
            winner, agreement = _majority(labels)
            if winner is None or winner == 0:
                why = "tie" if winner == 0 else "tie (no majority)"
                return None, f"{why}: labels {labels}", ann
            chosen, rejected = (a, b) if winner == 1 else (b, a)
            meta = _meta(row, set(_PAIRWISE_KEYS) | set(ann_keys))
            meta.update(labels=labels, agreement=round(agreement, 4), chosen_response=winner,
                        n_annotators=len(labels))
            return Pair(prompt=prompt, chosen=chosen, rejected=rejected, source=source,
                        line=line, meta=meta), None, ann
        if form == "sharegpt" or (form == "auto" and "conversations" in keys):
            conv = _messages(row.get("conversations"), "conversations")
            if "chosen" not in row or "rejected" not in row:
                raise RowError("sharegpt row without chosen/rejected")
            prompt, c, r = _split_shared(row["chosen"], row["rejected"], conv)
            used: tuple[str, ...] = ("conversations", "chosen", "rejected")
        elif "chosen" in keys and "rejected" in keys:
            if "prompt" in keys and form != "implicit":
                p = row["prompt"]
                if isinstance(p, list) or isinstance(p, dict):
                    base = _messages(p, "prompt")
                else:
                    base = [{"role": "user", "content": _text(p, "prompt")}]
                prompt, c, r = _split_shared(row["chosen"], row["rejected"], base)
            else:
                ch, rj = row["chosen"], row["rejected"]
                if isinstance(ch, str) and isinstance(rj, str):
                    prompt, c, r = _implicit_text(_text(ch, "chosen"), _text(rj, "rejected"))
                elif isinstance(ch, (list, dict)) and isinstance(rj, (list, dict)):
                    prompt, c, r = _implicit_messages(ch, rj)
                else:
                    _text(ch, "chosen"), _text(rj, "rejected")
                    raise RowError("chosen and rejected are of different kinds")
            used = _STANDARD_KEYS
        else:
            missing = [k for k in ("chosen", "rejected") if k not in keys]
            if "prompt" in keys or keys & {"chosen", "rejected"}:
                raise RowError(f"missing field {', '.join(missing)}")
            raise RowError(f"unknown shape: fields {', '.join(sorted(map(str, keys))[:8]) or '(none)'}")
        return Pair(prompt=prompt, chosen=c, rejected=r, source=source, line=line,
                    meta=_meta(row, used)), None, labels
    except RowError as exc:
        return None, str(exc), None


def read_pairs(paths: list[str], format: str = "auto", columns: dict[str, str] | None = None) -> ReadResult:
    """Read every path (files, folders, ``embedded:NAME``) into pairs and quarantine records.

    ``format`` is ``auto``, a file format (jsonl, json, csv, parquet) or a row form
    (standard, conversational, implicit, sharegpt, pairwise). The same pair arriving twice
    is returned twice here; de-duplication is a check (validations), so it is counted.
    """
    if isinstance(paths, (str, Path)):
        paths = [str(paths)]
    fmt = (format or "auto").lower()
    if fmt not in ("auto",) + FILE_FORMATS + ROW_FORMS:
        raise DataError(f"unknown format {format!r}: use auto, {', '.join(FILE_FORMATS + ROW_FORMS)}")
    file_fmt = fmt if fmt in FILE_FORMATS else "auto"
    form = fmt if fmt in ("implicit", "sharegpt", "pairwise") else "auto"
    pairs: list[Pair] = []
    quarantined: list[Quarantined] = []
    annotations: list[list[int]] = []
    rows_in = 0
    for spec in paths:
        for path in resolve(str(spec)):
            data = _raw_bytes(path)
            kind = file_fmt if file_fmt != "auto" else _detect_format(path, data)
            source = str(path)
            for line, row, error in _READERS[kind](path, data):
                rows_in += 1
                if error is not None:
                    quarantined.append(Quarantined(source=source, line=line, reason=error,
                                                   check="read", raw=_raw(row)))
                    continue
                pair, reason, labels = row_to_pair(row, source, line, columns, form)
                if labels:
                    annotations.append(labels)
                if pair is None:
                    quarantined.append(Quarantined(source=source, line=line, reason=reason or "unreadable",
                                                   check="label_consistency" if reason and reason.startswith("tie") else "read",
                                                   raw=_raw(row)))
                else:
                    pairs.append(pair)
    return ReadResult(pairs=pairs, quarantined=quarantined, rows_in=rows_in, annotations=annotations)
