"""Where aivarda keeps caches (``$AIVARDA_HOME``, default ``~/.cache/aivarda``) and its shipped
assets (``aivarda/assets``: the spun-up nature-run state and the trained default models)."""

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


ASSETS = Path(__file__).resolve().parent / "assets"
"""The package's shipped artefacts (``${AIVARDA_ASSETS}`` in config paths)."""


def expand_path(path: str | Path) -> Path:
    """``${AIVARDA_HOME}`` → :func:`aivarda_home`, ``${AIVARDA_ASSETS}`` → :data:`ASSETS`, ``~`` → home."""
    text = str(path).replace("${AIVARDA_HOME}", str(aivarda_home())).replace("${AIVARDA_ASSETS}", str(ASSETS))
    return Path(text).expanduser()

