"""The DuckDB warehouse's SQL, kept as files: `schema/` (DDL, applied in name order, idempotent) and
`queries/` (named queries the product runs and users can copy)."""

from __future__ import annotations

from importlib import resources


def _read(folder: str, name: str) -> str:
    return resources.files(__package__).joinpath(folder, name).read_text(encoding="utf-8")


def schema_scripts() -> list[str]:
    """The DDL scripts, in the order they are applied."""
    folder = resources.files(__package__).joinpath("schema")
    return [_read("schema", entry.name) for entry in sorted(folder.iterdir(), key=lambda e: e.name) if entry.name.endswith(".sql")]


def query(name: str) -> str:
    """The text of `queries/<name>.sql`."""
    return _read("queries", f"{name}.sql")
