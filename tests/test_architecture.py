"""The repository documents itself: no source or doc cites a document outside it, and every
``docs/…`` page a source file names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT_FILES = [*ROOT.glob("src/aivarda/**/*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("docs/*.md"),
              ROOT / "README.md", *ROOT.glob("configs/**/*.yaml")]


def test_nothing_cites_a_document_outside_the_repository() -> None:
    outside = re.compile(r"DESIGN(\.md| §)|shared/DESIGN")
    offenders = [str(p.relative_to(ROOT)) for p in TEXT_FILES if outside.search(p.read_text(errors="replace"))]
    assert offenders == []


def test_docs_named_by_the_sources_exist() -> None:
    named = {m for p in ROOT.glob("src/aivarda/**/*.py") for m in re.findall(r"docs/([\w-]+\.md)", p.read_text())}
    assert named, "the sources point to their docs"
    assert sorted(n for n in named if not (ROOT / "docs" / n).is_file()) == []


def test_architecture_recipes_name_tests_that_exist() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    for path, name in re.findall(r"`(tests/[\w/]+\.py)::(\w+)", text):
        assert f"def {name}(" in (ROOT / path).read_text(), f"{path}::{name}"
