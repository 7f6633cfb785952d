"""`recs`: the command line. `recs run` runs the nightly flow; `recs recommend` and `recs runs` read the warehouse.

The options of `recs run` are generated from `PipelineConfig`'s fields, so each default and description
is written once, in `tasks/config.py`.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path

import duckdb
import polars as pl
from pydantic import ValidationError

import warehouse
from tasks.config import PipelineConfig

_DEFAULTS = PipelineConfig()


def _flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per config field: its type, choices, description and default."""
    for name, field in PipelineConfig.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
            annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
        default = getattr(_DEFAULTS, name)
        help_text = f"{field.description} (default: {default})".replace("%", "%%")
        if annotation is bool:
            parser.add_argument(_flag(name), dest=name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)  # fmt: skip
        elif typing.get_origin(annotation) is typing.Literal:
            parser.add_argument(_flag(name), dest=name, choices=typing.get_args(annotation),
                                default=argparse.SUPPRESS, help=help_text)  # fmt: skip
        else:
            metavar = "PATH" if annotation is Path else annotation.__name__.upper()
            parser.add_argument(_flag(name), dest=name, type=str, metavar=metavar,
                                default=argparse.SUPPRESS, help=help_text)  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recs", description="Nightly MovieLens recommendation pipeline.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="run the nightly flow once: ingest, train, evaluate, publish top-n to DuckDB",
        description="Run the nightly flow once on Prefect's local (ephemeral) API. Options override the defaults shown.",
    )
    _add_config_options(run)

    recommend = commands.add_parser("recommend", help="print one user's published list with titles")
    recommend.add_argument("user_id", type=int, help="the dataset's own user id")
    runs = commands.add_parser("runs", help="print the latest runs with their status and headline metrics")
    for reader in (recommend, runs):
        reader.add_argument("--warehouse", type=Path, default=_DEFAULTS.warehouse, metavar="PATH",
                            help=f"DuckDB file to read (default: {_DEFAULTS.warehouse})")  # fmt: skip
    return parser


def _print_frame(frame: pl.DataFrame) -> None:
    with pl.Config(tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=60, tbl_hide_dataframe_shape=True, tbl_width_chars=160):
        print(frame)


def _run(options: dict) -> int:
    try:
        config = PipelineConfig(**options)
    except ValidationError as exc:
        for error in exc.errors():
            print(f"recs run: {_flag(str(error['loc'][0]))}: {error['msg']} (got {error.get('input')!r})", file=sys.stderr)
        return 2
    from flows.nightly import nightly  # imported here: Prefect's import is slow and `--help` should not wait

    try:
        result = nightly(config)
    except Exception as exc:  # the flow already recorded the failure and logged the traceback
        print(f"recs run: the run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print()
    print(f"run {result.run_id} succeeded: {result.n_recommendations} recommendations published to {config.warehouse}")
    print(f"metrics of {result.model} on the test split:")
    _print_frame(result.metrics)
    stages = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in result.facts["stage_seconds"].items())
    print(f"seconds per stage: {stages}")
    return 0


def _open_read_only(path: Path) -> duckdb.DuckDBPyConnection | None:
    if not path.exists():
        print(f"recs: warehouse {path} does not exist; run `recs run` first", file=sys.stderr)
        return None
    return duckdb.connect(str(path), read_only=True)


def _recommend(user_id: int, path: Path) -> int:
    con = _open_read_only(path)
    if con is None:
        return 1
    with con:
        rows = warehouse.fetch(con, "user_recommendations", {"user_id": user_id})
        if rows.height == 0:
            n_users = con.execute("SELECT count(DISTINCT user_id) FROM recommendations").fetchone()[0]
            print(f"recs: user {user_id} has no published recommendations in {path} ({n_users} users have lists)",
                  file=sys.stderr)  # fmt: skip
            return 1
    print(f"recommendations for user {user_id}:")
    _print_frame(rows.with_columns(pl.col("score").round(3)))
    return 0


def _runs(path: Path) -> int:
    con = _open_read_only(path)
    if con is None:
        return 1
    with con:
        _print_frame(warehouse.fetch(con, "latest_runs"))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `recs` console script; returns the exit status."""
    args = vars(_parser().parse_args(argv))
    command = args.pop("command")
    if command == "run":
        return _run(args)
    if command == "recommend":
        return _recommend(args["user_id"], args["warehouse"])
    return _runs(args["warehouse"])


if __name__ == "__main__":
    sys.exit(main())
