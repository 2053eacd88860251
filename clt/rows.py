"""Row names stored beside rows, and text fields printed as rows: no name can break or shift a row.

A file name may hold any character but "/" and NUL: line breaks (str.splitlines() knows ten characters),
tabs, and bytes that are not UTF-8 (carried in Python as surrogateescape). Names are stored as
JSON lines (one JSON string per line, ASCII only, so every break is escaped) and read back
exactly; TSV fields escape what would split a field or a record.

Example: tsv_field("a\\tb\\nc") == "a\\\\tb\\\\nc"; p.write_text(names_text(names)); read_names(p) == names
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from clt.errors import StoreError

NAMES_FILE = "paths.jsonl"  # one JSON string per row
OLD_NAMES_FILE = "paths.txt"  # before: one name per line, which a name holding a line break shifted

# backslash, every C0 and C1 control and DEL (tab, CR, LF, \v, \f, \x1c-\x1e, \x85 among them), the two
# Unicode line and paragraph separators, and lone surrogates (the bytes of a name that are not UTF-8)
_NEEDS_ESCAPE = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_SHORT = {"\\": "\\\\", "\t": "\\t", "\r": "\\r", "\n": "\\n"}


def _escape(char: str) -> str:
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: one byte of a name that is not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def tsv_field(text: str) -> str:
    """`text` as one TSV field on one line: tab, CR, LF and backslash as \\t \\r \\n \\\\, other control
    and line-break characters as \\uXXXX, bytes that are not UTF-8 as \\xNN; always valid UTF-8.

    Example: tsv_field("a\\u2028b\\\\") == "a\\\\u2028b\\\\\\\\"
    """
    return _NEEDS_ESCAPE.sub(lambda m: _escape(m.group()), text)


def one_line(text: str) -> str:
    """`text` with its line breaks (and other controls but tab) escaped as tsv_field escapes them,
    backslashes kept: a message that quotes a name stays one line on a terminal."""
    return re.sub("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\udc80-\udcff]", lambda m: _escape(m.group()), text)


def names_text(names: list[str]) -> str:
    """The JSON-lines text of row names: ASCII, one line per name, whatever the names hold."""
    return "".join(json.dumps(name, ensure_ascii=True) + "\n" for name in names)


def read_names(path: Path, rows: int | None = None) -> list[str]:
    """Row names from a JSON-lines file (or an old one-per-line paths.txt), checked to be one per
    row when `rows` is given: a name that does not line up with its row is never returned."""
    old = path.name.endswith(".txt")
    names = path.read_text(encoding="utf-8", errors="surrogateescape").splitlines() if old else _parse_lines(path)
    if rows is not None and len(names) != rows:
        cause = " (a name holding a line break, stored by an older clt)" if old else ""
        raise StoreError(f"{path}: {len(names)} names for {rows} rows, so they do not line up{cause}",
                         "embed those images again with this clt, which stores names as paths.jsonl, and index that")
    return names


def _parse_lines(path: Path) -> list[str]:
    lines = path.read_text(encoding="ascii", errors="replace").split("\n")
    if lines[-1] == "":  # the last name's newline
        lines.pop()
    names = []
    for number, line in enumerate(lines, 1):
        try:
            name = json.loads(line)
        except ValueError:
            name = None
        if not isinstance(name, str):
            raise StoreError(f"{path}: line {number} is not a JSON string", "rebuild it with this clt")
        names.append(name)
    return names
