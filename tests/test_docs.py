"""The documentation cannot rot: every `recs ...` example and every SQL example in the README and the docs runs
as written against a real warehouse made from ML-100k, and every table of figures names the command that
regenerates it.

The examples run in a scratch folder laid out like a checkout (`.venv` and `../shared/datasets` beside it),
in document order, so `recs run --source ../shared/datasets/ml-100k.zip` builds the warehouse the later
examples read. A `# exits N` comment on an example is the exit status it must end with (default 0).
The `prefect ...` set-up lines are run by tests/test_e2e_deployments.py.
"""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from flows.cli import main
from tests.helpers import DATASETS, REPO

DOCS = [
    REPO / "README.md",
    REPO / "deploy" / "README.md",
    REPO / "benchmarks" / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
]

# Examples not run here, each with why; every entry must still match an example (so the list cannot rot).
NOT_RUN = {
    "recs serve": "serves the deployments until interrupted; tests/tasks/test_operations.py checks what it serves",
    "recs synth --users 138000": "writes the 20M-rating archive (a minute, 1.5 GB); tests/tasks/test_synth.py runs `recs synth` small",
    "https://": "downloads from the internet",
    "--cluster-address tcp://scheduler-host": "needs a Dask scheduler on other hosts; tests/test_cluster_flow.py runs one on 127.0.0.1",
    "--source data/purchases.csv": "a synthetic purchase log (15 s more of CI); tests/test_own_data_flow.py runs "
    "one with text ids, rules and an items file through `recs run`, `recs recommend` and recommendations_for",
    "recs recommend C0000001": "reads the purchase log's warehouse, not run above",
    "recs synth --form interactions": "writes the purchase log the next example reads, not run above; "
    "tests/tasks/test_synth.py runs `recs synth`",
    '--source-query "SELECT customer': "needs a team's DuckDB file; tests/tasks/test_own_data.py reads a DuckDB table "
    "and query, and refuses a query that writes",
    "--tune-budget-seconds 600": "the default search on ML-100k (a minute and a half); the README's `recs tune "
    "... --tune-max-trials 8` runs here, tests/test_tune_flow.py tunes and resumes a killed tune",
    "--exclude-genres horror": "the README's run with two rules (20 s more of CI); tests/test_nightly_flow.py::"
    "test_business_rules_reasons_fallback_and_churn_through_the_flow runs such rules through the flow",
}

# A table whose header names one of these holds measured figures: a command that regenerates it must be
# quoted (in backticks) in the lines just before it.
_FIGURE_HEADERS = re.compile(r"\b(rmse|ndcg|seconds|wall|fit_seconds|rss|validation score)\b", re.IGNORECASE)
_COMMAND = re.compile(r"`(\.venv/bin/)?(python (benchmarks|-m)|recs |/usr/bin/time)[^`]*`")
_LOOK_BACK_LINES = 15


@dataclass(frozen=True)
class Example:
    doc: Path
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}: {self.text}"


def _fenced_blocks(doc: Path) -> list[tuple[str, int, list[str]]]:
    """(info string, first line number, lines) of each fenced code block."""
    blocks, info, start, body = [], None, 0, []
    for number, line in enumerate(doc.read_text().splitlines(), start=1):
        if line.startswith("```"):
            if info is None:
                info, start, body = line[3:].strip(), number + 1, []
            else:
                blocks.append((info, start, body))
                info = None
        elif info is not None:
            body.append(line)
    return blocks


def recs_examples() -> list[Example]:
    """Each shell line (continuations joined) that runs `recs` or `.venv/bin/recs`."""
    examples = []
    for doc in DOCS:
        for info, start, body in _fenced_blocks(doc):
            if info not in ("bash", "sh", "console"):
                continue
            joined, first = "", start
            for offset, line in enumerate(body):
                if not joined:
                    first = start + offset
                joined += (
                    line.removeprefix("$ ").rstrip("\\").rstrip() + " "
                    if line.endswith("\\")
                    else line.removeprefix("$ ")
                )
                if line.endswith("\\"):
                    continue
                if re.match(r"(\.venv/bin/)?recs\s", joined.strip()):
                    examples.append(Example(doc, first, joined.strip()))
                joined = ""
    return examples


def sql_examples() -> list[Example]:
    """Each statement of each ```sql block."""
    examples = []
    for doc in DOCS:
        for info, start, body in _fenced_blocks(doc):
            if info != "sql":
                continue
            statement, first = [], start
            for offset, line in enumerate(body):
                if not statement:
                    first = start + offset
                if line.strip() or statement:
                    statement.append(line)
                if line.rstrip().endswith(";"):
                    examples.append(Example(doc, first, "\n".join(statement)))
                    statement = []
    return examples


def _not_run(example: Example) -> str | None:
    return next((why for pattern, why in NOT_RUN.items() if pattern in example.text), None)


def test_the_docs_have_examples_and_every_exclusion_still_matches_one():
    examples = recs_examples()
    assert len(examples) >= 8 and len(sql_examples()) >= 8
    for pattern in NOT_RUN:
        assert any(pattern in example.text for example in examples), f"NOT_RUN entry {pattern!r} matches no example"


def test_every_table_of_figures_names_the_command_that_regenerates_it():
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        for number, line in enumerate(lines):
            starts_table = line.startswith("|") and not (number and lines[number - 1].startswith("|"))
            if not (starts_table and _FIGURE_HEADERS.search(line)):
                continue
            before = "\n".join(lines[max(0, number - _LOOK_BACK_LINES) : number])
            assert _COMMAND.search(before), (
                f"{doc.relative_to(REPO)}:{number + 1}: a table of figures with no command in the "
                f"{_LOOK_BACK_LINES} lines before it: {line}"
            )


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A scratch folder laid out like a checkout: `.venv` is this Python's, `../shared/datasets` the real data,
    `warehouse/queries` the repository's."""
    root = tmp_path_factory.mktemp("docs")
    (root / "checkout" / "warehouse").mkdir(parents=True)
    (root / "checkout" / "warehouse" / "queries").symlink_to(REPO / "warehouse" / "queries")
    (root / "checkout" / ".venv").symlink_to(Path(sys.prefix))
    (root / "shared").mkdir()
    (root / "shared" / "datasets").symlink_to(DATASETS.resolve())
    return root / "checkout"


@pytest.mark.slow
def test_every_recs_and_sql_example_runs_as_written(checkout, capsys, prefect_harness):
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "120"}
    # the session's Prefect API: each `recs run` then skips starting a temporary one of its own (4 s each here);
    # tests/test_cli.py runs `recs run` with its temporary API, as the README's first command does
    env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    ran, skipped = [], []
    for example in recs_examples():
        if why := _not_run(example):
            skipped.append(f"{example} ({why})")
            continue
        expected = int(match.group(1)) if (match := re.search(r"#\s*exits (\d+)", example.text)) else 0
        done = subprocess.run(
            ["bash", "-c", example.text], cwd=checkout, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == expected, (
            f"{example}\nexited {done.returncode}, expected {expected}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
        ran.append(example)

    warehouse_path = checkout / "warehouse" / "recs.duckdb"
    assert warehouse_path.exists(), "no example built the warehouse the SQL examples read"
    statements = sql_examples()
    for example in statements:
        status = main(["sql", example.text, "--warehouse", str(warehouse_path)])
        assert status == 0, f"{example}\n{capsys.readouterr().err}"
    with capsys.disabled():
        print(f"\ndocs: ran {len(ran)} recs examples and {len(statements)} SQL statements as written; not run:")
        print("\n".join(f"  {line}" for line in skipped))


def test_the_config_reference_is_what_the_script_writes_from_the_code():
    render = runpy.run_path(str(REPO / "docs" / "make_config_md.py"))["render"]
    assert (REPO / "docs" / "config.md").read_text() == render(), (
        "docs/config.md differs from the config in the code: run `python docs/make_config_md.py`"
    )


def test_the_readme_is_a_first_run_guide_and_user_docs_hold_no_history():
    assert len((REPO / "README.md").read_bytes()) <= 12_500
    history = re.compile(r"\bissue \d+|\bat commit\b|\bcommit `[0-9a-f]{7}`|\bsince issue\b")
    for doc in DOCS:
        found = history.search(doc.read_text())
        assert found is None, f"{doc.relative_to(REPO)}: history ({found.group(0)!r}) belongs in CHANGELOG.md"
