"""What changed since the published run's data: the users to fold in, and every interaction they have now.

Two ways to learn it. The source read whole (a newer archive or export of the nightly's source) is compared with the
run's own data (its split files, which together hold every rating the published model was fitted on): a user is
new, or changed, when a row of theirs is new, changed or gone. Or a file of only the rows that arrived since
(`fold_in.new_rows`) is laid over the users' rows in the run's data: a row for a pair they had replaces it (explicit
ratings), or adds its weight to it (implicit feedback, whose `rating` is log(1 + weight)).

Only the changed users' rows are ever collected: the comparison runs in polars's streaming engine, and the run's data
is read for those users alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from tasks.run_folder import RunFolder

KEY = ["user_id", "item_id"]


@dataclass(frozen=True)
class Changes:
    """The users to fold in and what they have now, in the dataset's own ids."""

    histories: pl.DataFrame  # user_id, item_id, rating: every interaction of the users to fold in, as of now
    new_users: pl.Series  # user_ids the published run did not know
    changed_users: pl.Series  # user_ids it knew whose interactions changed
    n_new_rows: int  # rows new or changed since the run's data
    n_changed_rows: int  # of those, (user, item) pairs the run's data holds with another rating (a re-rating)
    n_removed_rows: int  # (user, item) pairs of the run's data that the source no longer has
    n_published_rows: int
    n_published_users: int

    @property
    def users(self) -> pl.Series:
        return pl.concat([self.new_users, self.changed_users])

    def describe(self) -> str:
        return (
            f"{self.n_new_rows:,} new or changed rows ({self.n_changed_rows:,} changed), {self.n_removed_rows:,} "
            f"removed: {self.new_users.len():,} new users, {self.changed_users.len():,} changed"
        )


def published_data(folder: RunFolder, users: pl.DataFrame | None = None) -> pl.LazyFrame:
    """Every interaction the published run was fitted on (its training and test splits), in the dataset's ids:
    `user_id`, `item_id`, `rating`, `timestamp`; with `users` (user_id), only theirs, read by index from the files
    so that nobody else's rows are ever joined."""
    user_map, item_map = pl.scan_parquet(folder.user_map), pl.scan_parquet(folder.item_map)
    rows = pl.concat([pl.scan_parquet(folder.train), pl.scan_parquet(folder.test)])
    if users is not None:
        wanted = user_map.join(users.lazy(), on="user_id", how="semi").select("user_idx").collect()
        rows = rows.filter(pl.col("user_idx").is_in(wanted["user_idx"].implode()))
    return rows.join(user_map, on="user_idx").join(item_map, on="item_idx").select(*KEY, "rating", "timestamp")


def published_size(folder: RunFolder) -> int:
    """How many interactions the published run was fitted on (from the files' footers)."""
    return pl.concat([pl.scan_parquet(folder.train), pl.scan_parquet(folder.test)]).select(pl.len()).collect().item()


def _same_id_types(frame: pl.LazyFrame, like: pl.Schema) -> pl.LazyFrame:
    """`frame`'s ids in the types the run's maps have (a later export may read `42` where the run read text)."""
    return frame.with_columns(pl.col(column).cast(like[column]) for column in KEY)


def changes_in_source(source: pl.LazyFrame, folder: RunFolder) -> Changes:
    """The source as it is now (`user_id`, `item_id`, `rating`) against the run's data: the users with a row new,
    changed or gone, and all their rows now."""
    published = published_data(folder)
    source = _same_id_types(source.select(*KEY, "rating"), published.collect_schema())
    compared = published.select(*KEY, "rating")
    # one pass over both for what is new or changed, one for what is gone: small frames, collected once each
    fresh = source.join(compared, on=[*KEY, "rating"], how="anti", nulls_equal=True).collect(engine="streaming")
    gone = compared.join(source, on=KEY, how="anti").select(KEY).collect(engine="streaming")
    users = pl.concat([fresh.select("user_id"), gone.select("user_id")]).unique().sort("user_id")
    theirs = published_data(folder, users).select(KEY).collect(engine="streaming")
    n_changed = fresh.join(theirs, on=KEY, how="semi").height
    histories = source.join(users.lazy(), on="user_id", how="semi").collect(engine="streaming")
    return _changes(histories, users, folder, (fresh.height, n_changed, gone.height))


def changes_from_new_rows(new_rows: pl.DataFrame, folder: RunFolder, implicit: bool) -> Changes:
    """Rows that arrived since the run's data (`user_id`, `item_id`, `rating`) laid over their users' rows in it:
    a pair's new row replaces its rating, or with `implicit`, adds its weight."""
    user_types = pl.scan_parquet(folder.user_map).collect_schema()
    item_types = pl.scan_parquet(folder.item_map).collect_schema()
    new_rows = new_rows.select(
        pl.col("user_id").cast(user_types["user_id"]), pl.col("item_id").cast(item_types["item_id"]), "rating"
    )
    published = published_data(folder, new_rows.select(pl.col("user_id").unique()))
    before = published.select(*KEY, "rating").collect(engine="streaming")
    fresh = new_rows if implicit else new_rows.join(before, on=[*KEY, "rating"], how="anti")
    users = fresh.select(pl.col("user_id").unique().sort())
    before = before.join(users, on="user_id", how="semi")
    if implicit:  # log(1 + w1 + w2): the weights add up, as the nightly adds a pair's rows
        both = pl.concat([before, fresh]).group_by(KEY, maintain_order=True)
        histories = both.agg((pl.col("rating").exp() - 1).sum().log1p().alias("rating"))
    else:
        histories = pl.concat([before, fresh]).unique(KEY, keep="last", maintain_order=True)
    n_changed = 0 if implicit else fresh.join(before, on=KEY, how="semi").height  # more plays change nothing past
    return _changes(histories, users, folder, (fresh.height, n_changed, 0))


def _changes(histories: pl.DataFrame, users: pl.DataFrame, folder: RunFolder, counts: tuple[int, int, int]) -> Changes:
    """`Changes` of these users; `counts`: rows new or changed, changed, removed."""
    published_users = pl.read_parquet(folder.user_map, columns=["user_id"])
    known = users.join(published_users, on="user_id", how="semi")["user_id"]
    new = users.join(published_users, on="user_id", how="anti")["user_id"]
    return Changes(
        histories.select(*KEY, pl.col("rating").cast(pl.Float32)).sort(KEY),
        new,
        known,
        *counts,
        published_size(folder),
        published_users.height,
    )
