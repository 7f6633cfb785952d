"""Shared fixtures: the real ML-100k archive, loopback HTTP servers, small ratings and a Prefect harness.

Helpers that are not fixtures are in tests/helpers.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pytest

from tests.helpers import DATASETS, FaultyServer, ServedDirectory


@pytest.fixture(scope="session")
def ml100k_zip() -> Path:
    """The real GroupLens ML-100k archive beside the repository (never committed: its licence forbids it)."""
    path = DATASETS / "ml-100k.zip"
    if not path.is_file():
        pytest.fail(f"{path} is missing: the tests read the real ML-100k from ../shared/datasets (or $RECS_DATASETS)")
    return path


@pytest.fixture
def serve() -> Iterator[Callable[[Path], ServedDirectory]]:
    """Serve a directory on loopback for the test's duration: `base = serve(folder).url`."""
    servers: list[ServedDirectory] = []

    def start(directory: Path) -> ServedDirectory:
        servers.append(ServedDirectory(directory))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def faulty_server() -> Iterator[Callable[..., FaultyServer]]:
    """`faulty_server(body, fault, failures=10**6)`: see FaultyServer; closed after the test."""
    servers: list[FaultyServer] = []

    def start(body: bytes, fault: str, failures: int = 10**6) -> FaultyServer:
        servers.append(FaultyServer(body, fault, failures))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A throwaway Prefect API and database for the whole session (Prefect's testing guide)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def small_ratings() -> pl.DataFrame:
    """Indexed ratings of 4 users over 5 items; user 3 has a single rating."""
    return pl.DataFrame(
        {
            "user_idx": [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3],
            "item_idx": [0, 1, 2, 3, 0, 1, 3, 4, 1, 2, 3, 4, 2],
            "rating": [5.0, 4.0, 1.0, 2.0, 4.0, 5.0, 2.0, 1.0, 1.0, 2.0, 5.0, 4.0, 3.0],
            "timestamp": [10, 20, 30, 40, 11, 21, 31, 41, 12, 22, 32, 42, 5],
        },
        schema={"user_idx": pl.Int32, "item_idx": pl.Int32, "rating": pl.Float32, "timestamp": pl.Int64},
    )


@pytest.fixture(scope="session")
def ml100k_dataset(ml100k_zip, tmp_path_factory):
    """ML-100k parsed once for the session."""
    from tasks.ingest import fetch_archive, load_dataset

    data_dir = tmp_path_factory.mktemp("ml100k-data")
    return load_dataset(fetch_archive(str(ml100k_zip), data_dir), data_dir)


@pytest.fixture(scope="session")
def ml100k_indexed(ml100k_dataset):
    """ML-100k ratings reindexed, with the id maps."""
    from tasks.reindex import reindex

    return reindex(ml100k_dataset.ratings())


@pytest.fixture(scope="session")
def ml100k_ratings(ml100k_indexed) -> pl.DataFrame:
    return ml100k_indexed[0]
