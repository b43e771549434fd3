"""Every Python example of docs/observation-files.md runs, in order, and prints exactly what the
page shows (the ``# …`` line after each ``print``)."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "observation-files.md"


def test_examples_run_and_print_what_the_page_shows(tmp_path: Path):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 4
    namespace: dict = {}
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the examples write their own small files
    try:
        for block in blocks:
            lines = block.splitlines()
            shown = [lines[i + 1].strip()[2:] for i, line in enumerate(lines)
                     if line.strip().startswith("print(") and i + 1 < len(lines) and lines[i + 1].strip().startswith("# ")]
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 — the repository's own page
            assert out.getvalue().splitlines() == shown
    finally:
        os.chdir(cwd)
