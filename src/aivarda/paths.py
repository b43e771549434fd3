"""Where aivarda keeps caches: ``$AIVARDA_HOME`` (default ``~/.cache/aivarda``)."""

from __future__ import annotations

import os
from pathlib import Path


def aivarda_home() -> Path:
    """The cache root, ``$AIVARDA_HOME`` or ``~/.cache/aivarda`` (not created here)."""
    return Path(os.environ.get("AIVARDA_HOME", "~/.cache/aivarda")).expanduser()


def cache_dir(*parts: str) -> Path:
    """A sub-directory of the cache root, created on demand."""
    path = aivarda_home().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
