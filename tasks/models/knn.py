"""Memory-based collaborative filtering: user-user and item-item k nearest neighbours.

Similarity is mean-centred cosine: each rating minus its row's mean (the user's mean for `user_knn`, the
item's for `item_knn`), then the cosine of two rows over all columns, shrunk by n / (n + shrinkage) where
n counts the columns both rows rated. Each row keeps its `neighbours` most similar rows with a positive
similarity, found `chunk` rows at a time: a chunk x rows block of similarities exists at once, never the
full rows x rows matrix.

Prediction (item_knn; user_knn swaps users and items):
    r(u, i) = mean_i + sum_{j in N(i), u rated j} s_ij (r_uj - mean_j) / sum_{j in N(i), u rated j} |s_ij|
and mean_i when u rated none of i's neighbours. Scores for ranking are these predicted ratings.
"""

from __future__ import annotations

import polars as pl
import torch
from pydantic import Field

from tasks.models.base import Interactions, ModelParams, RatingMatrix, Recommender, index_tensors, pair_scores


def centred(matrix: RatingMatrix) -> tuple[RatingMatrix, torch.Tensor]:
    """The matrix with each row's mean taken from its values, and those means."""
    means = matrix.row_means()
    out = matrix.with_values(matrix.values - means[matrix.row_of_values()])
    return out, means


@torch.no_grad()
def top_neighbours(matrix: RatingMatrix, k: int, shrinkage: float, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's k most similar other rows by (shrunk) cosine, computed `chunk` rows at a time.

    Returns:
        (indices, similarities), both (n_rows, min(k, n_rows - 1)); a neighbour slot whose similarity is
        not positive holds similarity 0 (it then counts for nothing in a prediction).
    """
    n_rows = matrix.shape[0]
    k = min(k, n_rows - 1)
    values, pattern = matrix.csr(), matrix.csr(binary=True)
    norms = matrix.row_sums(matrix.values.pow(2)).sqrt()
    indices = torch.empty((n_rows, k), dtype=torch.int64, device=matrix.values.device)
    similarities = torch.empty((n_rows, k), device=matrix.values.device)
    for start in range(0, n_rows, chunk):
        rows = torch.arange(start, min(start + chunk, n_rows), device=matrix.values.device)
        dots = (values @ matrix.rows(rows).T).T  # (chunk, n_rows)
        sims = dots / (norms[rows, None] * norms[None, :]).clamp(min=1e-12)
        if shrinkage:
            both = (pattern @ matrix.rows(rows, binary=True).T).T
            sims *= both / (both + shrinkage)
        sims[torch.arange(len(rows)), rows] = float("-inf")  # a row is not its own neighbour
        top, where = torch.topk(sims, k, dim=1)
        indices[rows], similarities[rows] = where, top.clamp(min=0)
    return indices, similarities


class _Neighbourhood(Recommender):
    """Holds the centred training ratings in the orientation scoring reads, the means and each row's neighbours.

    item_knn's neighbours are items and its history is users x items (a chunk of users' rows is read);
    user_knn's neighbours are users and its history is items x users (multiplied by a chunk's weights).
    """

    neighbours_are_items: bool

    means: torch.Tensor
    neighbours: torch.Tensor
    similarities: torch.Tensor

    def __init__(self, n_users: int, n_items: int, nnz: int, k: int) -> None:
        super().__init__(n_users=n_users, n_items=n_items, nnz=nnz, k=k)
        n = n_items if self.neighbours_are_items else n_users
        self.history = RatingMatrix(*((n_users, n_items) if self.neighbours_are_items else (n_items, n_users)), nnz)
        self.register_buffer("means", torch.zeros(n))
        self.register_buffer("neighbours", torch.zeros((n, k), dtype=torch.int64))
        self.register_buffer("similarities", torch.zeros((n, k)))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return pair_scores(self.score_users, users, items)

    @staticmethod
    def _average(means: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
        return means + torch.where(denominator > 0, numerator / denominator.clamp(min=1e-12), 0.0)


class ItemKnn(_Neighbourhood):
    """Item-item kNN: a user's rating of an item from their ratings of its most similar items."""

    neighbours_are_items = True
    predicts_unseen = False  # an item never rated has no neighbours and no mean: the `bias` fallback predicts

    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        n, k = self.neighbours.shape
        indptr = torch.arange(0, n * k + 1, k, device=self.neighbours.device)
        weights = torch.sparse_csr_tensor(indptr, self.neighbours.flatten(), self.similarities.flatten(), (n, n))
        deviations, rated = self.history.rows(users), self.history.rows(users, binary=True)  # (c, n_items)
        return self._average(self.means[None, :], (weights @ deviations.T).T, (weights.abs() @ rated.T).T)


class UserKnn(_Neighbourhood):
    """User-user kNN: a user's rating of an item from their most similar users' ratings of it."""

    neighbours_are_items = False

    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        weights = torch.zeros((len(users), self.means.numel()), device=self.similarities.device)
        weights.scatter_(1, self.neighbours[users], self.similarities[users])  # (c, n_users)
        numerator = (self.history.csr() @ weights.T).T  # (c, n_items)
        denominator = (self.history.csr(binary=True) @ weights.abs().T).T
        return self._average(self.means[users, None], numerator, denominator)


class KnnParams(ModelParams):
    """Mean-centred cosine similarity, k nearest neighbours, weighted average."""

    neighbours: int = Field(320, ge=1, description="Neighbours kept per user (user_knn) or item (item_knn).")
    shrinkage: float = Field(25.0, ge=0, description="Similarity shrunk by n / (n + shrinkage), n = co-ratings.")
    chunk: int = Field(1024, ge=1, description="Rows whose similarities are computed at once.")


class UserKnnParams(KnnParams):
    """`user_knn`: mean-centred cosine similarity of users, k nearest neighbours, weighted average."""

    neighbours: int = Field(400, ge=1, description="Neighbours kept per user.")


class ItemKnnParams(KnnParams):
    """`item_knn`: mean-centred cosine similarity of items, k nearest neighbours, weighted average."""

    neighbours: int = Field(320, ge=1, description="Neighbours kept per item.")


def _fit_knn(
    cls: type[_Neighbourhood], interactions: Interactions, device: torch.device, params: KnnParams
) -> tuple[_Neighbourhood, list[dict]]:
    n_users, n_items = interactions.n_users, interactions.n_items
    users, items, ratings = index_tensors(interactions.ratings, device)
    if cls.neighbours_are_items:
        by_neighbour, means = centred(RatingMatrix.build(items, users, ratings, (n_items, n_users)))
    else:
        by_neighbour, means = centred(RatingMatrix.build(users, items, ratings, (n_users, n_items)))
    neighbours, similarities = top_neighbours(by_neighbour, params.neighbours, params.shrinkage, params.chunk)
    history = by_neighbour.transpose()
    module = cls(n_users, n_items, len(history.values), neighbours.shape[1]).to(device)
    module.history.load_state_dict(history.state_dict())
    module.means.copy_(means)
    module.neighbours.copy_(neighbours)
    module.similarities.copy_(similarities)
    return module, []


def fit_item_knn(
    interactions: Interactions,
    params: ItemKnnParams,
    device: torch.device,
    validation: pl.DataFrame | None = None,
    *,
    seed: int = 0,
    label: str = "train",
) -> tuple[_Neighbourhood, list[dict]]:
    """`item_knn`: each item's neighbours among the items."""
    return _fit_knn(ItemKnn, interactions, device, params)


def fit_user_knn(
    interactions: Interactions,
    params: UserKnnParams,
    device: torch.device,
    validation: pl.DataFrame | None = None,
    *,
    seed: int = 0,
    label: str = "train",
) -> tuple[_Neighbourhood, list[dict]]:
    """`user_knn`: each user's neighbours among the users."""
    return _fit_knn(UserKnn, interactions, device, params)
