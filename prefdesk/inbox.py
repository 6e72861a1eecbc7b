"""The inbox: new pair files arrive in a folder, each night keeps what is new.

A team drops pair files into `data.inbox`; the desk never retrains from a file list that
someone has to edit. Each night (`ingest_night`):

1. lists the inbox and skips every file whose sha256 is already in the manifest (a file
   is read once, whatever its name; a renamed copy is not read again either);
2. reads the new files (every format `prefdesk.readers` knows);
3. keeps each pair whose content-hash id (`prefdesk.pairs.pair_id`) is not held yet, and
   quarantines the rest with a reason: unreadable rows (the reader's reason) and
   duplicates (of a held pair, naming the night and file it came from, or of an earlier
   row tonight); a file that cannot be read at all is one quarantine record (line 0).
   Nothing is dropped: rows read == new + duplicates + unreadable;
4. appends the new pairs to the held store and the files to the manifest, then writes
   tonight's training window (all held pairs, or the last N pairs / last K nights).

The held store lives in `data.held` or `$PREFDESK_HOME/held/<hash of the inbox path>`:

    manifest.json    sha256 -> {path, bytes, night, rows_in, new, duplicates, unreadable}
    pairs.jsonl      one held pair a line, in arrival order, as a TRL row (prompt messages,
                     chosen, rejected, the reader's meta) plus `prefdesk: {id, night, origin}`
    nights.jsonl     one record a night: what arrived and what the window was
    quarantine.jsonl every row refused at ingest, with file, line and reason

The pairs are written before the manifest names their file, each file atomically: a
night killed in between reads the file again next time and finds its pairs held (counted
as duplicates), so a kill never loses a pair nor holds one twice. Files whose name starts
with a dot are not read: write a file under a dot-name and rename it when complete, so a
night never ingests half an upload. This module knows
nothing of Prefect or the data desk: the window it writes is an ordinary pair file the
desk validates like any other.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from prefdesk.atomic import file_lock, write_json, write_text
from prefdesk.config import DataSettings, home
from prefdesk.pairs import Pair, Quarantined
from prefdesk.readers import DataError, ReadResult, read_pairs, resolve

WINDOW_FILE = "window.jsonl"


class InboxError(ValueError):
    """The inbox or the held store cannot be used; the message names the setting or file."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def version_hash(ids: Iterable[str]) -> str:
    """The identity of a set of pairs (order-free): what a dataset version is."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


def held_dir(settings: DataSettings) -> Path:
    if settings.held:
        return Path(settings.held).resolve()
    if not settings.inbox:
        raise InboxError("data.inbox is not set: there is no held store")
    key = hashlib.sha256(str(Path(settings.inbox).resolve()).encode()).hexdigest()[:12]
    return home() / "held" / key


@dataclass
class Night:
    """What one night's ingest did, and the window it trains on."""

    night: int
    inbox: str
    held_dir: str
    files_new: list[dict[str, Any]]
    files_seen: list[str]  # in the inbox, read on an earlier night (same sha256)
    rows_in: int
    pairs_new: int
    duplicates: int
    unreadable: int
    pairs_held: int
    window_pairs: int
    window_hash: str
    window_path: str
    quarantine_path: str
    started: float = field(default_factory=time.time)

    @property
    def quarantined(self) -> int:
        return self.duplicates + self.unreadable

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def says(self) -> str:
        """One line for the log and the summary."""
        if not self.pairs_new:
            seen = f"{len(self.files_seen)} file(s) already ingested" if self.files_seen else "no files"
            return (f"night {self.night}: no new pairs in the inbox {self.inbox} ({len(self.files_new)} new file(s), "
                    f"{seen}; {self.duplicates} duplicate and {self.unreadable} unreadable rows); "
                    f"{self.pairs_held} pairs held")
        return (f"night {self.night}: {self.pairs_new} new pairs from {len(self.files_new)} file(s) "
                f"({self.duplicates} duplicates and {self.unreadable} unreadable rows quarantined); "
                f"{self.pairs_held} pairs held, window {self.window_pairs} (version {self.window_hash})")


def _row(pair: Pair, night: int) -> dict[str, Any]:
    """A held pair as a pair-file row that reads back to the same pair (same id, same meta)."""
    row = {k: v for k, v in pair.meta.items() if k != "prefdesk"}
    row.update(prompt=pair.prompt, chosen=pair.chosen, rejected=pair.rejected,
               prefdesk={"id": pair.id, "night": night, "origin": f"{pair.source}:{pair.line}"})
    return row


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InboxError(f"{path}:{n}: the held store is damaged ({exc.msg})") from None
    return out


def _append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Whole file rewritten atomically: a kill leaves the old file or the new one."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    write_text(path, old + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def select_window(rows: list[dict[str, Any]], night: int, settings: DataSettings) -> list[dict[str, Any]]:
    """The held rows tonight trains on: the last K nights, then the last N pairs (arrival order)."""
    if settings.window_nights:
        first = night - settings.window_nights + 1
        rows = [r for r in rows if r["prefdesk"]["night"] >= first]
    if settings.window_pairs:
        rows = rows[-settings.window_pairs:]
    return rows


def ingest_night(settings: DataSettings, out_dir: str | Path, run: str = "") -> Night:
    """Ingest what arrived in `settings.inbox`; write the window and tonight's quarantine to out_dir."""
    if not settings.inbox:
        raise InboxError("data.inbox is not set")
    inbox = Path(settings.inbox)
    if not inbox.is_dir():
        raise InboxError(f"data.inbox: {inbox} is not a folder")
    store = held_dir(settings)
    store.mkdir(parents=True, exist_ok=True)
    with file_lock(store / ".lock"):  # one night at a time (two would both take the same files)
        return _ingest(settings, inbox, store, Path(out_dir), run)




def _ingest(settings: DataSettings, inbox: Path, store: Path, out: Path, run: str) -> Night:
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = store / "manifest.json"
    try:
        manifest: dict[str, Any] = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    except json.JSONDecodeError as exc:
        raise InboxError(f"{manifest_path}: the manifest is damaged ({exc.msg})") from None
    held_rows = _read_jsonl(store / "pairs.jsonl")
    nights = _read_jsonl(store / "nights.jsonl")
    night = (nights[-1]["night"] if nights else 0) + 1
    held = {r["prefdesk"]["id"]: r["prefdesk"] for r in held_rows}

    files_new: list[dict[str, Any]] = []
    files_seen: list[str] = []
    new_rows: list[dict[str, Any]] = []
    quarantined: list[Quarantined] = []
    tonight: dict[str, str] = {}
    rows_in = 0
    for path in resolve(str(inbox)):
        digest = sha256_of(path)
        if digest in manifest or any(f["sha256"] == digest for f in files_new):
            files_seen.append(str(path))
            continue
        try:
            res = read_pairs([str(path)], settings.format, settings.columns or None,
                             label_map=settings.label_map or None)
        except DataError as exc:  # the whole file is unreadable: one quarantine record, the night goes on
            res = ReadResult(pairs=[], rows_in=1, quarantined=[
                Quarantined(source=str(path), line=0, reason=f"file not read: {exc}", check="read")])
        dups = 0
        for p in res.pairs:
            where = held.get(p.id)
            if where is not None or p.id in tonight:
                why = (f"duplicate of held pair {p.id} (night {where['night']}, {where['origin']})"
                       if where is not None else f"duplicate of pair {p.id} (tonight, {tonight[p.id]})")
                quarantined.append(Quarantined(source=p.source, line=p.line, reason=why, check="duplicates",
                                               raw=json.dumps({"prompt": p.prompt, "chosen": p.chosen,
                                                               "rejected": p.rejected}, ensure_ascii=False)[:500],
                                               id=p.id))
                dups += 1
                continue
            tonight[p.id] = f"{p.source}:{p.line}"
            new_rows.append(_row(p, night))
        quarantined.extend(res.quarantined)
        rows_in += res.rows_in
        files_new.append({"path": str(path), "sha256": digest, "bytes": path.stat().st_size, "night": night,
                          "run": run, "rows_in": res.rows_in, "new": len(res.pairs) - dups, "duplicates": dups,
                          "unreadable": len(res.quarantined)})
    duplicates = sum(f["duplicates"] for f in files_new)
    unreadable = sum(f["unreadable"] for f in files_new)
    if rows_in != len(new_rows) + duplicates + unreadable:  # an accounting bug must not pass silently
        raise RuntimeError(f"ingest lost rows: {rows_in} read, {len(new_rows)} new, {duplicates} duplicates, "
                           f"{unreadable} unreadable")

    q_rows = [q.to_dict() | {"night": night} for q in sorted(quarantined, key=lambda q: (q.source, q.line))]
    quarantine_path = out / "ingest_quarantine.jsonl"
    write_text(quarantine_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in q_rows))
    # Pairs first, then the manifest that says their files are done (see the module docstring).
    if new_rows:
        _append_jsonl(store / "pairs.jsonl", new_rows)
    if q_rows:
        _append_jsonl(store / "quarantine.jsonl", q_rows)
    for f in files_new:
        manifest[f["sha256"]] = {k: v for k, v in f.items() if k != "sha256"}
    write_json(manifest_path, manifest)

    all_rows = held_rows + new_rows
    window = select_window(all_rows, night, settings)
    window_path = out / WINDOW_FILE
    write_text(window_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in window))
    result = Night(
        night=night, inbox=str(inbox), held_dir=str(store), files_new=files_new, files_seen=files_seen,
        rows_in=rows_in, pairs_new=len(new_rows), duplicates=duplicates, unreadable=unreadable,
        pairs_held=len(all_rows), window_pairs=len(window),
        window_hash=version_hash(r["prefdesk"]["id"] for r in window),
        window_path=str(window_path), quarantine_path=str(quarantine_path))
    _append_jsonl(store / "nights.jsonl", [{k: v for k, v in result.to_dict().items() if k != "files_new"}
                                           | {"files_new": [f["path"] for f in files_new]}])
    return result
