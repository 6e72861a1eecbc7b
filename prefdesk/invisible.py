"""Characters that take no room on screen, and the test "is there anything to read here?".

A prompt of one zero-width space passes ``text.strip()`` and looks filled to every check
that trusts it. The readers keep such characters inside real text (they are sometimes
meaningful: joiners in emoji and Indic scripts, soft hyphens) but never count them as
content: a field made only of them is empty.
"""

from __future__ import annotations

import re

# Unicode 14 format (Cf) and control (Cc) characters except whitespace and the visible
# prepended concatenation marks (U+0600-0605, 06DD, 070F, 0890-0891, 08E2, 110BD, 110CD),
# plus variation selectors and blank fillers (combining grapheme joiner, Hangul fillers,
# Khmer inherent vowels, Mongolian variation selectors, braille blank).
# tests/test_readers.py checks this class against `unicodedata`.
_RANGES = (
    (0x0000, 0x0008), (0x000E, 0x001B), (0x007F, 0x0084), (0x0086, 0x009F), (0x00AD, 0x00AD),
    (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F),
    (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x2064), (0x2066, 0x206F), (0x2800, 0x2800),
    (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF9, 0xFFFB),
    (0x13430, 0x13438), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0001, 0xE0001),
    (0xE0020, 0xE007F), (0xE0100, 0xE01EF),
)
INVISIBLE = re.compile("[" + "".join(
    re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in _RANGES) + "]")


def strip_invisible(text: str) -> str:
    """The text without its invisible characters (whitespace kept)."""
    return INVISIBLE.sub("", text)


def is_blank(text: str) -> bool:
    """True when nothing visible is left once invisible characters and whitespace go."""
    head = text.lstrip()
    if not head:
        return True
    if not INVISIBLE.match(head):  # the usual case, decided by one character
        return False
    return not strip_invisible(text).strip()


def differ_only_invisibly(a: str, b: str) -> bool:
    """True when two different texts are the same once invisible characters go."""
    if a == b:
        return False
    i = common_prefix_length(a, b)
    rest_a, rest_b = a[i:], b[i:]
    # The first differing characters: if both are visible, the texts differ visibly there.
    if rest_a and rest_b and not INVISIBLE.match(rest_a) and not INVISIBLE.match(rest_b):
        return False
    return strip_invisible(rest_a) == strip_invisible(rest_b)


def invisible_codes(text: str, limit: int = 4) -> list[str]:
    """The distinct invisible characters of a text (ASCII spaces aside), as ``U+200B``."""
    seen = sorted({ch for ch in text if ch not in " \t\n\r" and (ch.isspace() or INVISIBLE.match(ch))})
    return [f"U+{ord(ch):04X}" for ch in seen[:limit]] + (["..."] if len(seen) > limit else [])


def blank_reason(what: str, text: str) -> str:
    """``empty prompt`` or, when something was there, ``empty prompt: only invisible
    characters (U+200B)``."""
    codes = invisible_codes(text)
    return f"empty {what}: only invisible characters ({', '.join(codes)})" if codes else f"empty {what}"


def common_prefix_length(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    # Compare in blocks first: dialogues and near-identical answers share long prefixes.
    step = 256
    while i + step <= n and a[i:i + step] == b[i:i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i
