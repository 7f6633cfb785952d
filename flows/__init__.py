"""Prefect flows: they wire the stages of `tasks` together and hold no data logic.

Kept free of imports so that `recs --help` does not pay for importing Prefect.
"""
