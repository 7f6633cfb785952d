"""How a team's delimited text file is written: its separator, whether its first line is a header, its encoding.

DuckDB's CSV sniffer tells whether the first line is a header once it knows the separator; it does not try a
space or `::`, which recommender datasets use (SASRec's `user item` lines, MovieLens's `ratings.dat`), so the
separator is the first of `SEPARATORS` that splits the file's first lines into the same two or more fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

# Tried in this order: `::` before anything it contains, a space last (titles and dates hold spaces).
SEPARATORS = ("::", "\t", "|", ";", ",", " ")
_NAMES = {"::": "'::'", "\t": "tab", "|": "'|'", ";": "';'", ",": "comma", " ": "space"}
_SAMPLE_BYTES = 1 << 16
_SAMPLE_LINES = 200


class DialectError(ValueError):
    """The file's fields cannot be told apart, or it holds no text."""


@dataclass(frozen=True)
class Dialect:
    separator: str
    header: list[str] | None  # the first line's names, or None when the first line is data
    n_columns: int
    encoding: str  # "utf-8" or "latin-1"
    quote: str = '"'  # "" when the file quotes nothing (a lone " is then part of a title)

    @property
    def separator_name(self) -> str:
        return _NAMES[self.separator]


def _sample(path: Path) -> tuple[list[str], str]:
    """The file's first non-blank lines (a line cut by the sample's end left out) and their encoding."""
    with path.open("rb") as file:
        head = file.read(_SAMPLE_BYTES)
        complete = len(head) < _SAMPLE_BYTES
    try:
        text, encoding = head.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError as exc:
        # a multi-byte character cut by the sample's end is still UTF-8; any other bad byte means Latin-1
        text, encoding = (head[: exc.start].decode("utf-8-sig"), "utf-8") if exc.start > len(head) - 4 else ("", "")
        if not encoding:
            text, encoding = head.decode("latin-1"), "latin-1"
    lines = text.splitlines()
    if not complete and lines:
        lines = lines[:-1]
    return [line for line in lines if line.strip()][:_SAMPLE_LINES], encoding


def _fields(line: str, separator: str) -> list[str]:
    return [field.strip().strip('"') for field in line.split(separator)]


def _separator(lines: list[str], name: str) -> str:
    for separator in SEPARATORS:
        counts = {len(line.split(separator)) for line in lines}
        if len(counts) == 1 and counts.pop() >= 2:
            return separator
    shown = lines[0][:120]
    raise DialectError(
        f"{name} line 1: cannot tell how its fields are separated ({shown!r}); expected two or more fields per line "
        "separated by a comma, tab, semicolon, '|', space or '::', the same number on every line"
    )


def _header_and_quote(path: Path, separator: str, lines: list[str]) -> tuple[bool, str]:
    """DuckDB's sniffer's answer (whether the first line is a header, the quote character); where it cannot read
    the file, whether the first line has a field that is not a number in a column whose next lines are numbers,
    and the double quote."""
    try:
        with duckdb.connect() as con:
            found = con.execute(
                "SELECT HasHeader, Quote FROM sniff_csv(?, delim = ?, ignore_errors = true, null_padding = true, "
                "compression = 'none')",
                [str(path), separator],
            ).fetchone()
        if found is not None:
            return bool(found[0]), "" if found[1] in (None, "(empty)", "") else str(found[1])
    except duckdb.Error:
        pass
    first, rest = _fields(lines[0], separator), [_fields(line, separator) for line in lines[1:]]
    numeric = [bool(rest) and all(_is_number(row[i]) for row in rest if i < len(row)) for i in range(len(first))]
    header = any(is_numeric and not _is_number(field) for field, is_numeric in zip(first, numeric, strict=False))
    return header, '"'


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def sniff(path: Path, name: str) -> Dialect:
    """The dialect of the delimited text file at `path` (`name` is how messages call it).

    Raises:
        DialectError: an empty file, or no separator that splits its first lines alike.
    """
    lines, encoding = _sample(path)
    if not lines:
        raise DialectError(f"{name}: is empty, expected lines of interactions (user, item, ...)")
    separator = _separator(lines, name)
    has_header, quote = _header_and_quote(path, separator, lines)
    header = _fields(lines[0], separator) if has_header else None
    return Dialect(separator, header, len(lines[0].split(separator)), encoding, quote)
