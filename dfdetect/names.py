r"""Names from untrusted places (file and archive member names, dataset columns) as dfdetect shows
them: in a terminal, a table cell or a spreadsheet, a name is text and nothing else.

- `printable`: undecodable bytes (kept by Python as surrogates) and every control character
  (ESC sequences, CR, newline, bidi overrides) become backslash escapes, so a name cannot move the
  cursor, recolour or erase a terminal, or forge a line of output (CWE-150). A backslash in the name
  is doubled, so two names never print alike (the raw byte 0xff is `\xff`, a name spelled
  backslash-x-f-f is `\\xff`): score's table keys inputs by the printed name.
- `csv_cell` / `csv_value`: a text cell that a spreadsheet would run as a formula (it starts with
  = + - @, tab or CR) gets a leading apostrophe, as OWASP recommends (CWE-1236); so does one that
  starts with an apostrophe, which makes the rule reversible: `csv_value` gives the name back.
"""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, and the Unicode bidi embeddings/overrides/isolates.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def _escape(match: re.Match) -> str:
    # \xHH below 0x80 only: \x80-\xff are the undecodable bytes, C1 controls are \u0080-\u009f
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """A name as dfdetect writes and prints it: one line of visible characters, one per name."""
    text = text.replace("\\", "\\\\").encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return _CONTROL.sub(_escape, text)


def terminal_text(text: str) -> str:
    """Text for a terminal: every control character escaped but newline and tab (a message's own
    layout); for text dfdetect composed around names."""
    return _CONTROL.sub(lambda m: m.group() if m.group() in "\n\t" else _escape(m), text)


def one_line(text: str) -> str:
    """Text dfdetect composed around names (a problem's message) on one line: every control
    character escaped, newline and tab included; backslashes kept as they are (not a key)."""
    return _CONTROL.sub(_escape, text)


def csv_cell(value):
    """A value for a CSV cell: text a spreadsheet would run as a formula is prefixed with '."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def csv_value(cell: str) -> str:
    """The value `csv_cell` was given back from its cell."""
    return cell[1:] if cell.startswith("'") else cell


# Characters that end or quote a field of a whitespace/TSV challenge score file (ASVspoof's readers
# split on whitespace, drop what follows '#', and csv reads '"' as a quote), and the leading
# characters a spreadsheet runs as a formula.
_FIELD_BREAKERS = re.compile(r"[\s#\"']")


def field_token(printed: str) -> str:
    """A name as `printable` wrote it (score's rows hold such names), as ONE field of a whitespace-
    or tab-separated line: whitespace, '#', quotes and a formula-starting first character become
    \\xHH escapes too. Still one name per field: `printable` doubled the name's own backslashes, so
    an escape added here never reads like a name's text."""
    text = _FIELD_BREAKERS.sub(_escape, _CONTROL.sub(_escape, printed))
    return _escape(re.match(".", text, re.S)) + text[1:] if text.startswith(FORMULA_START) else text
