"""Token counts kept on disk: a pair's length under a tokenizer is computed once, ever.

The data desk's length check tokenizes both sides of every pair through the chat template
(`encode`), which is the slowest part of validating a set; with an inbox that grows each
night the same pairs would be tokenized again every night. Here each count is stored under

    $PREFDESK_HOME/cache/tokens/<tokenizer identity>.sqlite   (text key -> token count)

The tokenizer identity hashes what decides the ids: the tokenizer class, its vocabulary
and merges (the backend's serialised form), its special tokens and its chat template, so a
changed tokenizer or template reads another file and is never served stale counts. The text
key hashes the prompt messages and the answer exactly (no stripping: the count is of the
text as given). SQLite because several runs may write at once and a killed run must not
leave a torn file; values are plain integers, nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from pathlib import Path
from typing import Sequence

from prefdesk.config import home
from prefdesk.pairs import Message, Pair

log = logging.getLogger("prefdesk")


def default_root() -> Path:
    return home() / "cache" / "tokens"


def tokenizer_identity(tokenizer) -> str | None:
    """A short hash of everything that decides the token ids `encode` produces; None for a
    tokenizer that cannot say what it is (no serialised backend, no vocabulary): not cached."""
    cached = getattr(tokenizer, "_prefdesk_identity", None)
    if cached:
        return cached
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # fast tokenizers: vocabulary, merges, normalizer, pre-tokenizer
        h.update(backend.to_str().encode())
    elif hasattr(tokenizer, "get_vocab"):
        h.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode())
    else:
        return None
    h.update(json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str).encode())
    h.update(str(getattr(tokenizer, "chat_template", "") or "").encode())
    h.update(str(getattr(tokenizer, "eos_token", "") or "").encode())
    ident = h.hexdigest()[:20]
    try:
        tokenizer._prefdesk_identity = ident  # the vocabulary is large: hash it once per object
    except AttributeError:
        pass
    return ident


def _count(tokenizer, prompt: list[Message], answer: str) -> int:
    """What the desk's length check measures: the whole dialogue, untruncated."""
    from prefdesk.engine.tokenize import encode

    return len(encode(tokenizer, prompt, answer, max_length=10**9).input_ids)


def text_key(prompt: list[Message], answer: str) -> str:
    payload = json.dumps([[(m["role"], m["content"]) for m in prompt], answer], ensure_ascii=False,
                         separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


class TokenCountCache:
    """Token counts of (prompt, answer) under one tokenizer; `hits`/`misses` of the last call."""

    def __init__(self, tokenizer, root: str | Path | None = None):
        self.tokenizer = tokenizer
        identity = tokenizer_identity(tokenizer)
        if identity is None:
            raise ValueError(f"{type(tokenizer).__name__}: a tokenizer without a vocabulary cannot key a cache")
        self.identity = identity
        self.path = Path(root or default_root()) / f"{self.identity}.sqlite"
        self.hits = 0
        self.misses = 0

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=60)
        con.execute("CREATE TABLE IF NOT EXISTS counts (key TEXT PRIMARY KEY, n INTEGER NOT NULL)")
        return con

    def _lookup(self, con: sqlite3.Connection, keys: list[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        step = 900  # SQLite's bound-parameter limit is 999 on older builds
        for i in range(0, len(keys), step):
            chunk = keys[i:i + step]
            q = f"SELECT key, n FROM counts WHERE key IN ({','.join('?' * len(chunk))})"
            found.update(con.execute(q, chunk).fetchall())
        return found

    def counts(self, items: Sequence[tuple[list[Message], str]]) -> list[int]:
        """The full (untruncated) token count of each (prompt, answer), computing only misses."""
        keys = [text_key(p, a) for p, a in items]
        con = self._connect()
        try:
            known = self._lookup(con, sorted(set(keys)))
            todo = {k: i for i, k in enumerate(keys) if k not in known}
            new = {k: _count(self.tokenizer, *items[i]) for k, i in todo.items()}
            if new:
                with con:
                    con.executemany("INSERT OR REPLACE INTO counts (key, n) VALUES (?, ?)", new.items())
        finally:
            con.close()
        known.update(new)
        self.misses = len(todo)
        self.hits = len(set(keys)) - self.misses
        return [known[k] for k in keys]


def pair_token_counts(tokenizer, pairs: Sequence[Pair], root: str | Path | None = None) -> tuple[list[int], list[int]]:
    """(chosen counts, rejected counts): prompt + answer tokens of each side, from the cache."""
    items = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    if tokenizer_identity(tokenizer) is None:
        both = [_count(tokenizer, q, a) for q, a in items]
        return both[: len(pairs)], both[len(pairs):]
    try:
        both = TokenCountCache(tokenizer, root).counts(items)
    except (sqlite3.Error, OSError) as exc:  # a cache is a saving, never a reason to stop the desk
        log.warning("token-count cache not used (%s): counting every pair", exc)
        both = [_count(tokenizer, q, a) for q, a in items]
    return both[: len(pairs)], both[len(pairs):]

