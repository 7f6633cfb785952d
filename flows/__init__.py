"""Prefect flows: they wire the stages of `tasks` together and hold no data logic.

Kept free of imports so that `recs --help` does not pay for importing Prefect.
"""

import tasks  # noqa: F401  (before anything loads polars: tasks/__init__.py sets how polars frees memory)
