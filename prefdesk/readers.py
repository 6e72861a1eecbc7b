"""Every input format into canonical `Pair`s, and a `Quarantined` record for each row that
could not become one.

Files: JSONL, JSON (a list, or ``{"data": [...]}``), gzip of either (``.gz``), CSV, Parquet,
and folders (an inbox: every file inside, sorted). ``format="auto"`` picks the file format
from the suffix (sniffing the content when the suffix says nothing) and the row form per
row. Row forms:

1. TRL standard: ``prompt``, ``chosen``, ``rejected`` strings (other fields go to ``meta``).
2. TRL conversational: message lists; the final assistant message is the answer, and any
   leading messages of ``chosen``/``rejected`` must agree and extend the prompt. A message's
   ``content`` is text or a list of parts (``[{"type": "text", "text": ...}]``, joined); a
   non-text part (image, audio, ...) is quarantined. ``chosen_messages``/``rejected_messages``
   are read as ``chosen``/``rejected``.
3. Implicit prompt: only ``chosen`` and ``rejected``, whole dialogues, either HH-RLHF text
   (``\\n\\nHuman: ...\\n\\nAssistant: ...``) or message lists; the shared prefix is the prompt.
4. ShareGPT / LLaMA-Factory: ``conversations`` of ``{from, value}`` plus ``chosen`` and
   ``rejected`` (messages or strings).
5. Pairwise judgments: two responses (``response1``/``response2``, or ``output_1``/``output_2``
   as LLMBar writes them), the prompt in ``instruction`` (+ ``input``), ``prompt`` or
   ``input``, and labels ``annotator1..N`` or one ``label``/``preference``/``winner`` column.
   What a label means is never guessed (see `prefdesk.labels`): a known format (PandaLM,
   LLMBar, by exact key set), the user's label map (``--label-map 0=first,1=second,2=tie``)
   or a label naming a response column or ``tie``; any other label quarantines the row with
   a reason saying what to pass. The majority decides; a tie or no majority is quarantined
   with reason ``tie``. Labels (1 = first, 2 = second, 0 = tie) and agreement go to ``meta``.
6. Unpaired examples (KTO style): ``prompt`` + ``completion``, or ``messages``, with a
   true/false ``label`` (true = desirable). Within a file, each desirable example is paired
   with an undesirable one of the same prompt (in file order); the leftovers are quarantined,
   since a pairwise optimizer cannot use an unpaired example. A formed pair counts as one row.
7. Any other tabular layout through ``columns`` (canonical name -> column in the file); a
   row of unknown shape is quarantined with the ``--column`` options that would map it.

A row that cannot be read is never dropped silently: it becomes ``Quarantined`` with the
file, the 1-based line (JSONL/CSV: the physical line in the file; JSON list / Parquet:
the 1-based item index), a reason and the first 500 characters of the raw row. So is a
row that repeats a JSON key or CSV column (a parser would keep only one value) and a field
that only invisible characters fill (zero-width spaces and friends are kept inside real
text, but never count as content). A file that cannot be read at all raises `DataError`.
How each file's labels were read, and how unpaired examples were paired, goes to
``ReadResult.notes``.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefdesk.invisible import blank_reason, common_prefix_length, differ_only_invisibly, invisible_codes, is_blank
from prefdesk.labels import KnownFormat, LabelError, LabelReader, known_format, parse_label_map, show
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
    # Rows read, so that rows_in == len(pairs) + len(quarantined): two unpaired examples
    # joined into one pair count as one row.
    rows_in: int
    # Label lists of every judged row (pairwise form with two or more annotators), ties and
    # no-majority rows included: what inter-annotator agreement is computed from.
    annotations: list[list[int]] = field(default_factory=list)
    # Human-readable lines for the report: how each file's labels were read (known format,
    # label map, or ambiguous and quarantined) and how unpaired examples were paired.
    notes: list[str] = field(default_factory=list)


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


class _RepeatedKeys(dict):
    """A JSON object that repeated a key; a plain parser would have kept the last value."""

    repeated: tuple[str, ...] = ()


def _json_decoder() -> tuple[json.JSONDecoder, list[str]]:
    """A decoder that marks objects with repeated keys, and the list of keys it found (the
    caller clears it); a plain dict costs one extra length comparison per object."""
    found: list[str] = []

    def hook(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(items)
        if len(obj) == len(items):
            return obj
        marked = _RepeatedKeys(obj)
        marked.repeated = tuple(k for k, n in Counter(k for k, _ in items).items() if n > 1)
        found.extend(marked.repeated)
        return marked

    return json.JSONDecoder(object_pairs_hook=hook), found


def _repeated_key(obj: Any) -> str | None:
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, _RepeatedKeys):
            return item.repeated[0]
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _repeated_reason(key: str, where: str) -> str:
    return f"duplicate key {key!r} in the JSON object {where}: a JSON parser keeps only the last value"


def _rows_jsonl(path: Path, data: bytes) -> Iterator[tuple[int, Any, str | None]]:
    """(line, row or raw text, error) for every non-blank line."""
    decoder, repeated = _json_decoder()
    for lineno, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield lineno, line, f"invalid UTF-8 at byte {exc.start}"
            continue
        repeated.clear()
        try:
            row = decoder.decode(text)
        except ValueError as exc:
            yield lineno, text, f"bad JSON: {exc}"
            continue
        if repeated:
            yield lineno, text, _repeated_reason(repeated[0], f"on line {lineno}")
        else:
            yield lineno, row, None


def _rows_json(path: Path, data: bytes) -> Iterator[tuple[int, Any, str | None]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: invalid UTF-8 (byte {exc.start})") from exc
    decoder, repeated = _json_decoder()
    try:
        obj = decoder.decode(text)
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
    if isinstance(obj, _RepeatedKeys) and "data" in obj.repeated:
        raise DataError(f"{path}:1: the top-level key 'data' appears twice; a JSON parser keeps only the last list")
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        items = obj["data"]
    elif isinstance(obj, list):
        items = obj
    elif isinstance(obj, dict) and ("chosen" in obj or "response1" in obj):
        items = [obj]
    else:
        raise DataError(f"{path}:1: JSON must be a list of rows or {{\"data\": [...]}}")
    for i, item in enumerate(items, 1):
        key = _repeated_key(item) if repeated else None
        if key is not None:
            yield i, item, _repeated_reason(key, f"of item {i}")
        else:
            yield i, item, None


def _repeated_columns(names: list[str]) -> list[str]:
    return [n for n, k in Counter(names).items() if k > 1 and n]


def _repeated_column_reason(name: str, where: str) -> str:
    return f"duplicate column {name!r} in the {where}: a reader keeps only one of its values"


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
    repeated = _repeated_columns(header)
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
        if repeated:
            yield start, ",".join(values), _repeated_column_reason(repeated[0], "CSV header (line 1)")
            continue
        yield start, dict(zip(header, values)), None


def _rows_parquet(path: Path, data: bytes) -> Iterator[tuple[int, Any, str | None]]:
    try:
        import pyarrow.parquet as pq

        # ParquetFile, not read_table: the dataset reader refuses a repeated column outright,
        # this one reads it, so each row can be quarantined with the reason.
        table = pq.ParquetFile(io.BytesIO(data)).read()
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not readable"
        raise DataError(f"{path}: not a readable Parquet file: {exc}") from exc
    repeated = _repeated_columns(table.column_names)
    for i, row in enumerate(table.to_pylist(), 1):
        if repeated:
            yield i, row, _repeated_column_reason(repeated[0], "Parquet schema")
        else:
            yield i, row, None


_READERS = {"jsonl": _rows_jsonl, "json": _rows_json, "csv": _rows_csv, "parquet": _rows_parquet}


# ---------------------------------------------------------------------------- text and messages


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text(value: Any, what: str) -> str:
    if _missing(value):
        raise RowError(f"missing {what}")
    if not isinstance(value, str):
        raise RowError(f"{what} is {type(value).__name__}, not text")
    if _has_surrogate(value):
        raise RowError(f"invalid UTF-8 in {what}")
    if is_blank(value):
        raise RowError(blank_reason(what, value))
    return value


_TEXT_PARTS = ("text", "input_text", "output_text")


def _parts_text(parts: list[Any], what: str) -> str:
    """Newer chat formats write content as parts; the text parts joined, as chat templates
    render them. Anything else (an image, audio, a tool call) cannot be trained on as text."""
    texts = []
    for i, part in enumerate(parts):
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            raise RowError(f"{what}: content part {i} is {kind!r}, not text; only text parts can be trained on")
    return "".join(texts)


def _message(m: Any, what: str) -> Message:
    if isinstance(m, str):
        raise RowError(f"{what}: expected a message, got text")
    if not isinstance(m, dict):
        raise RowError(f"{what}: expected a message, got {type(m).__name__}")
    role = m.get("role", m.get("from"))
    content = m.get("content", m.get("value"))
    if not isinstance(role, str) or role.lower() not in _ROLE:
        raise RowError(f"{what}: unknown role {role!r}")
    if isinstance(content, list):
        content = _parts_text(content, what)
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


def _prompt(value: Any, what: str = "prompt") -> list[Message]:
    """A prompt field: text (one user turn) or messages."""
    if isinstance(value, (list, dict)):
        return _messages(value, what)
    return [{"role": "user", "content": _text(value, what)}]


def _check_prompt(prompt: list[Message]) -> list[Message]:
    if not prompt or all(is_blank(m["content"]) for m in prompt):
        raise RowError(blank_reason("prompt", "".join(m["content"] for m in prompt)))
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


# ---------------------------------------------------------------------------- row forms


def _split_shared(chosen: Any, rejected: Any, prompt: list[Message]) -> tuple[list[Message], str, str]:
    c_pre, c = _answer_and_prefix(chosen, "chosen")
    r_pre, r = _answer_and_prefix(rejected, "rejected")
    if c_pre != r_pre:
        raise RowError("chosen and rejected disagree before the final assistant answer")
    return _check_prompt(prompt + c_pre), c, r


def _parse_hh(text: str) -> list[Message]:
    """HH-RLHF dialogue text (``\\n\\nHuman: ...\\n\\nAssistant: ...``) -> messages."""
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
    shared = common_prefix_length(chosen, rejected)
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


def _implicit_messages(chosen: Any, rejected: Any) -> tuple[list[Message], str, str]:
    c = _messages(chosen, "chosen")
    r = _messages(rejected, "rejected")
    if c[-1]["role"] != "assistant" or r[-1]["role"] != "assistant":
        raise RowError("implicit prompt: the last message is not from the assistant")
    if c[:-1] != r[:-1]:
        raise RowError("implicit prompt: chosen and rejected disagree before the final answer")
    return _check_prompt(c[:-1]), _text(c[-1]["content"], "chosen"), _text(r[-1]["content"], "rejected")


# Pairwise judgments: the two response columns as each form names them, and label columns.
_RESPONSE_NAMES = (("response1", "response2"), ("output_1", "output_2"))
_ANNOTATOR = re.compile(r"^annotator_?(\d+)$")
_LABEL_COLUMNS = ("label", "preference", "winner")


def _pairwise_labels(row: dict[str, Any], origin: Mapping[str, str], names: tuple[str, str],
                     known: KnownFormat | None, labels: LabelReader) -> tuple[list[int], list[str]]:
    ann_keys = sorted((k for k in row if _ANNOTATOR.match(k)), key=lambda k: int(_ANNOTATOR.match(k).group(1)))
    if ann_keys:
        cells = [(k, row[k]) for k in ann_keys]
    else:
        key = next((k for k in _LABEL_COLUMNS if k in row), None)
        if key is None:
            raise RowError("pairwise row without labels (annotator1..N, label, preference or winner)")
        ann_keys = [key]
        value = row[key]
        cells = [(key, v) for v in value] if isinstance(value, list) else [(key, value)]
    file_names = (origin.get(names[0], names[0]), origin.get(names[1], names[1]))
    decoded = []
    for key, value in cells:
        try:
            code = labels.decode(value, origin.get(key, key), file_names, known)
        except LabelError as exc:
            raise RowError(str(exc)) from None
        if code is not None:
            decoded.append(code)
    if not decoded:
        raise RowError("pairwise row without any label")
    labels.row_read(known, file_names)
    return decoded, ann_keys


def _pairwise_texts(row: dict[str, Any], names: tuple[str, str]) -> tuple[list[Message], str, str]:
    if "prompt" in row:
        prompt = _prompt(row["prompt"])
    elif "instruction" not in row and "input" in row:
        prompt = _prompt(row["input"], "input")  # LLMBar: the input is the whole instruction
    else:
        extra = row.get("input")
        if _missing(extra):
            extra = ""
        if not isinstance(extra, str):
            raise RowError(f"input is {type(extra).__name__}, not text")
        if _has_surrogate(extra):
            raise RowError("invalid UTF-8 in input")
        instruction = row.get("instruction")
        if isinstance(instruction, str) and is_blank(instruction) and not is_blank(extra):
            content = extra  # an empty instruction with an input: the input is the prompt
        else:
            instruction = _text(instruction, "instruction")
            content = f"{instruction}\n\n{extra}" if not is_blank(extra) else instruction
        prompt = [{"role": "user", "content": content}]
    a = _text(row.get(names[0]), names[0])
    b = _text(row.get(names[1]), names[1])
    return prompt, a, b


def _majority(labels: list[int]) -> tuple[int | None, float]:
    counts = Counter(labels).most_common()
    top, n = counts[0]
    if len(counts) > 1 and counts[1][1] == n:
        return None, n / len(labels)
    return top, n / len(labels)


_STANDARD_KEYS = ("prompt", "chosen", "rejected")
_PAIRWISE_KEYS = ("instruction", "input", "prompt", "response1", "response2", "output_1", "output_2",
                  *_LABEL_COLUMNS)
_UNPAIRED_KEYS = ("prompt", "completion", "messages", "label")
_PAIR_KEYS = {"chosen", "rejected", "response1", "response2", "output_1", "output_2"}


def _apply_columns(row: dict[str, Any], columns: Mapping[str, str] | None) -> tuple[dict[str, Any], dict[str, str]]:
    """The row with its columns renamed to canonical names, and canonical -> name in the file."""
    if not columns:
        return row, {}
    out = dict(row)
    origin = {}
    for canon, src in columns.items():
        if src in row:
            out.pop(src, None)
            out[canon] = row[src]
            origin[canon] = src
        elif canon not in row:
            raise RowError(f"column {src!r} (for {canon}) not in row")
    return out, origin


def _meta(row: dict[str, Any], used: tuple[str, ...] | set[str]) -> dict[str, Any]:
    meta = {}
    for k, v in row.items():
        if k in used:
            continue
        if isinstance(v, float) and math.isnan(v):
            continue
        meta[k] = v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v)
    return meta


# ---------------------------------------------------------------------------- unpaired examples


@dataclass
class Unpaired:
    """One good or bad example without a counterpart (KTO style), waiting to be paired."""

    prompt: list[Message]
    completion: str
    desirable: bool
    meta: dict[str, Any]
    line: int = 0
    raw: str = ""


def _unpaired(row: dict[str, Any]) -> Unpaired:
    label = row["label"]
    if isinstance(label, str) and label.strip().lower() in ("true", "false"):
        label = label.strip().lower() == "true"
    if not isinstance(label, bool):
        raise RowError(f"unpaired example: label {show(label)} is not true or false "
                       "(true = desirable, false = undesirable)")
    if "completion" in row:
        base = _prompt(row.get("prompt"))
        prefix, completion = _answer_and_prefix(row["completion"], "completion")
        prompt = _check_prompt(base + prefix)
    else:
        msgs = _messages(row["messages"], "messages")
        if msgs[-1]["role"] != "assistant":
            raise RowError("messages: the last message is not from the assistant")
        prompt, completion = _check_prompt(msgs[:-1]), _text(msgs[-1]["content"], "completion")
    return Unpaired(prompt=prompt, completion=completion, desirable=label, meta=_meta(row, _UNPAIRED_KEYS))


def pair_unpaired(items: list[Unpaired], source: str) -> tuple[list[Pair], list[Quarantined], str]:
    """Pair each desirable example with an undesirable one of the same prompt, first with
    first in file order (deterministic); quarantine the rest. Returns a note for the report."""
    groups: dict[str, tuple[list[Unpaired], list[Unpaired]]] = {}
    for u in items:
        key = json.dumps([(m["role"], m["content"].strip()) for m in u.prompt], ensure_ascii=False)
        groups.setdefault(key, ([], []))[0 if u.desirable else 1].append(u)
    pairs: list[Pair] = []
    left: list[Quarantined] = []
    for good, bad in groups.values():
        for g, b in zip(good, bad):
            pairs.append(Pair(prompt=g.prompt, chosen=g.completion, rejected=b.completion, source=source,
                              line=g.line, meta={**g.meta, "paired_from_lines": [g.line, b.line]}))
        for u in good[len(bad):] + bad[len(good):]:
            kind, other = ("desirable", "undesirable") if u.desirable else ("undesirable", "desirable")
            left.append(Quarantined(source=source, line=u.line, raw=u.raw, reason=(
                f"unpaired example ({kind}): no {other} example of the same prompt to pair it with; "
                "a pairwise optimizer cannot use an unpaired example")))
    pairs.sort(key=lambda p: p.line)
    note = (f"{source}: {len(items)} unpaired examples (true/false label, KTO style): {len(pairs)} pairs formed, "
            f"each from a desirable and an undesirable example of the same prompt (first with first, in file "
            f"order); {len(left)} left without a counterpart and quarantined; a formed pair counts as one row")
    return pairs, left, note


# ---------------------------------------------------------------------------- unknown shapes

_HINT_WORDS = {
    "chosen": {"chosen", "good", "preferred", "better", "best", "accepted", "positive", "pos", "win",
               "winning", "selected", "correct", "helpful"},
    "rejected": {"rejected", "bad", "dispreferred", "worse", "worst", "negative", "neg", "lose", "losing",
                 "loser", "incorrect", "wrong", "harmful"},
    "prompt": {"prompt", "question", "query", "instruction", "input", "context", "request", "history",
               "conversation", "dialog", "dialogue", "post", "title", "user", "problem", "task"},
}
_TEXT_STEMS = {"response", "answer", "output", "completion", "reply", "generation", "text", "summary"}
_LABEL_WORDS = {"label", "winner", "preference", "choice", "preferred", "better", "gold", "judgment",
                "judgement", "verdict", "annotation", "human"}
_SIDE = re.compile(r"^(.*?)[_\- ]?(a|b|0|1|2)$", re.IGNORECASE)


def _words(name: str) -> set[str]:
    return set(re.findall(r"[a-z]+", re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()))


def column_hint(fields: list[str]) -> str:
    """The --column options that would probably map these fields: a suggestion for the
    user to confirm, never applied by the reader."""
    sides: dict[str, dict[str, str]] = {}
    for f in fields:
        m = _SIDE.match(f)
        if m and _words(m.group(1)) & _TEXT_STEMS:
            sides.setdefault(m.group(1).lower(), {})[m.group(2).lower()] = f
    for tags in sides.values():
        order = next((o for o in (("a", "b"), ("1", "2"), ("0", "1")) if set(o) <= set(tags)), None)
        if order is None:
            continue
        r1, r2 = tags[order[0]], tags[order[1]]
        rest = [f for f in fields if f not in (r1, r2)]
        label = next((f for f in rest if _words(f) & _LABEL_WORDS), "NAME")
        prompt = next((f for f in rest if f != label and _words(f) & _HINT_WORDS["prompt"]), "NAME")
        roles = {"prompt": prompt, "response1": r1, "response2": r2, "label": label}
        return _column_options(roles) + " --label-map VALUE=first,VALUE=second,VALUE=tie"
    picked: dict[str, str] = {}
    for role in ("chosen", "rejected", "prompt"):
        picked[role] = next((f for f in fields if f not in picked.values() and _words(f) & _HINT_WORDS[role]), "NAME")
    return _column_options({role: picked[role] for role in ("prompt", "chosen", "rejected")})


def _column_options(roles: dict[str, str]) -> str:
    return " ".join(f"--column {role}={name}" for role, name in roles.items() if role != name)


def _unknown_shape(row: dict[str, Any]) -> RowError:
    fields = [str(k) for k in row]
    shown = ", ".join(fields[:12]) + (", ..." if len(fields) > 12 else "") if fields else "(none)"
    return RowError(f"unknown row shape: fields {shown}; map them with {column_hint(fields)}")


# ---------------------------------------------------------------------------- one row


@dataclass
class RowResult:
    """What one row became: a pair, an unpaired example waiting for its counterpart, or a
    quarantine reason (with the check it belongs to). ``labels``: the row's judgments."""

    pair: Pair | None = None
    unpaired: Unpaired | None = None
    reason: str | None = None
    check: str = "read"
    labels: list[int] | None = None


def read_row(row: Any, source: str, line: int, columns: Mapping[str, str] | None = None,
             form: str = "auto", labels: LabelReader | None = None) -> RowResult:
    """One raw row -> `RowResult`. ``labels`` reads pairwise labels (and keeps its notes)."""
    labels = labels or LabelReader({})
    try:
        if not isinstance(row, dict):
            raise RowError(f"unknown row shape: a {type(row).__name__}, not an object")
        known = known_format(row) if not columns else None
        row, origin = _apply_columns(row, columns)
        keys = set(row)
        names = next((n for n in _RESPONSE_NAMES if set(n) <= keys), _RESPONSE_NAMES[0])
        if form == "pairwise" or (form == "auto" and set(names) <= keys):
            return _read_pairwise(row, origin, names, known, labels, source, line)
        if form == "auto" and "label" in keys and keys & {"completion", "messages"} and not keys & _PAIR_KEYS:
            return RowResult(unpaired=_unpaired(row))
        for side in ("chosen", "rejected"):
            if side not in keys and f"{side}_messages" in keys:
                row = dict(row)
                row[side] = row.pop(f"{side}_messages")
                keys = set(row)
        if form == "sharegpt" or (form == "auto" and "conversations" in keys):
            conv = _messages(row.get("conversations"), "conversations")
            if "chosen" not in row or "rejected" not in row:
                raise RowError("sharegpt row without chosen/rejected")
            prompt, c, r = _split_shared(row["chosen"], row["rejected"], conv)
            used: tuple[str, ...] = ("conversations", "chosen", "rejected")
        elif "chosen" in keys and "rejected" in keys:
            if "prompt" in keys and form != "implicit":
                prompt, c, r = _split_shared(row["chosen"], row["rejected"], _prompt(row["prompt"]))
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
            if keys & {"chosen", "rejected"}:
                raise RowError(f"missing field {', '.join(missing)}")
            if keys & {"completion", "messages"}:
                raise RowError("one answer without a true/false label: not a preference pair (add chosen and "
                               "rejected, or a label, true = desirable, to pair examples by prompt)")
            raise _unknown_shape(row)
        _check_distinct(c, r)
        return RowResult(pair=Pair(prompt=prompt, chosen=c, rejected=r, source=source, line=line,
                                   meta=_meta(row, used)))
    except RowError as exc:
        return RowResult(reason=str(exc))


def _check_distinct(chosen: str, rejected: str) -> None:
    """Invisible characters must not make two equal answers look different."""
    if differ_only_invisibly(chosen, rejected):
        codes = invisible_codes(chosen + rejected)
        raise RowError(f"degenerate: chosen and rejected differ only in invisible characters ({', '.join(codes)})")


def _read_pairwise(row: dict[str, Any], origin: Mapping[str, str], names: tuple[str, str],
                   known: KnownFormat | None, labels: LabelReader, source: str, line: int) -> RowResult:
    decoded, ann_keys = _pairwise_labels(row, origin, names, known, labels)
    ann = decoded if len(decoded) > 1 else None
    try:
        prompt, a, b = _pairwise_texts(row, names)
    except RowError as exc:
        return RowResult(reason=str(exc), labels=ann)
    winner, agreement = _majority(decoded)
    if winner is None or winner == 0:
        why = "tie" if winner == 0 else "tie (no majority)"
        return RowResult(reason=f"{why}: labels {decoded}", check="label_consistency", labels=ann)
    chosen, rejected = (a, b) if winner == 1 else (b, a)
    try:
        _check_distinct(chosen, rejected)
    except RowError as exc:
        return RowResult(reason=str(exc), labels=ann)
    meta = _meta(row, set(_PAIRWISE_KEYS) | set(ann_keys))
    meta.update(labels=decoded, agreement=round(agreement, 4), chosen_response=winner,
                n_annotators=len(decoded))
    return RowResult(pair=Pair(prompt=prompt, chosen=chosen, rejected=rejected, source=source, line=line,
                               meta=meta), labels=ann)


# ---------------------------------------------------------------------------- files -> pairs


def read_pairs(paths: list[str], format: str = "auto", columns: dict[str, str] | None = None,
               label_map: Mapping[str, str] | str | None = None) -> ReadResult:
    """Read every path (files, folders, ``embedded:NAME``) into pairs and quarantine records.

    ``format`` is ``auto``, a file format (jsonl, json, csv, parquet) or a row form
    (standard, conversational, implicit, sharegpt, pairwise). ``label_map`` says what the
    labels of pairwise files mean (see `prefdesk.labels`). The same pair arriving twice is
    returned twice here; de-duplication is a check (validations), so it is counted.
    """
    if isinstance(paths, (str, Path)):
        paths = [str(paths)]
    fmt = (format or "auto").lower()
    if fmt not in ("auto",) + FILE_FORMATS + ROW_FORMS:
        raise DataError(f"unknown format {format!r}: use auto, {', '.join(FILE_FORMATS + ROW_FORMS)}")
    try:
        label_map = parse_label_map(label_map)
    except ValueError as exc:
        raise DataError(str(exc)) from exc
    file_fmt = fmt if fmt in FILE_FORMATS else "auto"
    form = fmt if fmt in ("implicit", "sharegpt", "pairwise") else "auto"
    out = ReadResult(pairs=[], quarantined=[], rows_in=0)
    for spec in paths:
        for path in resolve(str(spec)):
            _read_file(path, file_fmt, form, columns, label_map, out)
    return out


def _read_file(path: Path, file_fmt: str, form: str, columns: Mapping[str, str] | None,
               label_map: Mapping[str, str], out: ReadResult) -> None:
    data = _raw_bytes(path)
    kind = file_fmt if file_fmt != "auto" else _detect_format(path, data)
    source = str(path)
    labels = LabelReader(label_map)
    unpaired: list[Unpaired] = []
    for line, row, error in _READERS[kind](path, data):
        out.rows_in += 1
        if error is not None:
            out.quarantined.append(Quarantined(source=source, line=line, reason=error, check="read", raw=_raw(row)))
            continue
        res = read_row(row, source, line, columns, form, labels)
        if res.labels:
            out.annotations.append(res.labels)
        if res.unpaired is not None:
            res.unpaired.line, res.unpaired.raw = line, _raw(row)
            unpaired.append(res.unpaired)
        elif res.pair is not None:
            out.pairs.append(res.pair)
        else:
            out.quarantined.append(Quarantined(source=source, line=line, reason=res.reason or "unreadable",
                                               check=res.check, raw=_raw(row)))
    out.notes.extend(labels.notes(source))
    if unpaired:
        pairs, left, note = pair_unpaired(unpaired, source)
        out.rows_in -= len(pairs)  # two rows became one pair
        out.pairs.extend(pairs)
        out.quarantined.extend(left)
        out.notes.append(note)


# ---------------------------------------------------------------------------- prompts


@dataclass
class PromptResult:
    """Prompt-only rows (what sampling optimizers generate from); rows_in == len(prompts) +
    len(quarantined) + duplicates."""

    prompts: list[list[Message]]
    quarantined: list[Quarantined]
    rows_in: int
    duplicates: int = 0


_PROMPT_KEYS = ("prompt", "messages", "conversations", "instruction", "question", "input")


def _prompt_of(row: Any) -> list[Message]:
    """A generation prompt from a prompt row, or from a pair row (its prompt)."""
    if isinstance(row, str):
        return _check_prompt(_prompt(row))
    if not isinstance(row, dict):
        raise RowError(f"a prompt row must be an object or a string, got {type(row).__name__}")
    if any(k in row for k in ("chosen", "rejected", "response1", "output_1")):
        res = read_row(row, "", 0)
        if res.pair is None:
            raise RowError(res.reason or "unreadable pair row")
        return res.pair.prompt
    if "instruction" in row and not _missing(row.get("instruction")):
        text = _text(row["instruction"], "instruction")
        extra = row.get("input")
        return _check_prompt(_prompt(text + ("\n\n" + _text(extra, "input") if not _missing(extra) and str(extra).strip() else "")))
    for key in _PROMPT_KEYS:
        if key in row and not _missing(row[key]):
            prompt = _check_prompt(_prompt(row[key], key))
            while prompt and prompt[-1]["role"] == "assistant":  # a dialogue: generate the next answer
                prompt = prompt[:-1]
            if not prompt or prompt[-1]["role"] != "user":
                raise RowError(f"{key}: the prompt must end with a user turn")
            return prompt
    raise RowError(f"no prompt field: fields {', '.join(sorted(map(str, row))) or 'none'}; "
                   f"expected one of {', '.join(_PROMPT_KEYS)}")


def read_prompts(paths: list[str], format: str = "auto") -> PromptResult:
    """Prompt files (`prompt`, `messages`, `instruction`[+`input`], ... per row) or pair files
    (their prompts), every row accepted or quarantined with file, line and reason; repeated
    prompts are kept once (counted)."""
    fmt = (format or "auto").lower()
    file_fmt = fmt if fmt in FILE_FORMATS else "auto"
    out = PromptResult(prompts=[], quarantined=[], rows_in=0)
    seen: set[str] = set()
    for spec in paths:
        for path in resolve(str(spec)):
            data = _raw_bytes(path)
            kind = file_fmt if file_fmt != "auto" else _detect_format(path, data)
            for line, row, error in _READERS[kind](path, data):
                out.rows_in += 1
                try:
                    if error is not None:
                        raise RowError(error)
                    prompt = _prompt_of(row)
                except RowError as exc:
                    out.quarantined.append(Quarantined(str(path), line, str(exc), check="read", raw=_raw(row)))
                    continue
                key = json.dumps([(m["role"], m["content"].strip()) for m in prompt], ensure_ascii=False)
                if key in seen:
                    out.duplicates += 1
                    continue
                seen.add(key)
                out.prompts.append(prompt)
    return out
