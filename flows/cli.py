"""`recs`: the command line.

`recs run` runs the nightly flow once, `recs backfill` replays it over past dates, `recs serve` serves the
deployments of deploy/prefect.yaml; `recs recommend`, `recs runs` and `recs trend` read the warehouse;
`recs synth` writes a synthetic MovieLens archive for scale tests.

The options of `recs run` are generated from `PipelineConfig`'s fields, so each default and description
is written once, in `tasks/config.py`.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from datetime import date
from pathlib import Path

import duckdb
import polars as pl
from pydantic import BaseModel, ValidationError

import warehouse
from tasks.config import PipelineConfig, redact
from tasks.synth import SynthSpec

_DEFAULTS = PipelineConfig()


def _flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _option_type(annotation: object) -> object:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    return annotation


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per config field (per field of a model's own group: `--mlp-epochs`): type, choices, description
    and default. Lists are comma-separated (`--models ease,bpr`)."""
    for name, field in PipelineConfig.model_fields.items():
        annotation = _option_type(field.annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            group = getattr(_DEFAULTS, name)
            for sub, sub_field in annotation.model_fields.items():
                _add_option(parser, f"{name}.{sub}", _option_type(sub_field.annotation), sub_field.description,
                            getattr(group, sub))  # fmt: skip
        else:
            _add_option(parser, name, annotation, field.description, getattr(_DEFAULTS, name))


def _add_option(parser: argparse.ArgumentParser, dest: str, annotation: object, description: str | None,
                default: object) -> None:  # fmt: skip
    flag = _flag(dest.replace(".", "_"))
    help_text = f"{description} (default: {default})".replace("%", "%%")
    if annotation is bool:
        parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                            help=help_text)  # fmt: skip
    elif typing.get_origin(annotation) is typing.Literal:
        parser.add_argument(flag, dest=dest, choices=typing.get_args(annotation), default=argparse.SUPPRESS, help=help_text)
    elif typing.get_origin(annotation) is list:
        parser.add_argument(flag, dest=dest, type=lambda text: [part.strip() for part in text.split(",") if part.strip()],
                            metavar="A,B", default=argparse.SUPPRESS, help=help_text)  # fmt: skip
    else:
        metavar = "PATH" if annotation is Path else getattr(annotation, "__name__", "VALUE").upper()
        parser.add_argument(flag, dest=dest, type=str, metavar=metavar, default=argparse.SUPPRESS, help=help_text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recs", description="Nightly MovieLens recommendation pipeline.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="run the nightly flow once: ingest, train, evaluate, publish top-n to DuckDB",
        description="Run the nightly flow once on Prefect's local (ephemeral) API. Options override the defaults shown.",
    )
    _add_config_options(run)

    backfill = commands.add_parser(
        "backfill",
        help="replay the nightly flow at past dates (as_of), oldest first, then print the trend",
        description="Run the nightly flow once per date from --start to --end, each on the ratings up to the end "
        "of that day (UTC), with a temporal split unless --split says otherwise. Other options as for `recs run`.",
    )
    backfill.add_argument("--start", type=date.fromisoformat, required=True, metavar="DATE", help="first date, YYYY-MM-DD")
    backfill.add_argument("--end", type=date.fromisoformat, required=True, metavar="DATE", help="last date, YYYY-MM-DD")
    backfill.add_argument("--every", default="14d", help="step between dates: days (14d) or weeks (2w); default 14d")
    _add_config_options(backfill)

    serve = commands.add_parser(
        "serve",
        help="serve the nightly and refresh deployments from this process, schedules and trigger included",
        description="Serve the deployments of deploy/prefect.yaml (nightly at 03:00 UTC, refresh, the "
        "recs.ratings.updated trigger) from this process until interrupted; needs a Prefect API "
        "(`prefect server start` or Prefect Cloud).",
    )
    serve.add_argument("--with-training", action="store_true",
                       help="also serve the training deployment (train/gpu) that config.train_deployment can name")  # fmt: skip

    synth = commands.add_parser(
        "synth",
        help="write a synthetic MovieLens archive in the ml-20m layout (for scale tests)",
        description="Write ratings.csv and movies.csv in the ml-20m layout: heavy-tailed user activity (at least "
        "20 ratings each) and item popularity, latent-factor ratings on the half-star scale with ML-20M's "
        "histogram, timestamps over 1995-2015. The same arguments give the same archive.",
    )
    spec = SynthSpec()
    synth.add_argument("--users", type=int, default=spec.users, help=f"users (default: {spec.users})")
    synth.add_argument("--items", type=int, default=spec.items, help=f"movies (default: {spec.items})")
    synth.add_argument("--ratings", type=int, default=spec.ratings, help=f"ratings (default: {spec.ratings})")
    synth.add_argument("--seed", type=int, default=spec.seed, help=f"random seed (default: {spec.seed})")
    synth.add_argument("--out", type=Path, required=True, metavar="FILE.zip", help="archive to write")

    recommend = commands.add_parser("recommend", help="print one user's published list with titles")
    recommend.add_argument("user_id", type=int, help="the dataset's own user id")
    runs = commands.add_parser("runs", help="print the latest runs with their status and headline metrics")
    trend = commands.add_parser(
        "trend",
        help="print each run's headline metrics with deltas, and write a PNG chart of them",
        description="The metric series of the newest run's source, protocol and model: each run's value, its "
        "delta from the run before and from the median of the last N published runs.",
    )
    trend.add_argument("--runs", type=int, default=_DEFAULTS.trend_runs, metavar="N",
                       help=f"median over the last N published runs (default: {_DEFAULTS.trend_runs})")  # fmt: skip
    trend.add_argument("--chart", type=Path, default=None, metavar="PNG",
                       help="where to write the chart (default: trend.png beside the warehouse)")  # fmt: skip
    for reader in (recommend, runs, trend):
        reader.add_argument("--warehouse", type=Path, default=_DEFAULTS.warehouse, metavar="PATH",
                            help=f"DuckDB file to read (default: {_DEFAULTS.warehouse})")  # fmt: skip
    return parser


def _print_frame(frame: pl.DataFrame) -> None:
    with pl.Config(tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=60, tbl_hide_dataframe_shape=True, tbl_width_chars=160):
        print(frame)


# Exit statuses of `recs run`: 0 published, 1 failed, 2 bad option, 3 rejected by the quality gate.
EXIT_REJECTED = 3


def _nested(options: dict) -> dict:
    """`{"mlp.epochs": 3}` -> `{"mlp": {"epochs": 3}}` (the config's model groups)."""
    out: dict = {}
    for key, value in options.items():
        group, _, field = key.rpartition(".")
        (out.setdefault(group, {}) if group else out)[field] = value
    return out


def _config(command: str, options: dict) -> PipelineConfig | None:
    try:
        return PipelineConfig(**_nested(options))
    except ValidationError as exc:
        for error in exc.errors():
            where = _flag("_".join(str(part) for part in error["loc"][:2])) if error["loc"] else "options"
            given = error.get("input")
            shown = redact(given) if error["loc"] == ("source",) and isinstance(given, str) else given
            print(f"recs {command}: {where}: {error['msg']} (got {shown!r})", file=sys.stderr)
        return None


def _run(options: dict) -> int:
    config = _config("run", options)
    if config is None:
        return 2
    from flows.nightly import nightly  # imported here: Prefect's import is slow and `--help` should not wait

    try:
        result = nightly(config, return_state=True).result()
    except Exception as exc:  # the flow already recorded the failure and logged the traceback
        print(f"recs run: the run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print()
    if result.status == "rejected":
        print(f"run {result.run_id} rejected by the quality gate: {result.gate}")
        print(f"the previously published recommendations in {config.warehouse} are unchanged (--force publishes anyway)")
    else:
        print(f"run {result.run_id} succeeded: {result.n_recommendations} recommendations published to {config.warehouse}")
        print(f"quality gate: {result.gate}")
    print(f"metrics of the published model, {result.model}, on the test split:")
    _print_frame(result.metrics)
    if result.comparison["model"].n_unique() > 1:
        print("every model on the test split:")
        from tasks.report import comparison_wide

        _print_frame(comparison_wide(result.comparison).with_columns(pl.exclude("model").round(4)))
    stages = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in result.facts["stage_seconds"].items())
    print(f"seconds per stage: {stages}")
    return EXIT_REJECTED if result.status == "rejected" else 0


def _backfill(options: dict) -> int:
    from flows.backfill import backfill, parse_every, replay_dates

    start, end, every = options.pop("start"), options.pop("end"), options.pop("every")
    try:
        cutoffs = replay_dates(start, end, parse_every(every))
    except ValueError as exc:
        print(f"recs backfill: {exc}", file=sys.stderr)
        return 2
    config = _config("backfill", {**options, "as_of": cutoffs[0]})
    if config is None:
        return 2
    failed = 0
    for i, outcome in enumerate(backfill(_nested(options), cutoffs), start=1):
        failed += outcome.status == "failed"
        print(f"[{i}/{len(cutoffs)}] as_of {outcome.as_of:%Y-%m-%d}: {outcome.status} {outcome.run_id or ''} ({outcome.detail})",
              flush=True)  # fmt: skip
    print()
    _trend(config.warehouse, config.trend_runs, None)
    if failed:
        print(f"recs backfill: {failed} of {len(cutoffs)} runs failed; see `recs runs`", file=sys.stderr)
    return 1 if failed else 0


def _trend(path: Path, n_runs: int, chart: Path | None) -> int:
    from tasks.trend import headline, metric_trend, plot_trend, series

    con = _open_read_only(path)
    if con is None:
        return 1
    with con:
        try:
            trend = metric_trend(con, n_runs)
        except duckdb.CatalogException:
            print(f"recs trend: {path} predates the trend views; any new `recs run` adds them", file=sys.stderr)
            return 1
        if trend.height == 0:
            print(f"recs trend: no finished runs with metrics in {path}", file=sys.stderr)
            return 1
        newest = trend.sort("started_at").row(-1, named=True)
        # A run has a series per model it trained: follow the one it published (or, rejected, would have).
        (newest["model"],) = con.execute("SELECT model FROM runs WHERE run_id = ?", [newest["run_id"]]).fetchone()
    newest_series = series(trend, newest["source"], newest["protocol"], newest["model"])
    print(f"metric trend of source {newest['source']}, protocol '{newest['protocol']}', model {newest['model']}")
    print(f"(Δprev: change from the run before; Δmedian: change from the median of the last {n_runs} published runs)")
    _print_frame(headline(newest_series))
    chart = chart or path.with_name("trend.png")
    plot_trend(newest_series, chart)
    print(f"chart written to {chart}")
    return 0


def _open_read_only(path: Path) -> duckdb.DuckDBPyConnection | None:
    if not path.exists():
        print(f"recs: warehouse {path} does not exist; run `recs run` first", file=sys.stderr)
        return None
    return warehouse.connect(path)


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


def _synth(options: dict) -> int:
    from tasks.synth import synth

    out = options.pop("out")
    spec = SynthSpec(**options)
    try:
        spec.check()
    except ValueError as exc:
        print(f"recs synth: {exc}", file=sys.stderr)
        return 2
    made = synth(spec, out)
    print(f"wrote {out}: {made['ratings']:,} ratings by {made['users']:,} users of {made['items']:,} movies, "
          f"{made['bytes'] / 1e6:.1f} MB (generated in {made['generate_seconds']:.1f}s, "
          f"written in {made['write_seconds']:.1f}s)")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `recs` console script; returns the exit status."""
    args = vars(_parser().parse_args(argv))
    command = args.pop("command")
    if command == "run":
        return _run(args)
    if command == "backfill":
        return _backfill(args)
    if command == "serve":
        from flows.serve import serve_pipeline

        serve_pipeline(with_training=args["with_training"])
        return 0
    if command == "synth":
        return _synth(args)
    if command == "recommend":
        return _recommend(args["user_id"], args["warehouse"])
    if command == "trend":
        return _trend(args["warehouse"], args["runs"], args["chart"])
    return _runs(args["warehouse"])


if __name__ == "__main__":
    sys.exit(main())
