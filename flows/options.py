"""The command line's options and its messages about them.

`recs run` and `recs backfill` get one option per `PipelineConfig` field (per field of a model's group:
`--mlp-epochs`), so each default and description is written once, in `tasks/config.py`. Whatever is wrong
with an option is said in terms of flags: an unknown flag gets the closest known one, a bad element of a
list option is named with its flag, and a local source that does not exist is refused here, before Prefect
starts.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import types
import typing
import warnings
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from pydantic import BaseModel, ValidationError

from tasks.naming import flag
from tasks.sources import (
    OFFLINE_HINT,
    SOURCE_ENVIRONMENT,
    local_path,
    local_source_problem,
    redact,
    source_from_environment,
)
from tasks.synth import SynthSpec
from tasks.trend import DEFAULT_TREND_RUNS
from warehouse.reader import DEFAULT_WAREHOUSE

if TYPE_CHECKING:
    from tasks.config import PipelineConfig

# The reading commands need neither the config nor torch (which the config's models import): `recs runs` builds
# its parser without the run options and answers in about a second.
READERS = ("recommend", "runs", "sql", "trend")
_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)")


class Parser(argparse.ArgumentParser):
    """argparse, with one-line errors: `recs run: <what is wrong>` and where the options are listed, not
    the 60-option usage line argparse prints by default."""

    def error(self, message: str) -> NoReturn:
        if match := _INVALID_CHOICE.search(message):  # `recs rnu`, `--split stratifed`: the closest choice
            choices = re.findall(r"'([^']*)'", match.group(2))
            if close := difflib.get_close_matches(match.group(1), choices, n=1):
                message += f" (did you mean {close[0]}?)"
        self.exit(2, f"{self.prog}: {message} (`{self.prog} --help` lists the options)\n")


def unknown_arguments(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    """What to say about arguments no option took: each unknown flag with the closest known one."""
    options = sorted({option for action in parser._actions for option in action.option_strings})
    unknown = [extra.split("=", 1)[0] for extra in extras if extra.startswith("-")]
    if not unknown:
        return f"unexpected argument(s) {' '.join(map(repr, extras))}"
    said = []
    for option in unknown:
        close = difflib.get_close_matches(option, options, n=1, cutoff=0.6)
        said.append(f"unknown option {option}" + (f" (did you mean {close[0]}?)" if close else ""))
    return "; ".join(said)


def _option_type(annotation: object) -> object:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    return annotation


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per config field: type, choices, description and default. Lists are comma-separated
    (`--models ease,bpr`)."""
    from tasks.config import CLUSTER_ADDRESS, LEGACY_FIELDS, PipelineConfig

    defaults = PipelineConfig()
    for name, field in PipelineConfig.model_fields.items():
        annotation = _option_type(field.annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            group = getattr(defaults, name)
            for sub, sub_field in annotation.model_fields.items():
                _add_option(
                    parser,
                    f"{name}.{sub}",
                    _option_type(sub_field.annotation),
                    sub_field.description,
                    getattr(group, sub),
                )
        else:
            _add_option(parser, name, annotation, field.description, getattr(defaults, name))
    # `--cluster ADDRESS`, from before the cluster's settings were a group: now `--cluster-address`
    parser.add_argument(
        "--cluster", dest=CLUSTER_ADDRESS, action=_Renamed, default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    taken = {option for action in parser._actions for option in action.option_strings}
    for name in LEGACY_FIELDS:  # still accepted for a release; the config warns, naming the new flag
        if flag(name) in taken:  # a grouped setting whose option kept its name (`--gate-tolerance`)
            continue
        parser.add_argument(flag(name), dest=name, type=str, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


class _Renamed(argparse.Action):
    """An option renamed when its setting moved into a group: stored under the new setting, with a FutureWarning
    naming the new option (`recs` prints it as a warning line)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # type: ignore[no-untyped-def]
        setattr(namespace, self.dest, values)
        warnings.warn(
            f"{option_string} is deprecated and will be removed in the next release; use {flag(self.dest)}",
            FutureWarning,
            stacklevel=2,
        )


def _split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _add_option(
    parser: argparse.ArgumentParser, dest: str, annotation: object, description: str | None, default: object
) -> None:
    help_text = f"{description} (default: {default})".replace("%", "%%")
    if annotation is bool:
        parser.add_argument(
            flag(dest), dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
        )
    elif typing.get_origin(annotation) is typing.Literal:
        parser.add_argument(
            flag(dest), dest=dest, choices=typing.get_args(annotation), default=argparse.SUPPRESS, help=help_text
        )
    elif typing.get_origin(annotation) is list:
        parser.add_argument(
            flag(dest), dest=dest, type=_split_list, metavar="A,B", default=argparse.SUPPRESS, help=help_text
        )
    else:
        metavar = (
            "PATH"
            if getattr(annotation, "__name__", "") == "Path"
            else getattr(annotation, "__name__", "VALUE").upper()
        )
        parser.add_argument(flag(dest), dest=dest, type=str, metavar=metavar, default=argparse.SUPPRESS, help=help_text)


def nested(options: dict) -> dict:
    """`{"mlp.epochs": 3}` -> `{"mlp": {"epochs": 3}}` (the config's model groups)."""
    out: dict = {}
    for key, value in options.items():
        group, _, field = key.rpartition(".")
        (out.setdefault(group, {}) if group else out)[field] = value
    return out


def _choices(path: list[str]) -> tuple[str, ...]:
    """The allowed values of a Literal field (or of a list of them) at `path` in the config."""
    from tasks.config import PipelineConfig

    model: type[BaseModel] = PipelineConfig
    annotation: object = None
    for part in path:
        annotation = _option_type(model.model_fields[part].annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    if typing.get_origin(annotation) is list:
        annotation = typing.get_args(annotation)[0]
    return typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else ()


def describe_errors(exc: ValidationError, named: dict[str, str] | None = None) -> list[str]:
    """A config's validation errors in flags: `--models: 'bpr2' is not one of dot_bias, dot, ... (did you mean bpr?)`.
    `named` gives a setting set elsewhere than by its flag its own name (`{"source": "RECS_SOURCE"}`)."""
    said = []
    for error in exc.errors():
        path = [part for part in error["loc"] if isinstance(part, str)]
        given = error.get("input")
        if path == ["source"] and isinstance(given, str):
            given = redact(given)
        if not path:  # a rule across fields: its message names the fields and their flags already
            said.append(error["msg"].removeprefix("Value error, "))
            continue
        where = (named or {}).get(".".join(path)) or flag(".".join(path))
        if error["type"] == "extra_forbidden":
            said.append(f"{where}: no such setting")
        elif error["type"] == "literal_error" and (choices := _choices(path)):
            close = difflib.get_close_matches(str(given), choices, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            said.append(f"{where}: {given!r} is not one of {', '.join(choices)}{hint}")
        else:
            element = " in the list" if any(isinstance(part, int) for part in error["loc"]) else ""
            said.append(f"{where}: {given!r}{element}: {error['msg'].removeprefix('Value error, ')}")
    return said


def _source_problem(config: PipelineConfig) -> str | None:
    """What makes the source unusable before anything starts: a local path that is missing, or whose first lines
    show it cannot be read, a host with no DNS answer (then with the offline form)."""
    source = config.source
    problem = local_source_problem(source)
    if problem is not None:
        return problem
    if (path := local_path(source)) is not None:
        from tasks.ingest.own_data import read_settings
        from tasks.ingest.unzip import local_archive_problem

        return local_archive_problem(path, read_settings(config))
    from tasks.ingest.fetch import unresolvable_host

    unresolvable = unresolvable_host(source)
    return f"{unresolvable}. {OFFLINE_HINT}" if unresolvable else None


def config_from_options(command: str, options: dict) -> PipelineConfig | None:
    """The config the options describe, or None after printing what is wrong (`recs <command>: ...`)."""
    from tasks.config import PipelineConfig

    source_flag = "--source"
    if "source" not in options and (from_environment := source_from_environment()):
        options, source_flag = {**options, "source": from_environment}, SOURCE_ENVIRONMENT
    config, errors = None, []
    with warnings.catch_warnings(record=True) as deprecations:  # old flags: said whether or not the rest is valid
        warnings.simplefilter("always", FutureWarning)
        try:
            config = PipelineConfig(**nested(options))
        except ValidationError as exc:
            errors = describe_errors(exc, {"source": source_flag})
    for deprecation in deprecations:
        print(f"recs {command}: warning: {deprecation.message}", file=sys.stderr)
    for message in errors:
        print(f"recs {command}: {message}", file=sys.stderr)
    if config is None:
        return None
    problem = _source_problem(config)
    if problem:
        print(f"recs {command}: {source_flag}: {problem}", file=sys.stderr)
        return None
    return config


def command_parser(config_options: bool = True) -> argparse.ArgumentParser:
    """`recs` and its commands, each with its options (`recs run`'s and `recs backfill`'s from the config, unless
    `config_options` is false: enough to parse a reading command)."""
    parser = Parser(prog="recs", description="Nightly MovieLens recommendation pipeline.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_run_commands(commands, config_options)
    _add_synth_command(commands)
    readers = [_add_recommend_command(commands), _add_runs_command(commands), _add_sql_command(commands)]
    for reader in [*readers, _add_trend_command(commands)]:
        reader.add_argument(
            "--warehouse",
            type=Path,
            default=DEFAULT_WAREHOUSE,
            metavar="PATH",
            help=f"DuckDB file to read (default: {DEFAULT_WAREHOUSE})",
        )
    return parser


Commands = argparse._SubParsersAction  # what add_subparsers returns


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="every log record on the console (epochs, task runs); without it, a line per stage, warnings and errors. "
        "The run's log file has everything either way",
    )


def _add_run_commands(commands: Commands, config_options: bool) -> None:
    """`recs run`, `recs backfill`, `recs tune` and `recs serve`."""
    run = commands.add_parser(
        "run",
        help="run the nightly flow once: ingest, train, evaluate, publish top-n to DuckDB",
        description="Run the nightly flow once on Prefect's local (ephemeral) API. Options override the defaults shown.",
    )
    if config_options:
        add_config_options(run)
    _add_verbose(run)

    backfill = commands.add_parser(
        "backfill",
        help="replay the nightly flow at past dates (as_of), oldest first, then print the trend",
        description="Run the nightly flow once per date from --start to --end, each on the ratings up to the end "
        "of that day (UTC), with a temporal split unless --split says otherwise. Other options as for `recs run`.",
    )
    backfill.add_argument(
        "--start", type=date.fromisoformat, required=True, metavar="DATE", help="first date, YYYY-MM-DD"
    )
    backfill.add_argument("--end", type=date.fromisoformat, required=True, metavar="DATE", help="last date, YYYY-MM-DD")
    backfill.add_argument("--every", default="14d", help="step between dates: days (14d) or weeks (2w); default 14d")
    if config_options:
        add_config_options(backfill)
    _add_verbose(backfill)

    _add_tune_command(commands, config_options)
    _add_fold_in_command(commands, config_options)

    serve = commands.add_parser(
        "serve",
        help="serve the nightly and refresh deployments from this process, schedules and trigger included",
        description="Serve the deployments of deploy/prefect.yaml (nightly at 03:00 UTC, refresh, the "
        "recs.ratings.updated trigger) from this process until interrupted; needs a Prefect API "
        "(`prefect server start` or Prefect Cloud).",
    )
    serve.add_argument(
        "--with-training",
        action="store_true",
        help="also serve the training deployment (train/gpu) that config.train_deployment can name",
    )


def _add_tune_command(commands: Commands, config_options: bool) -> None:
    tune = commands.add_parser(
        "tune",
        help="search the models' settings for this data (Optuna), record the best for the nightly runs",
        description="Search the settings of the models a nightly run would train on this source, on a validation "
        "split carved from its training split (the test split is never read), within --tune-budget-seconds; the "
        "best go to the warehouse (tuned_settings), and every later `recs run` on the same data takes them for the "
        "settings it does not give (--tuned off ignores them). Other options as for `recs run`.",
    )
    if config_options:
        add_config_options(tune)
    _add_verbose(tune)


def _add_fold_in_command(commands: Commands, config_options: bool) -> None:
    fold_in = commands.add_parser(
        "fold-in",
        help="fold users new or changed since the published run into its model and publish only their lists",
        description="Read what changed since the published run (the source against its data, or --fold-in-new-rows: "
        "only the rows since), fold those users into its model without refitting, and replace their lists and "
        "nobody else's. Exit status: 0 published or nothing new, 1 failed, 3 refused (a job for the nightly; the "
        "lists stay as they are). Other options as for `recs run`: give the nightly's source and read settings.",
    )
    if config_options:
        add_config_options(fold_in)
    _add_verbose(fold_in)


def _add_synth_command(commands: Commands) -> None:
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
    synth.add_argument(
        "--form",
        choices=("movielens", "interactions"),
        default="movielens",
        help="movielens: an ml-20m archive; interactions: a purchase log customer_id,sku,quantity with text ids and "
        "no timestamps, as a team exports one (default: movielens)",
    )
    synth.add_argument("--out", type=Path, required=True, metavar="FILE", help="archive (.zip) or CSV to write")


def _add_recommend_command(commands: Commands) -> argparse.ArgumentParser:
    recommend = commands.add_parser("recommend", help="print one user's published list with titles")
    recommend.add_argument("user_id", help="the source's own user id (a whole number or text, as the source has it)")
    return recommend


def _add_output_forms(reader: argparse.ArgumentParser) -> None:
    """--wide, --csv and --json, one at most."""
    form = reader.add_mutually_exclusive_group()
    form.add_argument(
        "--wide", action="store_const", dest="output", const="wide", help="a table with every cell whole, however wide"
    )
    form.add_argument("--csv", action="store_const", dest="output", const="csv", help="CSV with a header line")
    form.add_argument("--json", action="store_const", dest="output", const="json", help="a JSON array of objects")


def _add_runs_command(commands: Commands) -> argparse.ArgumentParser:
    runs = commands.add_parser(
        "runs",
        help="print the latest runs with their status and headline metrics",
        description="The latest 20 runs, newest first, fitted to the terminal; --wide prints every column whole.",
    )
    _add_output_forms(runs)
    return runs


def _add_sql_command(commands: Commands) -> argparse.ArgumentParser:
    sql = commands.add_parser(
        "sql",
        help="run a read-only SQL query on the warehouse and print the result",
        description="Run SQL on the warehouse through a read-only connection (as applications should read it) "
        "and print the result. Several statements may be given; the last one's result is printed.",
    )
    sql_text = sql.add_mutually_exclusive_group(required=True)
    sql_text.add_argument("query", nargs="?", help='the SQL, e.g. "SELECT count(*) FROM recommendations"')
    sql_text.add_argument(
        "--file", type=Path, metavar="FILE.sql", help="read the SQL from a file, e.g. warehouse/queries/*.sql"
    )
    sql.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="bind $NAME in the SQL to VALUE (a number when it reads as one); repeatable",
    )
    _add_output_forms(sql)
    return sql


def _add_trend_command(commands: Commands) -> argparse.ArgumentParser:
    trend = commands.add_parser(
        "trend",
        help="print each run's headline metrics with deltas, and write a PNG chart of them",
        description="The metric series of the newest run's source, protocol and model: each run's value, its "
        "delta from the run before and from the median of the last N published runs.",
    )
    trend.add_argument(
        "--runs",
        type=int,
        default=DEFAULT_TREND_RUNS,
        metavar="N",
        help=f"median over the last N published runs (default: {DEFAULT_TREND_RUNS})",
    )
    trend.add_argument(
        "--chart",
        type=Path,
        default=None,
        metavar="PNG",
        help="where to write the chart (default: trend.png beside the warehouse)",
    )
    return trend
