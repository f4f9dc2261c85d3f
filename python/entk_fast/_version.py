"""The installed package's version (``0+unknown`` when running from a source tree)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]


def _version() -> str:
    try:
        return version("entk-fast")
    except PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"


__version__ = _version()
