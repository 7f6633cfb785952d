"""Business rules on the published lists, and the list for users the model has never seen.

The config's rules (`exclude_items`, `min_item_ratings`, `include_genres`, `exclude_genres`, `min_year`,
`max_year`) are resolved once per run, after reindexing and before any training, into one boolean per item
index: `ListRules.allowed`. Scoring then blanks the other items before its top-k (tasks/scoring.py), so a user
still gets `top_n` items wherever that many allowed items remain unrated. Evaluation follows the rules only
with `filter_evaluation`.

Every mistake in a rule is found here, before training, with the setting named: a file that does not exist, a
line that is not an id, an id not in the catalogue, an unknown genre, rules that leave fewer than `top_n` items.

`fallback_list` is the top-n for a user with no history: the most rated items that the rules allow.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import PipelineConfig, setting
from tasks.reindex import IdMaps
from tasks.run_folder import RunFolder

log = logging.getLogger(__name__)


class ListRuleError(ValueError):
    """A business rule cannot be applied as written; the message names the setting. Nothing was trained."""


@dataclass(frozen=True)
class ListRules:
    """The rules resolved against tonight's catalogue: `allowed[i]` is whether item index i may be recommended."""

    allowed: np.ndarray  # bool, one per item index
    description: str  # the rules in words ("none" when no rule is set)

    @classmethod
    def none(cls, n_items: int) -> ListRules:
        return cls(np.ones(n_items, dtype=bool), "none")

    @property
    def n_allowed(self) -> int:
        return int(self.allowed.sum())

    @property
    def restricts(self) -> bool:
        return not bool(self.allowed.all())

    def save(self, run_dir: Path) -> None:
        np.save(RunFolder(run_dir).allowed_items, self.allowed)

    @classmethod
    def load(cls, run_dir: Path, n_items: int) -> ListRules:
        """The rules a run saved in its folder; none (every item allowed) when it saved none."""
        path = RunFolder(run_dir).allowed_items
        return cls(np.load(path), "as saved by the run") if path.exists() else cls.none(n_items)

    def for_evaluation(self, config: PipelineConfig) -> np.ndarray | None:
        """What evaluation's top-k may show: these rules with `filter_evaluation`, else every item (None)."""
        return self.allowed if config.filter_evaluation and self.restricts else None


def ratings_per_item(ratings: pl.DataFrame | pl.LazyFrame, n_items: int) -> np.ndarray:
    """How many ratings each item index has (`item_idx`); a query over a file is counted by the streaming engine,
    never read whole."""
    counts = ratings.lazy().group_by("item_idx").len().collect(engine="streaming")
    per_item = np.zeros(n_items, dtype=np.int64)
    per_item[counts["item_idx"].to_numpy()] = counts["len"].to_numpy()
    return per_item


def read_item_ids(path: Path) -> list[tuple[int, int | str]]:
    """Item ids from a file, one a line, with their line numbers, as written (whole numbers as ints); blank lines
    and `#` comments are skipped.

    Raises:
        ListRuleError: the file does not exist.
    """
    if not path.is_file():
        raise ListRuleError(
            f"{setting('exclude_items')}: no such file {str(path)!r}; expected a file of item ids, one a line"
        )
    lines = enumerate((line.split("#", 1)[0].strip() for line in path.read_text().splitlines()), start=1)
    return [(number, int(text) if text.lstrip("+-").isdigit() else text) for number, text in lines if text]


def _genre_mask(wanted: list[str], name: str, genres: pl.Series, known: list[str]) -> np.ndarray:
    """Per item, whether it has one of `wanted` (matched without case); an unknown genre is a ListRuleError."""
    by_lower = {genre.lower(): genre for genre in known}
    unknown = [genre for genre in wanted if genre.lower() not in by_lower]
    if unknown:
        hints = [
            f"{genre!r}"
            + (
                f" (did you mean {by_lower[close[0]]!r}?)"
                if (close := difflib.get_close_matches(genre.lower(), list(by_lower), n=1))
                else ""
            )
            for genre in unknown
        ]
        raise ListRuleError(
            f"{setting(name)}: unknown genre {', '.join(hints)}; the catalogue's genres are {', '.join(sorted(known))}"
        )
    chosen = pl.Series([by_lower[genre.lower()] for genre in wanted], dtype=pl.String)
    return genres.list.eval(pl.element().is_in(chosen.implode())).list.any().fill_null(False).to_numpy()


def resolve_rules(
    config: PipelineConfig, items: pl.DataFrame, ratings: pl.DataFrame | pl.LazyFrame, maps: IdMaps
) -> ListRules:
    """The config's business rules as one boolean per item index of `maps`.

    Args:
        config: the rule fields and `top_n`.
        items: the catalogue: `item_id`, `title`, `genres` (a list), `year`.
        ratings: all indexed ratings (`item_idx`): `min_item_ratings` counts them.
        maps: the run's id maps; an item in the catalogue with no rating has no index and is never recommended.

    Raises:
        ListRuleError: a rule cannot be applied (see the module docstring); the message names the setting.
    """
    catalogue = maps.items.join(items.select("item_id", "genres", "year"), on="item_id", how="left")  # item_idx order
    allowed = np.ones(maps.n_items, dtype=bool)
    said = []
    if config.exclude_items is not None:
        ids = _excluded_ids(config.exclude_items, items, maps)
        allowed &= ~catalogue["item_id"].is_in(ids.implode()).to_numpy()
        said.append(f"{ids.n_unique()} excluded item(s)")
    if config.min_item_ratings:
        allowed &= ratings_per_item(ratings, maps.n_items) >= config.min_item_ratings
        said.append(f"at least {config.min_item_ratings} ratings")
    known_genres = items["genres"].explode().drop_nulls().unique().to_list()
    if config.include_genres:
        allowed &= _genre_mask(config.include_genres, "include_genres", catalogue["genres"], known_genres)
        said.append(f"genres {', '.join(config.include_genres)}")
    if config.exclude_genres:
        allowed &= ~_genre_mask(config.exclude_genres, "exclude_genres", catalogue["genres"], known_genres)
        said.append(f"no {', '.join(config.exclude_genres)}")
    year = catalogue["year"]
    if config.min_year is not None:
        allowed &= (year >= config.min_year).fill_null(False).to_numpy()
        said.append(f"from {config.min_year}")
    if config.max_year is not None:
        allowed &= (year <= config.max_year).fill_null(False).to_numpy()
        said.append(f"until {config.max_year}")
    return _long_enough(ListRules(allowed, "; ".join(said) or "none"), maps.n_items, config.top_n)


def _excluded_ids(given: list[int | str] | Path, items: pl.DataFrame, maps: IdMaps) -> pl.Series:
    """`exclude_items`'s ids (read from its file when it names one) in the catalogue's id type; a ListRuleError
    names any not in the catalogue."""
    numbered = read_item_ids(given) if isinstance(given, Path) else list(enumerate(given, start=1))
    ids = [value for _, value in numbered]
    where = f" (file {given})" if isinstance(given, Path) else ""
    id_type = maps.items.schema["item_id"]
    if id_type == pl.String:
        typed = pl.Series("item_id", [str(i) for i in ids], dtype=pl.String)
    elif words := [(number, value) for number, value in numbered if isinstance(value, str)]:
        at = f" file {given}, line {words[0][0]}:" if isinstance(given, Path) else ":"
        raise ListRuleError(
            f"{setting('exclude_items')}{at} {words[0][1]!r} is not an item id: this catalogue's ids are whole numbers"
        )
    else:
        typed = pl.Series("item_id", ids, dtype=pl.Int64)
    known = pl.concat([items["item_id"].cast(id_type), maps.items["item_id"]]).unique()
    missing = typed.filter(~typed.is_in(known.implode())).unique().sort().to_list()
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise ListRuleError(
            f"{setting('exclude_items')}{where}: item id(s) {shown} are not in the catalogue ({items.height:,} items)"
        )
    return typed


def _long_enough(rules: ListRules, n_items: int, top_n: int) -> ListRules:
    """`rules`, when they and the catalogue leave at least `top_n` items; a ListRuleError saying which does not."""
    if n_items < top_n:
        raise ListRuleError(
            f"{setting('top_n')} {top_n:,} is more than the {n_items:,} items in the "
            f"catalogue: no list could be that long; set it to at most {n_items:,}"
        )
    if rules.n_allowed < top_n:
        raise ListRuleError(
            f"the business rules ({rules.description}) leave {rules.n_allowed} of {n_items:,} "
            f"items to recommend, fewer than {setting('top_n')} {top_n}; loosen them"
        )
    return rules


def fallback_list(ratings: pl.DataFrame | pl.LazyFrame, maps: IdMaps, rules: ListRules, top_n: int) -> pl.DataFrame:
    """The list for a user with no history: the `top_n` items with the most ratings that the rules allow, ties
    by the lower item id.

    Returns:
        `item_id`, `rank` (1 = best), `score` (the item's number of ratings).
    """
    counts = ratings_per_item(ratings, maps.n_items)
    popular = pl.DataFrame({"item_idx": np.arange(maps.n_items, dtype=np.int32), "score": counts.astype(np.float32)})
    popular = popular.filter(pl.Series(rules.allowed)).sort("score", "item_idx", descending=[True, False]).head(top_n)
    ranked = popular.with_columns(rank=pl.int_range(1, popular.height + 1, dtype=pl.Int16))
    return maps.to_dataset_ids(ranked).select("item_id", "rank", "score")


@task(name="list-rules", cache_policy=NO_CACHE)
def list_rules_task(
    config: PipelineConfig, items: pl.DataFrame, ratings: pl.DataFrame | pl.LazyFrame, maps: IdMaps, run_dir: Path
) -> ListRules:
    """Prefect wrapper of `resolve_rules`; saves the result in the run's folder for a cluster's shards."""
    rules = resolve_rules(config, items, ratings, maps)
    rules.save(run_dir)
    if rules.restricts:
        log.info(
            "business rules: %s; %d of %d items may be recommended", rules.description, rules.n_allowed, maps.n_items
        )
    return rules


@task(name="fallback-list", cache_policy=NO_CACHE)
def fallback_task(ratings: pl.DataFrame | pl.LazyFrame, maps: IdMaps, rules: ListRules, top_n: int) -> pl.DataFrame:
    """Prefect wrapper of `fallback_list`."""
    return fallback_list(ratings, maps, rules, top_n)
