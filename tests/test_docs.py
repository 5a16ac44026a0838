"""The docs are whole inside the repository: every relative link in README.md and docs/**/*.md
points at a file or folder that exists, and none leaves the repository (a code host shows the
repository alone: `../shared/...` is a broken link there, and so is an absolute path)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
# [text](target "title") and ![alt](target); [label]: target (reference definitions).
INLINE_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:...


def links(path: Path) -> list[str]:
    text = INLINE_CODE.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))
    return INLINE_LINK.findall(text) + REFERENCE.findall(text)


def test_the_docs_are_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in DOCS}
    assert {"README.md", "docs/operations.md", "docs/contracts/messenger.md"} <= names
    # The parser sees the links it must check.
    assert "docs/contracts/messenger.md" in links(ROOT / "README.md")
    assert "docs/operations.md" in links(ROOT / "README.md")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_points_at_a_file_in_the_repository(doc: Path) -> None:
    problems = []
    for target in links(doc):
        if EXTERNAL.match(target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0].split("?", 1)[0]
        if path.startswith("/"):
            problems.append(f"{target}: an absolute path (use one relative to {doc.name})")
            continue
        resolved = (doc.parent / path).resolve()
        if not resolved.is_relative_to(ROOT):
            problems.append(f"{target}: outside the repository")
        elif not resolved.exists():
            problems.append(f"{target}: no such file")
    assert not problems, f"{doc.relative_to(ROOT)}: " + "; ".join(problems)


def test_a_link_out_of_the_repository_is_caught(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text(
        "See [the contract](../shared/protocols/messenger.md), ![x](docs/a.png), and\n"
        "`[not a link](nowhere)`\n\n```\n[nor this](nowhere)\n```\n[ref]: other.md\n"
    )
    assert links(doc) == ["../shared/protocols/messenger.md", "docs/a.png", "other.md"]
