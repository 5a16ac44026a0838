"""The installed distribution's version, for `--version`, the start log line and `/metrics`."""

from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "messenger-bridge"


def version() -> str:
    """The version pip installed (`pyproject.toml`'s), or `0+unknown` when run from a bare
    source tree that was never installed."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "0+unknown"
