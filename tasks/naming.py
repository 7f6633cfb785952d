"""How messages name a setting: its config field and its `recs run` option, so that people who write deployments'
parameters and people who pass flags both recognise it. Light on purpose: every module may import it."""

from __future__ import annotations


def flag(setting: str) -> str:
    """The `recs run` option of a config field: `top_n` -> `--top-n`, `mlp.epochs` -> `--mlp-epochs`."""
    return "--" + setting.replace(".", "-").replace("_", "-")


def setting(name: str) -> str:
    """A config field as messages name it, with its option: `lock_timeout_seconds (--lock-timeout-seconds)`.

    Messages reach people who set the field in a deployment's parameters and people who pass the flag."""
    return f"{name} ({flag(name)})"
