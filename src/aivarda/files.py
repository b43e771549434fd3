"""Files written atomically, checksummed files, and aivarda's versioned torch files.

Every file aivarda writes goes to a temporary sibling first, is flushed to disk (``fsync``) and
renamed onto its name, and the rename is flushed (``fsync`` of the folder), so an interrupted write
or a power cut never leaves a partial file behind and readers see the old file or the new one. The
temporary name keeps the suffix (``.x.tmp123.npy``) because numpy appends one otherwise; leftovers
of killed writers match :data:`TMP_PATTERN` and are removed by :func:`remove_stale_tmp`.

Files that are read back (a run directory's state, records and ensemble members) carry a SHA-256
checksum: JSON files embed it under :data:`CHECKSUM_KEY` (:func:`write_checked_json`), other files
have a sidecar ``NAME.sha256`` (:func:`write_checksum`); :func:`read_checked_json` and
:func:`verify_checksum` name a damaged file in one :class:`~aivarda.errors.DataError` line.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
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
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


TMP_PATTERN = re.compile(r"^\..+\.tmp(\d+|-\d+-\d+)?(\.[A-Za-z0-9]+)?$")
"""Names of the temporary siblings of :func:`atomic_write` (``.state.tmp123.json``), of Zarr stores
being built (``.analyses.zarr.tmp``) and of nature runs being generated (``.x.zarr.tmp-PID-NS``)."""


def fsync_path(path: str | Path) -> None:
    """Flush a file's data, or a folder's entries (a rename in it), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems cannot fsync a folder
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def remove_stale_tmp(directory: str | Path) -> list[Path]:
    """Remove the leftovers of killed writers (:data:`TMP_PATTERN`) anywhere under ``directory``;
    call it only while no writer can be running there (e.g. holding the run directory's lock)."""
    removed: list[Path] = []
    root = Path(directory)
    if not root.is_dir():
        return removed
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [d for d in dirnames if TMP_PATTERN.match(d)] + [f for f in filenames if TMP_PATTERN.match(f)]:
            path = Path(dirpath) / name
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            removed.append(path)
        dirnames[:] = [d for d in dirnames if not TMP_PATTERN.match(d)]
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_dead_tmp_siblings(path: str | Path) -> list[Path]:
    """Remove ``.NAME.tmp-PID-…`` siblings of ``path`` left by writers that were killed (their
    process is gone); those of live processes are left alone."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name[len(f".{path.name}.tmp-"):].split("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(tmp) if tmp.is_dir() and not tmp.is_symlink() else tmp.unlink()
            removed.append(tmp)
    return removed


def check_writable_dir(path: str | Path, what: str) -> Path:
    """Refuse, before anything is computed, an output folder that names a file or cannot be
    written (itself, or the nearest existing folder it would be created in)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(f"{path}: {what} names a file, expected a folder")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise DataError(f"{path}: {what} cannot be created ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(f"{path}: {what} is not writable ({existing}: permission denied)")
    return path


def check_writable_file(path: str | Path, what: str) -> Path:
    """Refuse an output file that names a folder or whose folder cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: {what} names a folder, expected a file")
    check_writable_dir(path.parent, f"the folder of {what}")
    return path


# ------------------------------------------------------------------------------ checksums
CHECKSUM_KEY = "sha256"
"""Key of the checksum embedded in a JSON file written by :func:`write_checked_json`."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _json_digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def write_checked_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write a JSON mapping atomically with the SHA-256 of its content under :data:`CHECKSUM_KEY`."""
    plain = json.loads(json.dumps(data, default=str))
    plain.pop(CHECKSUM_KEY, None)
    return atomic_write_json(path, {**plain, CHECKSUM_KEY: _json_digest(plain)})


def read_checked_json(path: str | Path, what: str, required: bool = True) -> dict[str, Any]:
    """Read a file of :func:`write_checked_json`; a truncated, malformed or altered file is one
    DataError line naming it. ``required=False``: a file without a checksum (older aivarda) passes."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: {what} is missing") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: {what} is damaged (not readable JSON: {exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: {what} is damaged (not a JSON mapping)")
    digest = data.pop(CHECKSUM_KEY, None)
    if digest is None and not required:
        return data
    if digest != _json_digest(data):
        raise DataError(f"{path}: {what} is damaged (checksum mismatch)")
    return data


def checksum_file(path: str | Path) -> Path:
    """The sidecar ``NAME.sha256`` of a file checksummed by :func:`write_checksum`."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def write_checksum(path: str | Path) -> str:
    """Write the SHA-256 of ``path`` into its sidecar (atomically); returns the digest."""
    digest = sha256_file(path)
    atomic_write_text(checksum_file(path), digest + "\n")
    return digest


def verify_checksum(path: str | Path, what: str) -> None:
    """Check ``path`` against its sidecar; a missing or differing one is one DataError line."""
    path, side = Path(path), checksum_file(path)
    try:
        expected = side.read_text().strip()
    except (FileNotFoundError, UnicodeDecodeError):
        raise DataError(f"{path}: {what} has no readable checksum {side.name}; cannot verify it") from None
    if sha256_file(path) != expected:
        raise DataError(f"{path}: {what} is damaged (checksum mismatch)")


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
