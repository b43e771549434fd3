"""Files written atomically, and aivarda's versioned torch files.

Every file aivarda writes goes to a temporary sibling first and is renamed onto its name, so an
interrupted write never leaves a partial file behind and readers see the old file or the new one.
The temporary name keeps the suffix (``.x.tmp123.npy``) because numpy appends one otherwise.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from aivarda.errors import DataError


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=1, default=str))


def save_torch_file(path: str | Path, payload: dict[str, Any]) -> Path:
    """``torch.save`` a dict (which carries its own ``format`` and ``version`` keys) atomically."""
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_torch_file(path: str | Path, fmt: str, version: int, what: str, hint: str = "") -> dict[str, Any]:
    """Load a dict saved by :func:`save_torch_file` and check its ``format``/``version``.

    A missing, unreadable or foreign file, or one written by a newer aivarda, is one DataError line
    naming the file and ``what`` was expected (``hint`` says how to make one).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found" + (f" ({hint})" if hint else ""))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 — any unreadable file is a user error here
        raise DataError(f"{path}: not a readable torch file ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise DataError(f"{path}: not an aivarda {what} (no format={fmt!r})")
    if int(payload.get("version", 0)) > version:
        raise DataError(f"{path}: {what} version {payload['version']} is newer than this aivarda ({version})")
    return payload
