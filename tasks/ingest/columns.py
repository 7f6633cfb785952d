"""Which column of a team's interactions file is the user, the item, the rating, the weight and the time.

A header's names are matched to roles case-insensitively, ignoring `_`, `-`, `.` and spaces (`User_ID`, `userId`
and `user id` are all `userid`: `normal_name`), against the aliases below; an `...id` column left over once the user is known
is the item (`Anime_ID`, `artistID`). A file without a header takes its columns by position: user, item, rating,
timestamp, as MovieLens's `u.data` and `ratings.dat` have them. A setting names a role's column where neither
works: a header name or a 1-based position (`--user-column`, `--item-column`, ...).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

ROLES = ("user", "item", "rating", "weight", "timestamp")
REQUIRED = ("user", "item")
# Each role's names, compared in `normal_name` form; the first match in the header wins only if it is the only one.
ALIASES: Mapping[str, tuple[str, ...]] = {
    "user": ("user", "userid", "users", "visitorid", "visitor", "customer", "customerid", "member", "memberid"),
    "item": ("item", "itemid", "items", "movieid", "movie", "artistid", "artist", "product", "productid", "sku"),
    "rating": ("rating", "ratings", "score", "stars", "feedback"),
    "weight": ("weight", "count", "plays", "playcount", "hours", "quantity", "qty"),
    "timestamp": ("timestamp", "time", "date", "ts", "datetime", "eventtime"),
}
# Where a header-less file keeps each role.
POSITIONS = {"user": 0, "item": 1, "rating": 2, "timestamp": 3}


class ColumnError(ValueError):
    """The file's columns cannot be given their roles: the message names what was found and the setting to use."""


def normal_name(name: str) -> str:
    """A column name as it is compared: lower case, without blanks, quotes, `_`, `-` or `.`."""
    return re.sub(r"[\s_.\-]", "", name.strip().strip('"').lower())


def _flag(role: str) -> str:
    return f"{role}_column (--{role}-column)"


def _given_index(role: str, given: str | int, header: Sequence[str] | None, n_columns: int) -> int:
    """The 0-based index a setting names: a 1-based position, or a header name (case-insensitive)."""
    if isinstance(given, int) or str(given).isdigit():
        position = int(given)
        if not 1 <= position <= n_columns:
            raise ColumnError(f"{_flag(role)} is {position}, but the file has {n_columns} columns")
        return position - 1
    names = [normal_name(name) for name in header or ()]
    if normal_name(str(given)) not in names:
        found = ",".join(header) if header else "no header"
        raise ColumnError(f"{_flag(role)} is {given!r}, which is not a column of the file (header: {found})")
    return names.index(normal_name(str(given)))


def _by_alias(role: str, names: list[str], taken: set[int], header: Sequence[str]) -> int | None:
    matches = [i for i, name in enumerate(names) if name in ALIASES[role] and i not in taken]
    if role == "item" and not matches:  # the `...id` column left once the user has its own
        matches = [i for i, name in enumerate(names) if name.endswith("id") and i not in taken]
    if len(matches) > 1:
        both = " and ".join(repr(header[i]) for i in matches)
        raise ColumnError(f"header {','.join(header)}: {both} could each be the {role}; name one with {_flag(role)}")
    return matches[0] if matches else None


def resolve_columns(
    header: Sequence[str] | None, n_columns: int, given: Mapping[str, str | int | None] | None = None
) -> dict[str, int]:
    """Each role the file has, with its column's 0-based index: user and item always, rating, weight and timestamp
    when present.

    Args:
        header: the file's column names, or None for a file without a header.
        n_columns: how many columns each row has.
        given: settings naming a role's column (a header name or a 1-based position); None or missing for the
            roles to find by name or position.

    Raises:
        ColumnError: a required role not found, a role two columns could play, a setting that names no column,
            two roles on one column; the message shows the header (or says there is none) and the setting to use.
    """
    named: dict[str, str | int] = {role: value for role, value in (given or {}).items() if value is not None}
    unknown = sorted(set(named) - set(ROLES))
    if unknown:
        raise ColumnError(f"no such role {', '.join(unknown)}; the roles are {', '.join(ROLES)}")
    chosen = {role: _given_index(role, value, header, n_columns) for role, value in named.items()}
    names = [normal_name(name) for name in header] if header is not None else None
    for role in ROLES:
        if role in chosen:
            continue
        if names is None:
            index = POSITIONS.get(role)
            free = index is not None and index < n_columns and index not in chosen.values()
            found = index if free else None
        else:
            found = _by_alias(role, names, set(chosen.values()), header or ())
        if found is not None:
            chosen[role] = found
    _check(chosen, header, n_columns)
    return {role: chosen[role] for role in ROLES if role in chosen}


def _check(chosen: dict[str, int], header: Sequence[str] | None, n_columns: int) -> None:
    columns = f"{n_columns} column" + ("" if n_columns == 1 else "s")
    described = f"header {','.join(header)}" if header is not None else f"no header, {columns}"
    for role in REQUIRED:
        if role not in chosen:
            expected = "/".join(ALIASES[role][:4])
            raise ColumnError(f"{described}: no {role} column (a name such as {expected}); name it with {_flag(role)}")
    by_column: dict[int, list[str]] = {}
    for role, index in chosen.items():
        by_column.setdefault(index, []).append(role)
    for index, roles in by_column.items():
        if len(roles) > 1:
            column = repr(header[index]) if header is not None else f"column {index + 1}"
            raise ColumnError(f"{described}: {column} is given two roles, {' and '.join(roles)}")
