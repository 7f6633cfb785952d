"""`recs`: the command line.

`recs run` runs the nightly flow once, `recs backfill` replays it over past dates, `recs tune` searches the
models' settings for a dataset, `recs fold-in` folds new and changed users into the published model, `recs serve`
serves the deployments of deploy/prefect.yaml; `recs recommend`, `recs runs` and `recs trend` read the warehouse;
`recs synth` writes a synthetic MovieLens archive for scale tests; `recs sql` runs a read-only query.

The commands' options, those of `recs run` generated from `PipelineConfig`'s fields, are in flows/options.py;
this module runs the commands.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import duckdb
import polars as pl

import warehouse
from flows.console import show, terminal_width, text_table
from flows.options import READERS, command_parser, config_from_options, nested, unknown_arguments
from tasks.synth import SynthSpec

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from flows.backfill import ReplayOutcome
    from flows.nightly import RunResult
    from tasks.config import PipelineConfig


def _print_frame(frame: pl.DataFrame) -> None:
    print(text_table(frame, terminal_width()))


# Exit statuses of `recs run`: 0 published, 1 failed, 2 bad option, 3 rejected by the quality gate, 4 cancelled
# (a signal or run_timeout_seconds ended it).
EXIT_REJECTED = 3
EXIT_CANCELLED = 4


def _log_path(config: PipelineConfig, command: str) -> Path:
    """Where this command's full log goes (tracebacks included): `data_dir/logs/recs-<command>-<UTC time>-<pid>.log`."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return config.data_dir / "logs" / f"recs-{command}-{stamp}-{os.getpid()}.log"


@contextmanager
def _flow_session(log_path: Path, verbose: bool) -> Iterator[None]:
    """A flow run from the command line: its full log to `log_path`, SIGTERM and SIGINT as a cancellation, and a
    temporary Prefect API when no server is configured."""
    from flows.api import temporary_api
    from flows.deadline import signals_cancel
    from flows.logs import log_to_file

    with log_to_file(log_path, verbose), signals_cancel(), temporary_api():
        yield


def _failed(command: str, what: str, exc: Exception, log_path: Path) -> int:
    """Say that the flow failed and where its traceback is (the flow has recorded the failure itself)."""
    print(f"recs {command}: {what} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    print(f"recs {command}: the full log, tracebacks included, is {log_path}", file=sys.stderr)
    return 1


def _run(options: dict) -> int:
    verbose = options.pop("verbose", False)
    config = config_from_options("run", options)
    if config is None:
        return 2
    from flows.api import TemporaryApiError
    from flows.deadline import RunCancelled, cancellation_reason
    from flows.nightly import nightly  # imported here: Prefect's import is slow and `--help` should not wait
    from flows.runlog import record_unstarted

    log_path = _log_path(config, "run")
    if not warehouse.resolved(config.warehouse).exists():
        print(f"recs run: {config.warehouse} does not exist: this run creates a new warehouse there", file=sys.stderr)
    try:
        with _flow_session(log_path, verbose):
            # a rejected run's state is Completed("Rejected") with its RunResult as the data
            result = cast("RunResult", nightly(config, return_state=True).result())
    except TemporaryApiError as exc:  # the flow never ran: record the run here
        run_id = record_unstarted(config, f"{type(exc).__name__}: {exc}")
        print(f"recs run: the run {run_id or ''} could not start: {exc}", file=sys.stderr)
        return 1
    except (RunCancelled, KeyboardInterrupt) as exc:  # recorded as cancelled by the flow when it had started
        print(
            f"recs run: the run was cancelled: {cancellation_reason(exc)}; the published recommendations in "
            f"{config.warehouse} are unchanged. Log: {log_path}",
            file=sys.stderr,
        )
        return EXIT_CANCELLED
    except Exception as exc:
        return _failed("run", "the run", exc, log_path)
    _print_result(result, config, log_path)
    return EXIT_REJECTED if result.status == "rejected" else 0


def _flow_command(
    command: str, options: dict, load: Callable[[], Callable[[PipelineConfig], Any]], cancelled: str
) -> tuple[Any, PipelineConfig, Path] | int:
    """Run a flow from the command line (its log to a file, signals as a cancellation, a temporary API): its result,
    config and log, or the exit status when it did not end with a result (`cancelled` says what a cancellation
    leaves, `{warehouse}` the config's). `load` imports the flow once the options are valid (Prefect's import is
    slow) and before the session sets up the console's logging (Prefect's import adds handlers of its own)."""
    verbose = options.pop("verbose", False)
    config = config_from_options(command, options)
    if config is None:
        return 2
    from flows.api import TemporaryApiError
    from flows.deadline import RunCancelled, cancellation_reason

    start = load()
    log_path = _log_path(config, command)
    noun = "the " + command
    try:
        with _flow_session(log_path, verbose):
            return start(config), config, log_path
    except TemporaryApiError as exc:
        print(f"recs {command}: {noun} could not start: {exc}", file=sys.stderr)
        return 1
    except (RunCancelled, KeyboardInterrupt) as exc:
        left = cancelled.format(warehouse=config.warehouse)
        print(f"recs {command}: cancelled: {cancellation_reason(exc)}; {left}. Log: {log_path}", file=sys.stderr)
        return EXIT_CANCELLED
    except Exception as exc:
        return _failed(command, noun, exc, log_path)


def _tune(options: dict) -> int:
    def load() -> Callable[[PipelineConfig], Any]:
        from flows.tune import tune

        return tune

    kept = "its finished trials are kept and the next `recs tune` on this data resumes them"
    outcome = _flow_command("tune", options, load, kept)
    if isinstance(outcome, int):
        return outcome
    result, config, log_path = outcome
    print()
    print(result.summary)
    print(f"the nightly runs on this data take these settings (tuned_settings in {config.warehouse}); log: {log_path}")
    return 0


def _fold_in(options: dict) -> int:
    def load() -> Callable[[PipelineConfig], Any]:
        from flows.fold_in import fold_in

        return fold_in

    outcome = _flow_command("fold-in", options, load, "the published recommendations in {warehouse} are unchanged")
    if isinstance(outcome, int):
        return outcome
    result, _, log_path = outcome
    if result.status == "refused":
        print(f"recs fold-in: refused: {result.summary}; the lists are unchanged. Log: {log_path}", file=sys.stderr)
        return EXIT_REJECTED
    print(result.summary if result.status == "published" else f"{result.summary}: nothing published")
    return 0


def _print_result(result: RunResult, config: PipelineConfig, log_path: Path) -> None:
    """What a finished run says: its verdict, its model's metrics, every model's, and its stages' seconds."""
    print()
    if result.status == "rejected":
        print(f"run {result.run_id} rejected by the quality gate: {result.gate}")
        print(
            f"the previously published recommendations in {config.warehouse} are unchanged (--force publishes anyway)"
        )
        print(f"metrics of the candidate model, {result.model}, on the test split (not published):")
    else:
        print(
            f"run {result.run_id} succeeded: {result.n_recommendations} recommendations published to {config.warehouse}"
        )
        print(f"quality gate: {result.gate}")
        print(f"metrics of the published model, {result.model}, on the test split:")
    _print_frame(result.metrics)
    if tuned := result.facts.get("tuning_run_id"):
        print(
            f"settings tuned for this data by tune {tuned} (--tuned off ignores them): {result.facts['tuned_settings']}"
        )
    if result.comparison["model"].n_unique() > 1:
        print("every model on the test split:")
        from tasks.report import comparison_wide

        _print_frame(comparison_wide(result.comparison))
    stages = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in result.facts["stage_seconds"].items())
    print(f"seconds per stage: {stages}")
    print(f"log: {log_path}")


def _backfill(options: dict) -> int:
    from flows.backfill import (
        LiveWarehouseError,
        backfill,
        parse_every,
        refuse_before_replay,
        replay_dates,
        replay_options,
    )
    from tasks.ingest.errors import IngestError

    start, end, every = options.pop("start"), options.pop("end"), options.pop("every")
    verbose = options.pop("verbose", False)
    try:
        cutoffs = replay_dates(start, end, parse_every(every))
        config = config_from_options("backfill", replay_options({**options, "as_of": cutoffs[0]}))
        if config is None:
            return 2
        refuse_before_replay(config)
    except (ValueError, LiveWarehouseError, IngestError) as exc:
        print(f"recs backfill: {exc}", file=sys.stderr)
        return 2
    print(f"replaying {len(cutoffs)} dates into {config.warehouse}", flush=True)
    from flows.api import TemporaryApiError
    from flows.deadline import RunCancelled, cancellation_reason

    log_path = _log_path(config, "backfill")
    try:
        with _flow_session(log_path, verbose):
            failed = _replay(backfill(nested(options), cutoffs), len(cutoffs))
    except TemporaryApiError as exc:
        print(f"recs backfill: {exc}", file=sys.stderr)
        return 1
    except (RunCancelled, KeyboardInterrupt) as exc:  # the night in progress is recorded as cancelled
        print(
            f"recs backfill: cancelled: {cancellation_reason(exc)}; the dates before it are replayed. Log: {log_path}",
            file=sys.stderr,
        )
        return EXIT_CANCELLED
    print()
    # the replay's chart beside the replay's warehouse, never over the live warehouse's trend.png
    _trend(config.warehouse, config.trend_runs, config.warehouse.with_name(f"{config.warehouse.stem}-trend.png"))
    if failed:
        print(
            f"recs backfill: {failed} of {len(cutoffs)} runs failed; see `recs runs` and the log {log_path}",
            file=sys.stderr,
        )
    return 1 if failed else 0


def _replay(outcomes: Iterable[ReplayOutcome], n_dates: int) -> int:
    """Print each replayed night as it ends; returns how many failed."""
    failed = 0
    for i, outcome in enumerate(outcomes, start=1):
        failed += outcome.status == "failed"
        print(
            f"[{i}/{n_dates}] as_of {outcome.as_of:%Y-%m-%d}: {outcome.status} {outcome.run_id or ''} ({outcome.detail})",
            flush=True,
        )
    return failed


def _trend(path: Path, n_runs: int, chart: Path | None) -> int:
    from tasks.trend import LIST_METRICS, headline, plot_trend, run_series

    con = _open_read_only(path, "recs trend")
    if con is None:
        return 1
    with con:
        try:
            newest, newest_series = run_series(con, n_runs)
        except duckdb.CatalogException:
            print(f"recs trend: {path} predates the trend views; any new `recs run` adds them", file=sys.stderr)
            return 1
    if newest_series.height == 0:
        print(f"recs trend: no finished runs with metrics in {path}", file=sys.stderr)
        return 1
    rmse_from = "" if newest["rating_model"] == newest["model"] else f", RMSE of {newest['rating_model']} (its stars)"
    print(
        f"metric trend of source {newest['source']}, protocol '{newest['protocol']}', model {newest['model']}{rmse_from}"
    )
    print(f"(Δprev: change from the run before; Δmedian: change from the median of the last {n_runs} published runs)")
    _print_frame(headline(newest_series))
    lists = headline(newest_series, LIST_METRICS, deltas=False)
    if lists.height:
        print(
            "the lists beyond accuracy (popularity percentile of the items, distinct genres per list, churn and "
            "Jaccard overlap against the lists published before):"
        )
        _print_frame(lists)
    if newest_series["run_id"].n_unique() < 2:
        print("one run so far: the chart is drawn once there are two")
        return 0
    chart = chart or path.with_name("trend.png")
    plot_trend(newest_series, chart)
    print(f"chart written to {chart}")
    return 0


def _open_read_only(path: Path, command: str) -> duckdb.DuckDBPyConnection | None:
    """A read-only connection for a reading command, after marking runs whose process died (a `running` row
    while no process holds the run lock) as failed, so that no reader mistakes a dead run for a live one."""
    from flows.lock import settle_dead_runs

    if not path.exists():
        print(
            f"{command}: warehouse {path} does not exist; run `recs run` first, or name one with --warehouse",
            file=sys.stderr,
        )
        return None
    try:
        settle_dead_runs(path, found_by=command)
        return warehouse.open_reader(path)
    except warehouse.NotAWarehouseError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return None


def _recommend(user_id: str, path: Path) -> int:
    con = _open_read_only(path, "recs recommend")
    if con is None:
        return 1
    with con:
        try:
            rows = warehouse.fetch(con, "user_recommendations", {"user_id": user_id})
        except duckdb.BinderException:
            print(
                f"recs recommend: {path} predates the predicted_rating column; any new `recs run` adds it",
                file=sys.stderr,
            )
            return 1
        except duckdb.ConversionException:  # text given, whole-number ids published
            print(f"recs recommend: {user_id!r} is not a user id of {path}: its ids are whole numbers", file=sys.stderr)
            return 1
        if rows.height == 0:
            return _recommend_fallback(con, user_id, path)
    print(f"recommendations for user {user_id}:")
    _print_frame(rows.with_columns(pl.col("score").round(3), pl.col("predicted_rating").round(1)))
    return 0


def _recommend_fallback(con: duckdb.DuckDBPyConnection, user_id: str, path: Path) -> int:
    """A user without a list of their own gets what `recommendations_for` serves them: the list for unknown users."""
    rows = warehouse.fetch(con, "fallback_for_user", {"user_id": user_id})
    if rows.height == 0:
        n_users = warehouse.fetch_value(con, "users_with_lists")
        print(
            f"recs: user {user_id} has no published recommendations in {path} ({n_users} users have lists)",
            file=sys.stderr,
        )
        return 1
    print(
        f"user {user_id} has no list of their own in {path}; the list for unknown users (the most-rated items the "
        f"rules allow, as recommendations_for({user_id if user_id.lstrip('-').isdigit() else repr(user_id)}) serves it):"
    )
    _print_frame(rows)
    return 0


# What `recs runs` shows by default: enough to fit 120 columns, the reason cut to the space left.
_RUNS_COLUMNS = ["run_id", "status", "started_at", "as_of", "seconds", "model", "rmse", "ndcg", "reason"]
# What a narrow terminal leaves out of `recs runs` first; when, status, model, nDCG and the reason always stay.
RUNS_DROP_ORDER = ("as_of", "seconds", "rmse", "run_id")


def _runs(path: Path, output: str | None) -> int:
    con = _open_read_only(path, "recs runs")
    if con is None:
        return 1
    with con:
        runs = warehouse.fetch(con, "latest_runs")
    if output is None:
        runs = runs.select(_RUNS_COLUMNS).with_columns(pl.col("started_at").dt.strftime("%Y-%m-%d %H:%M"))
        if runs["as_of"].null_count() == runs.height:
            runs = runs.drop("as_of")
    show(runs, output or "table", wide=output == "wide", drop_order=RUNS_DROP_ORDER)
    return 0


def _bind(params: list[str]) -> dict[str, object]:
    """`["user_id=42", "title=Heat (1995)"]` -> `{"user_id": 42, "title": "Heat (1995)"}`."""
    bound: dict[str, object] = {}
    for param in params:
        name, sep, value = param.partition("=")
        if not sep or not name:
            raise ValueError(f"--param {param!r}: expected NAME=VALUE")
        try:
            bound[name] = int(value)
        except ValueError:
            try:
                bound[name] = float(value)
            except ValueError:
                bound[name] = value
    return bound


def _sql(args: dict) -> int:
    try:
        text = args["file"].read_text() if args["file"] else args["query"]
        params = _bind(args["param"])
    except (OSError, ValueError) as exc:
        print(f"recs sql: {exc}", file=sys.stderr)
        return 2
    con = _open_read_only(args["warehouse"], "recs sql")
    if con is None:
        return 1
    with con:
        try:
            relation = con.sql(text, params=params or None)
            result = pl.from_arrow(relation.to_arrow_table()) if relation is not None else None
        except duckdb.Error as exc:
            if isinstance(exc, duckdb.InvalidInputException) and "read-only mode" in str(exc):
                print(
                    "recs sql: the warehouse is opened read-only: `recs sql` reads; writes belong to `recs run`",
                    file=sys.stderr,
                )
                return 1
            print(f"recs sql: {type(exc).__name__}: {exc}", file=sys.stderr)
            if isinstance(exc, duckdb.PermissionException):
                print(
                    "recs sql: a reader queries the warehouse's tables, views and macros and nothing else: no "
                    "files, no other databases, no extensions, no settings (docs/warehouse.md)",
                    file=sys.stderr,
                )
            return 1
    if result is None:
        print("recs sql: the last statement returns no result")
        return 0
    assert isinstance(result, pl.DataFrame)  # a relation's rows: a table
    show(result, args["output"] or "table", wide=args["output"] == "wide")
    return 0


def _synth(options: dict) -> int:
    from tasks.synth import synth

    out, form = options.pop("out"), options.pop("form")
    spec = SynthSpec(**options)
    try:
        spec.check()
    except ValueError as exc:
        print(f"recs synth: {exc}", file=sys.stderr)
        return 2
    made = synth(spec, out, form)
    what = ("interactions", "items") if form == "interactions" else ("ratings", "movies")
    print(
        f"wrote {out}: {made['ratings']:,} {what[0]} by {made['users']:,} users of {made['items']:,} {what[1]}, "
        f"{made['bytes'] / 1e6:.1f} MB (generated in {made['generate_seconds']:.1f}s, "
        f"written in {made['write_seconds']:.1f}s)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `recs` console script; returns the exit status."""
    try:
        return _main(argv)
    except BrokenPipeError:  # `recs runs | head`: the reader went away; stop quietly, as any Unix tool
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit goes nowhere
        return 0


def _main(argv: list[str] | None) -> int:
    # The temporary Prefect API `recs run` starts needs no telemetry (its heartbeat also logged lock errors).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    warehouse.no_world_access()  # what recs writes (logs, data, the warehouse) is not for other users
    words = [word for word in (sys.argv[1:] if argv is None else argv) if not word.startswith("-")]
    parser = command_parser(config_options=not words or words[0] not in READERS)
    try:
        with warnings.catch_warnings(record=True) as renamed:  # options renamed since (flows/options.py)
            warnings.simplefilter("always", FutureWarning)
            namespace, extras = parser.parse_known_args(argv)
        for deprecation in renamed:
            print(f"recs {namespace.command}: warning: {deprecation.message}", file=sys.stderr)
        if extras:
            commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            subparser = commands.choices[namespace.command]
            subparser.error(unknown_arguments(subparser, extras))
    except SystemExit as exc:  # a bad option (2) or --help (0): argparse has printed why
        return int(exc.code or 0)
    args = vars(namespace)
    command = args.pop("command")
    if command == "run":
        return _run(args)
    if command == "backfill":
        return _backfill(args)
    if command == "tune":
        return _tune(args)
    if command == "fold-in":
        return _fold_in(args)
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
    if command == "sql":
        return _sql(args)
    return _runs(args["warehouse"], args["output"])


if __name__ == "__main__":
    sys.exit(main())
