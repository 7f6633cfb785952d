"""Synthetic MovieLens: an archive in the ml-20m layout, for scale tests where the real archive cannot be fetched.

What it imitates (ML-20M: 138k users, 27k movies, 20M ratings, 1995-2015):

- user activity is heavy-tailed (log-normal) with at least `MIN_USER_RATINGS` ratings per user;
- item popularity is heavy-tailed (log-normal weights), items drawn per user without replacement;
- ratings come from latent factors plus user and item biases plus noise, then mapped by quantiles onto the
  half-star scale with ML-20M's histogram, so they are learnable and look like MovieLens;
- timestamps: each user is active over a window inside 1995-2015;
- movie ids are sparse (as in ML-20M), titles sometimes hold commas (so the CSV needs quoting).

Everything is numpy over whole arrays (no loop over users or ratings) and depends only on the seed: the same
arguments give a byte-identical archive.
"""

from __future__ import annotations

import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from tasks.run_folder import atomic_write

MIN_USER_RATINGS = 20  # as GroupLens selected ML-20M's users
HALF_STARS = np.arange(1, 11) / 2
# Share of each half star 0.5..5.0 in ML-20M's ratings.csv.
ML_20M_HISTOGRAM = np.array([1.19, 3.34, 1.40, 7.19, 4.41, 21.41, 10.51, 27.76, 7.69, 14.50])
FIRST_TIMESTAMP, LAST_TIMESTAMP = 789_652_009, 1_427_784_002  # ML-20M's span: 1995-01-09 .. 2015-03-31
GENRES = (
    "Action",
    "Adventure",
    "Animation",
    "Children",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "IMAX",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
ZIP_DATE = (2015, 3, 31, 0, 0, 0)  # fixed entry dates: the archive's bytes depend only on the arguments


@dataclass(frozen=True)
class SynthSpec:
    """The size and seed of a synthetic dataset."""

    users: int = 138_000
    items: int = 27_000
    ratings: int = 20_000_000
    seed: int = 0
    factors: int = 10

    def check(self) -> None:
        """Raise ValueError when no dataset of this shape exists."""
        if self.users < 1 or self.items < MIN_USER_RATINGS:
            raise ValueError(f"need at least 1 user and {MIN_USER_RATINGS} items, got {self.users} and {self.items}")
        if self.ratings < MIN_USER_RATINGS * self.users:
            raise ValueError(
                f"--ratings {self.ratings:,} is below {MIN_USER_RATINGS} per user "
                f"({MIN_USER_RATINGS * self.users:,} for {self.users:,} users)"
            )
        if self.ratings > self.users * self.items // 2:
            raise ValueError(
                f"--ratings {self.ratings:,} would fill over half of the {self.users:,} x {self.items:,} matrix; "
                "a MovieLens-like set is sparse"
            )


def _user_counts(rng: np.random.Generator, spec: SynthSpec) -> np.ndarray:
    """Ratings per user: MIN + log-normal activity, capped at half the catalogue, summing exactly to spec.ratings."""
    weights = rng.lognormal(0.0, 1.3, spec.users)
    cap = spec.items // 2
    lo, hi = 0.0, (spec.ratings / weights.min()) + 1.0
    for _ in range(100):  # bisection on the scale s: sum(min(cap, MIN + s * w)) = ratings
        scale = (lo + hi) / 2
        total = np.minimum(cap, MIN_USER_RATINGS + scale * weights).sum()
        lo, hi = (scale, hi) if total < spec.ratings else (lo, scale)
    exact = np.minimum(cap, MIN_USER_RATINGS + lo * weights)
    counts = np.floor(exact).astype(np.int64)
    short = spec.ratings - counts.sum()
    room = np.flatnonzero(counts < cap)
    order = room[np.argsort(-(exact[room] - counts[room]), kind="stable")]
    counts[order[:short]] += 1  # the largest fractional parts take the remainder
    return counts


def _draw_items(rng: np.random.Generator, counts: np.ndarray, popularity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each user's `counts[u]` distinct items, drawn by `popularity` (without replacement).

    Candidates are drawn with replacement for the users still short and deduplicated, round after round; the
    rounds after the third draw uniformly so heavy users finish fast. Then each user keeps a random subset of
    exactly counts[u] of their distinct candidates.
    """
    n_users, n_items = len(counts), len(popularity)
    cumulative = np.cumsum(popularity / popularity.sum())
    keys = np.empty(0, dtype=np.int64)
    have = np.zeros(n_users, dtype=np.int64)
    for round_ in range(50):
        short = np.flatnonzero(have < counts)
        if not len(short):
            break
        deficit = counts[short] - have[short]
        # Oversample by the share of the catalogue still free to the user (a uniform draw's chance to be new).
        draws = np.ceil(1.5 * deficit * n_items / (n_items - have[short])).astype(np.int64) + 4
        users = np.repeat(short, draws)
        if round_ < 3:
            items = np.minimum(np.searchsorted(cumulative, rng.random(len(users))), n_items - 1)
        else:
            items = rng.integers(0, n_items, len(users))
        keys = np.sort(
            np.concatenate([keys, users * n_items + items])
        )  # sort + mask: numpy's unique hashes, slower here
        keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
        have = np.bincount(keys // n_items, minlength=n_users)
    else:
        raise RuntimeError("could not draw enough distinct items per user")
    users = keys // n_items
    order = np.lexsort((rng.random(len(keys)), users))  # random order within each user
    starts = np.concatenate([[0], np.cumsum(have)[:-1]])
    rank = np.arange(len(keys)) - np.repeat(starts, have)
    kept = keys[order][rank < np.repeat(counts, have)]
    return kept // n_items, kept % n_items


def _half_stars(
    rng: np.random.Generator, spec: SynthSpec, users: np.ndarray, items: np.ndarray, log_popularity: np.ndarray
) -> np.ndarray:
    """Latent-factor scores, mapped by quantile onto the half-star scale with ML-20M's histogram."""
    user_vectors = rng.normal(0, 1, (spec.users, spec.factors)).astype(np.float32) / np.sqrt(spec.factors)
    item_vectors = rng.normal(0, 1, (spec.items, spec.factors)).astype(np.float32) / np.sqrt(spec.factors)
    user_bias = rng.normal(0, 0.35, spec.users).astype(np.float32)
    # Popular movies are rated higher on average, as in MovieLens.
    z = (log_popularity - log_popularity.mean()) / log_popularity.std()
    item_bias = (rng.normal(0, 0.35, spec.items) + 0.2 * z).astype(np.float32)
    scores = np.empty(len(users), dtype=np.float32)
    for start in range(0, len(users), 1 << 21):  # chunks bound the gathered vectors' memory
        u, i = users[start : start + (1 << 21)], items[start : start + (1 << 21)]
        scores[start : start + len(u)] = (user_vectors[u] * item_vectors[i]).sum(1) + user_bias[u] + item_bias[i]
    scores += rng.normal(0, 0.35, len(scores)).astype(np.float32)
    shares = np.cumsum(ML_20M_HISTOGRAM / ML_20M_HISTOGRAM.sum())[:-1]
    thresholds = np.quantile(scores, shares)
    return HALF_STARS[np.searchsorted(thresholds, scores)].astype(np.float32)


def _timestamps(rng: np.random.Generator, n_users: int, users: np.ndarray) -> np.ndarray:
    """Each user rates within their own active window (exponential length, mean a year) inside 1995-2015."""
    span = LAST_TIMESTAMP - FIRST_TIMESTAMP
    window = np.minimum(rng.exponential(365 * 86_400, n_users), span)
    start = FIRST_TIMESTAMP + rng.random(n_users) * (span - window)
    return (start[users] + rng.random(len(users)) * window[users]).astype(np.int64)


def _movies(rng: np.random.Generator, n_items: int) -> pl.DataFrame:
    movie_ids = np.sort(rng.choice(5 * n_items, n_items, replace=False)) + 1  # sparse ids, as in ML-20M
    years = np.minimum(2015, 1915 + np.floor(rng.beta(5, 1.5, n_items) * 101)).astype(np.int64)
    n_genres = rng.integers(1, 4, n_items)
    genre_picks = rng.integers(0, len(GENRES), (n_items, 3))
    genres = ["|".join(sorted({GENRES[g] for g in row[:n]})) for row, n in zip(genre_picks, n_genres, strict=True)]
    titles = [
        f"Synthetic Movie {m}{', The' if m % 7 == 0 else ''} ({y})" for m, y in zip(movie_ids, years, strict=True)
    ]
    return pl.DataFrame({"movieId": movie_ids, "title": titles, "genres": genres})


def synthesize(spec: SynthSpec) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A MovieLens-like dataset in ML-20M's columns.

    Returns:
        (ratings, movies): `userId, movieId, rating, timestamp` sorted by user then time, and
        `movieId, title, genres`.
    """
    spec.check()
    rng = np.random.default_rng(spec.seed)
    counts = _user_counts(rng, spec)
    log_popularity = rng.normal(0.0, 1.6, spec.items)
    users, items = _draw_items(rng, counts, np.exp(log_popularity))
    ratings = _half_stars(rng, spec, users, items, log_popularity)
    timestamps = _timestamps(rng, spec.users, users)
    movies = _movies(rng, spec.items)
    order = np.lexsort((timestamps, users))
    frame = pl.DataFrame(
        {
            "userId": (users[order] + 1).astype(np.int64),
            "movieId": movies["movieId"].to_numpy()[items[order]],
            "rating": ratings[order],
            "timestamp": timestamps[order],
        }
    )
    return frame, movies


def write_archive(ratings: pl.DataFrame, movies: pl.DataFrame, out: Path, folder: str = "ml-20m") -> None:
    """Write `folder/ratings.csv` and `folder/movies.csv` (headers, UTF-8) into a zip at `out`, atomically."""
    with atomic_write(out) as partial, zipfile.ZipFile(partial, "w") as archive:
        for name, frame in (("ratings.csv", ratings), ("movies.csv", movies)):
            entry = zipfile.ZipInfo(f"{folder}/{name}", date_time=ZIP_DATE)
            entry.compress_type = zipfile.ZIP_DEFLATED
            # Level 1: a third of level 6's time for a slightly larger file; force_zip64 for entries over 2 GiB.
            entry._compresslevel = 1  # type: ignore[attr-defined]  # no public setter before Python 3.13
            with archive.open(entry, "w", force_zip64=True) as handle:
                frame.write_csv(handle, float_precision=1 if name == "ratings.csv" else None)


def write_interactions(ratings: pl.DataFrame, out: Path) -> None:
    """Write the ratings as a team's purchase log: `customer_id,sku,quantity` with text ids (`C0000001`,
    `SKU-000296`), no timestamps, and a quantity of 1 to 3 that grows with the rating (so that it is learnable)."""
    log = ratings.select(
        customer_id=pl.format("C{}", pl.col("userId").cast(pl.String).str.zfill(7)),
        sku=pl.format("SKU-{}", pl.col("movieId").cast(pl.String).str.zfill(6)),
        quantity=(1 + (pl.col("rating") >= 4).cast(pl.Int8) + (pl.col("rating") >= 4.5).cast(pl.Int8)),
    )
    with atomic_write(out) as partial:
        log.write_csv(partial)


def synth(spec: SynthSpec, out: Path, form: str = "movielens") -> dict[str, float]:
    """Generate and write an archive (`form` movielens) or an interactions CSV (`interactions`); returns what was
    made and how long it took."""
    started = time.perf_counter()
    ratings, movies = synthesize(spec)
    generated = time.perf_counter()
    if form == "interactions":
        write_interactions(ratings, out)
    else:
        write_archive(ratings, movies, out)
    return {
        "ratings": ratings.height,
        "users": ratings["userId"].n_unique(),
        "items": ratings["movieId"].n_unique(),
        "generate_seconds": generated - started,
        "write_seconds": time.perf_counter() - generated,
        "bytes": out.stat().st_size,
    }
