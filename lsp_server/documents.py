"""Cursor arithmetic on document text: positions to offsets, prefix and suffix.

pygls' own ``offset_at_position`` re-splits the whole document on every call, treats
form feeds and other Unicode separators as line breaks (LSP only knows ``\\n``, ``\\r\\n``
and ``\\r``) and mutates out-of-range positions.  Completion runs on every keystroke,
possibly in 10 MB files, so the conversion lives here, done once and per the spec.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_WORD_TAIL = re.compile(r"[A-Za-z0-9_$]*$")

UTF8 = "utf-8"
UTF16 = "utf-16"
UTF32 = "utf-32"


def _units(char: str, encoding: str) -> int:
    """Code units of one code point in the negotiated position encoding."""
    code = ord(char)
    if encoding == UTF8:
        return 1 if code < 0x80 else 2 if code < 0x800 else 3 if code < 0x10000 else 4
    if encoding == UTF16:
        return 2 if code > 0xFFFF else 1
    return 1


def line_start(source: str, line: int) -> int | None:
    """Offset of the first character of ``line`` (0-based), or None past the end."""
    if line < 0:
        return None
    if line == 0:
        return 0
    for count, match in enumerate(_LINE_BREAK.finditer(source), start=1):
        if count == line:
            return match.end()
    return None


def line_end(source: str, start: int) -> int:
    """Offset of the line break (or end of text) of the line starting at ``start``."""
    match = _LINE_BREAK.search(source, start)
    return match.start() if match else len(source)


def column_to_offset(text: str, character: int, encoding: str) -> int:
    """Code points in ``text`` before ``character`` code units; clamped to the line.

    A position inside a multi-unit character (half a surrogate pair) rounds down to the
    start of that character, so the prefix never holds half a character.
    """
    if encoding == UTF32:
        return min(character, len(text))
    units = 0
    for index, char in enumerate(text):
        width = _units(char, encoding)
        if units + width > character:
            return index
        units += width
    return len(text)


def cursor_offset(source: str, line: int, character: int, encoding: str = UTF16) -> int | None:
    """Offset of an LSP position in ``source``; None when the line does not exist.

    Per the LSP spec a ``character`` past the end of its line means the end of the line.
    """
    if character < 0:
        return None
    start = line_start(source, line)
    if start is None:
        return None
    end = line_end(source, start)
    return start + column_to_offset(source[start:end], character, encoding)


@dataclass(frozen=True)
class Cursor:
    """The document split at the cursor, plus the word being typed there."""

    prefix: str
    suffix: str
    word: str
    """Identifier characters just before the cursor (used by the completion-list fallback)."""


def split_at(source: str, line: int, character: int, encoding: str = UTF16) -> Cursor | None:
    offset = cursor_offset(source, line, character, encoding)
    if offset is None:
        return None
    prefix = source[:offset]
    line_text = prefix[prefix.rfind("\n") + 1 :]
    word = _WORD_TAIL.search(line_text)
    return Cursor(prefix=prefix, suffix=source[offset:], word=word.group(0) if word else "")


def looks_binary(text: str, probe: int = 8192) -> bool:
    """A NUL in the first bytes marks a binary file decoded as text; never complete those."""
    return "\x00" in text[:probe]
