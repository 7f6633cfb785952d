"""Where a run's ratings come from: the source's scheme, its local path, and the form that is safe to log and store.

Light on purpose (no model, no torch): `recs` checks a source with these before anything heavy starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from tasks.naming import setting

ML_100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
SOURCE_SCHEMES = ("http", "https", "file")
# Where a run finds its source when its config names none (before ML_100K_URL): a deployment's source changes
# with these, read when the run starts, without editing deploy/prefect.yaml or deploying again.
SOURCE_ENVIRONMENT = "RECS_SOURCE"  # the environment of `recs run`, `recs serve` or the worker; wins over:
SOURCE_VARIABLE = "recs_source"  # a Prefect Variable on the server: `prefect variable set recs_source PATH-OR-URL`

# The first run on a machine without internet access meets this: the default source is GroupLens's URL.
OFFLINE_HINT = (
    f"If this machine has no internet access, set {setting('source')} to a local copy of the archive, "
    "e.g. `recs run --source path/to/ml-100k.zip` (a path or a file:// URL)"
)
# A deployment's run meets a source it cannot reach: the YAML is not where a team should have to change it.
DEPLOYMENT_SOURCE_HINT = (
    f"A deployment's run whose config names no source reads it from the environment variable {SOURCE_ENVIRONMENT} "
    f"of the worker, else from the Prefect Variable {SOURCE_VARIABLE}: set that to a path or URL the worker can "
    f"read (`prefect variable set {SOURCE_VARIABLE} /path/to/ml-100k.zip --overwrite`), or give one run its "
    """source (`prefect deployment run nightly/nightly --params '{"source": "/path/to/ml-100k.zip"}'`)"""
)


def source_from_environment() -> str | None:
    """The source the environment variable RECS_SOURCE names, or None when it is unset or empty."""
    return os.environ.get(SOURCE_ENVIRONMENT) or None


def redact(source: str) -> str:
    """The source, safe to log and store: a URL's user:password and every query value and fragment replaced.

    A query string is where signed URLs keep their credentials (S3's `X-Amz-Signature` and
    `X-Amz-Security-Token`, GCS's `X-Goog-Signature`, Azure's SAS `sig`, a plain `token=`): every value is
    replaced, the names kept, so the URL still says what it was (`...?X-Amz-Signature=***&token=***`).
    """
    if "://" not in source:
        return source  # a path: nothing in it is a credential
    parts = urlsplit(source)
    if parts.username is not None or parts.password is not None:
        host = parts.hostname or ""
        parts = parts._replace(netloc=f"***@{host}" + (f":{parts.port}" if parts.port else ""))
    if parts.query:
        names = [pair.partition("=")[0] for pair in parts.query.split("&") if pair]
        parts = parts._replace(query="&".join(f"{name}=***" for name in names))
    if parts.fragment:
        parts = parts._replace(fragment="***")
    return urlunsplit(parts)


def source_scheme(source: str) -> str:
    """The source's URL scheme, lower case: http, https or file; "" for a plain path.

    A colon alone does not make a URL: an existing file is a path whatever its name, and so is any name whose
    colon is not followed by `//` (`nightly-2024-01-01T03:00.zip`, `C:/data/ml.zip`).

    Raises:
        ValueError: another scheme followed by `//` (ftp://, s3://, ...), naming it and the ones supported.
    """
    scheme = urlsplit(source).scheme.lower()
    if not scheme or scheme in SOURCE_SCHEMES:
        return scheme
    if Path(source).exists() or not source[len(scheme) + 1 :].startswith("//"):
        return ""
    raise ValueError(f"source {redact(source)!r}: scheme {scheme!r} is not supported (use http, https, file or a path)")


def local_path(source: str) -> Path | None:
    """The file a `file://` URL or plain path names; None for http(s).

    Raises:
        ValueError: an unsupported scheme (see `source_scheme`).
    """
    scheme = source_scheme(source)
    if scheme in ("http", "https"):
        return None
    return Path(unquote(urlsplit(source).path)) if scheme == "file" else Path(source)


def local_source_problem(source: str) -> str | None:
    """Why a local source cannot be read (no such file or folder), or None; URLs are checked when fetched.

    Raises:
        ValueError: an unsupported scheme (see `source_scheme`).
    """
    path = local_path(source)
    if path is None:
        return None
    if not path.exists():
        return f"no such file {str(path)!r}"
    return None
