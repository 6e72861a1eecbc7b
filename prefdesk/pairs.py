"""The canonical preference pair, and the quarantine record for rows that could not become one.

Every reader produces these two types and nothing else, so every later stage (checks,
training, evaluation) sees one shape whatever the input format was. The id is a content
hash: the same pair arriving from two files or on two nights is the same pair.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}


def _canon(text: str) -> str:
    return text.strip()


def pair_id(prompt: list[Message], chosen: str, rejected: str) -> str:
    """Stable content hash of (prompt, chosen, rejected); whitespace at the ends is ignored."""
    payload = json.dumps(
        [[(m["role"], _canon(m["content"])) for m in prompt], _canon(chosen), _canon(rejected)],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Pair:
    prompt: list[Message]
    chosen: str
    rejected: str
    source: str = ""
    line: int = 0
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", pair_id(self.prompt, self.chosen, self.rejected))

    @property
    def prompt_text(self) -> str:
        """The last user turn: what a person would call "the prompt"."""
        for m in reversed(self.prompt):
            if m["role"] == "user":
                return m["content"]
        return self.prompt[-1]["content"] if self.prompt else ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Pair":
        return cls(
            prompt=list(d["prompt"]),
            chosen=d["chosen"],
            rejected=d["rejected"],
            source=d.get("source", ""),
            line=int(d.get("line", 0)),
            id=d.get("id", ""),
            meta=dict(d.get("meta") or {}),
        )


@dataclass(frozen=True)
class Quarantined:
    """A row that did not become an accepted pair, with where it came from and why."""

    source: str
    line: int
    reason: str
    check: str = "read"
    raw: str = ""
    id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_pairs_jsonl(pairs: list[Pair], path: str) -> None:
    """Whole or not at all (a full disk leaves the previous file, never half of one)."""
    from prefdesk.atomic import write_text

    write_text(path, "".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in pairs))


def read_pairs_jsonl(path: str) -> list[Pair]:
    """Read pairs this project wrote itself (canonical form); see `readers` for user input."""
    with open(path, encoding="utf-8") as fh:
        return [Pair.from_dict(json.loads(line)) for line in fh if line.strip()]
