"""Plain text tables for the command-line outputs."""

from __future__ import annotations

import math
from typing import Any


def format_table(rows: list[dict[str, Any]], headers: list[str]) -> str:
    """A plain text table; floats with 6 significant digits, missing values as ``-``."""

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        if isinstance(v, float):
            return f"{v:.6g}"
        return str(v)

    cells = [[cell(r.get(h)) for h in headers] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for c in cells:  # text columns (channel, units) left-aligned, numbers right-aligned
        padded = (v.rjust(w) if i > 1 else v.ljust(w) for i, (v, w) in enumerate(zip(c, widths, strict=True)))
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)
