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


def check_name(name: str) -> str:
    """``name`` if it can be used as one component of a file name, else ``ValueError``.

    Names of experiments, models, statistics and runs become parts of paths
    (``$AIVARDA_HOME/b/genbe_<name>.pt``, ``<report>/increment_<name>_z500.png``); a name with a
    path separator, ``..``, a leading dot (hidden or relative), a NUL or control character, or an
    empty name could write outside the intended folder and is refused.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError("a name must not be empty")
    bad = [c for c in ("/", "\\", "\0") if c in name] + [c for c in name if ord(c) < 32]
    if bad:
        raise ValueError(f"name {name!r} must not contain path separators or control characters")
    if ".." in name or name.startswith("."):
        raise ValueError(f"name {name!r} must not contain '..' or start with '.' (it is used in file names)")
    return name
