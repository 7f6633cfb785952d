"""The pipeline's stages: plain functions over polars and Arrow data, each with a thin Prefect task beside it."""

import os

# polars' allocator (jemalloc) keeps the pages a dropped frame freed for ten seconds by default, and longer when polars
# allocates no more: after a 20M-rating frame was read and dropped, 330 MB stayed resident that torch could not
# use, and each stage's frames added to the run's peak. Freed pages go back at once instead. It must be set before
# polars loads; an operator's own setting wins.
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")
