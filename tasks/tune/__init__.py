"""Tuning: the search `recs tune` runs (flows/tune.py) and how a nightly takes what it chose.

- `data.py`: the search's data: the training split only (the test split is never read), a seeded user sample,
  and a validation split carved from it.
- `trial.py`: one trial: a model fitted with suggested settings and scored on the validation split, pruned by epoch.
- `search.py`: Optuna's seeded TPE over each model's `ModelSpec.search`, within a budget, resumable.
- `tuned.py`: the dataset's key, the settings carried to the full data, and a nightly's config with them.
"""
