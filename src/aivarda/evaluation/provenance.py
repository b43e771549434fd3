"""Provenance of a report: which code, which configuration, which data, which machine.

- ``aivarda_version``; ``git_commit`` of the source tree the ``aivarda`` package was imported from
  (``git rev-parse HEAD`` when that tree is the aivarda repository, ``"unknown"`` otherwise, e.g.
  an installed wheel) and ``git_dirty`` (tracked files modified; ``None`` when unknown);
- ``host``: ``platform.node()``, CPU count, platform, Python and torch versions;
- per run: ``config_sha256``, the SHA-256 of the run's ``config.json`` in canonical JSON (keys
  sorted, no whitespace, UTF-8), and ``store_fingerprint``, read from the run's files when the
  run recorded one (a ``store_fingerprint`` key anywhere in ``config.json`` or ``metadata.json``),
  else ``"unknown"``; ``run_git_commit``, the ``git_commit`` of the run's ``metadata.json`` (the code
  that ran it, when the runner recorded it), else ``"unknown"``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

UNKNOWN = "unknown"
FINGERPRINT_KEY = "store_fingerprint"
METADATA_FILES = ("config.json", "metadata.json")


def canonical_json(obj: Any) -> str:
    """``obj`` as canonical JSON: sorted keys, no whitespace, non-ASCII kept."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def config_hash(config: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of a run configuration."""
    return hashlib.sha256(canonical_json(config).encode("utf-8")).hexdigest()


def _git(repo: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@cache
def git_state(package_dir: str | None = None) -> tuple[str, bool | None]:
    """``(commit, dirty)`` of the aivarda repository holding ``package_dir`` (default: the imported
    package); ``("unknown", None)`` outside such a repository or without git."""
    if package_dir is None:
        import aivarda

        package_dir = str(Path(aivarda.__file__).resolve().parent)
    top = _git(Path(package_dir), "rev-parse", "--show-toplevel")
    if not top:
        return UNKNOWN, None
    pyproject = Path(top) / "pyproject.toml"
    if not pyproject.is_file() or 'name = "aivarda"' not in pyproject.read_text(errors="replace"):
        return UNKNOWN, None  # the package sits inside some other repository
    commit = _git(Path(top), "rev-parse", "HEAD")
    if not commit:
        return UNKNOWN, None
    status = _git(Path(top), "status", "--porcelain", "--untracked-files=no")
    return commit, (None if status is None else bool(status))


def host() -> dict[str, Any]:
    """The machine and software versions."""
    import torch

    return {"node": platform.node(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": sys.version.split()[0], "torch": torch.__version__}


def code_provenance() -> dict[str, Any]:
    """aivarda version, git commit and dirtiness, and the host (the code that made the report)."""
    from aivarda import __version__

    commit, dirty = git_state()
    return {"aivarda_version": __version__, "git_commit": commit, "git_dirty": dirty, "host": host()}


def _find_key(obj: Any, key: str) -> Any:
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        obj = list(obj.values())
    if isinstance(obj, list):
        for item in obj:
            found = _find_key(item, key)
            if found is not None:
                return found
    return None


def store_fingerprint(run_dir: Path, config: dict[str, Any] | None = None) -> Any:
    """The ``store_fingerprint`` a run recorded (``config.json`` or ``metadata.json``), else ``"unknown"``."""
    for name in METADATA_FILES:
        if name == "config.json" and config is not None:
            data: Any = config
        else:
            path = run_dir / name
            if not path.is_file():
                continue
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
        found = _find_key(data, FINGERPRINT_KEY)
        if found is not None:
            return found
    return UNKNOWN


def run_commit(run_dir: Path) -> Any:
    """The ``git_commit`` the run recorded in its ``metadata.json`` (the code that ran it), else ``"unknown"``."""
    try:
        found = _find_key(json.loads((run_dir / "metadata.json").read_text()), "git_commit")
    except (OSError, json.JSONDecodeError):
        found = None
    return UNKNOWN if found is None else found


def run_provenance(run_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """``{"config_sha256", "store_fingerprint", "run_git_commit"}`` of one run directory."""
    return {"config_sha256": config_hash(config), "store_fingerprint": store_fingerprint(run_dir, config),
            "run_git_commit": run_commit(run_dir)}


def footer(code: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    """One line: version, commit, host, and per run the config hash and store fingerprint."""
    h = code["host"]
    commit = code["git_commit"] if code["git_commit"] == UNKNOWN else code["git_commit"][:12]
    dirty = "+dirty" if code["git_dirty"] else ""
    per_run = "; ".join(
        f"{r['name']} config {r['config_sha256'][:12]} store {_short(r['store_fingerprint'])}" for r in runs
    )
    return (f"provenance: aivarda {code['aivarda_version']} commit {commit}{dirty} on {h['node']} "
            f"({h['cpu_count']} CPUs, torch {h['torch']}); {per_run}")


def _short(fingerprint: Any) -> str:
    text = fingerprint if isinstance(fingerprint, str) else canonical_json(fingerprint)
    return text if len(text) <= 16 else text[:16] + "…"
