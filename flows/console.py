"""How the command line prints query results: plain columns that fit the terminal, or CSV, or JSON."""

from __future__ import annotations

import json
import shutil
from datetime import date, datetime

import polars as pl

# Narrowest a column is cut to when a table must fit the terminal; before that, columns are cut to _READABLE
# and the ones a table names as droppable are left out.
_MIN_COLUMN = 8
_READABLE = 24
# Columns never cut: ids are for copying into the next command or query.
_WHOLE = {"run_id", "flow_run_id", "user_id", "item_id"}
# Most decimals a number is shown with.
_DECIMALS = 4


def terminal_width() -> int:
    """The terminal's width; 120 when the output is not a terminal (a pipe, a file, a test)."""
    return shutil.get_terminal_size(fallback=(120, 24)).columns


def _decimals(values: list[object]) -> int:
    """Decimals that show every float of a column (at most _DECIMALS), so a column's numbers line up."""
    shown = [f"{value:.{_DECIMALS}f}".rstrip("0") for value in values if isinstance(value, float)]
    return max((len(text.partition(".")[2]) for text in shown), default=0)


def _cell(value: object, decimals: int) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{decimals}f}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def _total(widths: list[int]) -> int:
    return sum(widths) + 2 * (len(widths) - 1)


def _widths(header: list[str], rows: list[list[str]]) -> list[int]:
    """Each column's width: its widest cell or its name."""
    return [max([len(name), *(len(row[i]) for row in rows)]) for i, name in enumerate(header)]


def _cut_widest(widths: list[int], header: list[str], width: int, floor: int) -> None:
    """Narrow the widest column that is not an id, a character at a time, until the line fits `width` or every
    such column is down to `floor`."""
    cuttable = [i for i, name in enumerate(header) if name not in _WHOLE]
    while cuttable and _total(widths) > width:
        widest = max(cuttable, key=widths.__getitem__)
        if widths[widest] <= floor:
            return
        widths[widest] -= 1


def text_table(frame: pl.DataFrame, width: int | None = None, drop_order: tuple[str, ...] = ()) -> str:
    """The frame as left-aligned columns two spaces apart, each float column with the decimals its values
    need (at most 4). None prints every cell whole; with a `width` every line fits it: the widest columns are
    cut (ending in `…`) to _READABLE characters, then the columns of `drop_order` are left out, in that order,
    until the rest fit, then the widest are cut to _MIN_COLUMN; ids are never cut, and a line still too wide
    (ids alone wider than the terminal) is cut at its edge."""
    header = frame.columns
    decimals = [_decimals(frame[name].to_list()) for name in header]
    rows = [[_cell(value, decimals[i]) for i, value in enumerate(row)] for row in frame.iter_rows()]
    widths = _widths(header, rows)
    if width is not None:
        _cut_widest(widths, header, width, _READABLE)
        for name in drop_order:
            if _total(widths) <= width:
                break
            if name in header:
                gone = header.index(name)
                del header[gone]
                for row in rows:
                    del row[gone]
                widths = _widths(header, rows)
                _cut_widest(widths, header, width, _READABLE)
        _cut_widest(widths, header, width, _MIN_COLUMN)

    def line(cells: list[str]) -> str:
        cut = [cell if len(cell) <= w else cell[: w - 1] + "…" for cell, w in zip(cells, widths, strict=False)]
        text = "  ".join(cell.ljust(w) for cell, w in zip(cut, widths, strict=False)).rstrip()
        return text if width is None or len(text) <= width else text[: width - 1] + "…"

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def as_json(frame: pl.DataFrame) -> str:
    """The rows as a JSON array of objects; times in ISO 8601."""
    return json.dumps(
        frame.to_dicts(), default=lambda value: value.isoformat() if isinstance(value, date) else str(value), indent=1
    )


def show(frame: pl.DataFrame, output: str = "table", wide: bool = False, drop_order: tuple[str, ...] = ()) -> None:
    """Print the frame: `table` (fitted to the terminal unless `wide`, see `text_table`), `csv` or `json`."""
    if output == "csv":
        lists = [name for name, dtype in frame.schema.items() if isinstance(dtype, pl.List)]
        flat = frame.with_columns(
            pl.col(name).list.eval(pl.element().cast(pl.String)).list.join(", ") for name in lists
        )
        print(flat.write_csv(), end="")
    elif output == "json":
        print(as_json(frame))
    else:
        print(text_table(frame, None if wide else terminal_width(), drop_order))
