"""Columns get their roles from the headers teams' files have (the real files of ../shared/datasets/real among
them), by position without a header, or from a setting; what cannot be resolved is refused with the header and
the setting to use."""

from __future__ import annotations

import zipfile

import pytest

from tasks.ingest.columns import ColumnError, resolve_columns
from tests.helpers import DATASETS

REAL = DATASETS / "real"


def _first_line(archive: str, member: str) -> list[str]:
    with zipfile.ZipFile(REAL / archive) as zf, zf.open(member) as file:
        return file.readline().decode().rstrip("\r\n").split("\t")


def test_the_real_files_headers_resolve_without_settings():
    anime = _first_line("anime.zip", "anime/anime_ratings.dat")
    assert anime == ["User_ID", "Anime_ID", "Feedback"]
    assert resolve_columns(anime, 3) == {"user": 0, "item": 1, "rating": 2}
    lastfm = _first_line("lastfm-2k.zip", "lastfm-2k/user_artists.dat")
    assert resolve_columns(lastfm, 3) == {"user": 0, "item": 1, "weight": 2}
    first = (REAL / "amazon-video-games.txt").open().readline().split()
    assert len(first) == 2 and resolve_columns(None, 2) == {"user": 0, "item": 1}  # no header: by position
    movielens = ["userId", "movieId", "rating", "timestamp"]
    assert resolve_columns(movielens, 4) == {"user": 0, "item": 1, "rating": 2, "timestamp": 3}
    assert resolve_columns(None, 4) == {"user": 0, "item": 1, "rating": 2, "timestamp": 3}  # u.data's order
    assert resolve_columns(["Customer ID", "SKU", "Quantity", "Date"], 4) == {
        "user": 0,
        "item": 1,
        "weight": 2,
        "timestamp": 3,
    }


def test_settings_name_columns_by_header_name_or_position():
    assert resolve_columns(["visitor", "thing", "n"], 3, {"item": "THING", "weight": 3}) == {
        "user": 0,
        "item": 1,
        "weight": 2,
    }
    # a header-less file of counts: the third column is the weight, not the default rating
    assert resolve_columns(None, 3, {"weight": 3}) == {"user": 0, "item": 1, "weight": 2}


@pytest.mark.parametrize(
    ("header", "n_columns", "given", "said"),
    [
        (
            ["a", "b", "c"],
            3,
            None,
            "header a,b,c: no user column (a name such as user/userid/users/visitorid); "
            "name it with user_column (--user-column)",
        ),
        (
            ["user", "item", "rating", "score"],
            4,
            None,
            "header user,item,rating,score: 'rating' and 'score' could "
            "each be the rating; name one with rating_column (--rating-column)",
        ),
        (
            ["user", "item"],
            2,
            {"rating": "stars"},
            "rating_column (--rating-column) is 'stars', which is not a column of the file (header: user,item)",
        ),
        (None, 2, {"rating": 5}, "rating_column (--rating-column) is 5, but the file has 2 columns"),
        (None, 3, {"user": 1, "item": 1}, "no header, 3 columns: column 1 is given two roles, user and item"),
        (None, 1, None, "no header, 1 column: no item column"),
        (["user", "item"], 2, {"price": 2}, "no such role price; the roles are user, item, rating, weight, timestamp"),
    ],
)
def test_what_cannot_be_resolved_is_refused_naming_the_header_and_the_setting(header, n_columns, given, said):
    with pytest.raises(ColumnError) as refused:
        resolve_columns(header, n_columns, given)
    assert str(refused.value).startswith(said), str(refused.value)
