"""docs/configuration.md names every key the hub's config loader reads, and no key it does not."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOADER = (ROOT / "broker" / "config.py").read_text(encoding="utf-8")
DOC = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
_READ = re.compile(
    r'\.(?:get|require|positive|seconds|at_least_zero|strings)\("([a-z_]+)"|_path\([a-z_]+, base, "([a-z_]+)"\)'
)
_DOCUMENTED = re.compile(r"^\| `(?:[a-z]+(?:\[\])?\.)?([a-z_]+)` \|", re.MULTILINE)
_SECTIONS = re.compile(r"`\[\[([a-z]+)\]\]`")  # [[agencies]], [[allow]]: arrays the loader reads by name


def documented() -> set[str]:
    return set(_DOCUMENTED.findall(DOC)) | set(_SECTIONS.findall(DOC))


def read_keys() -> set[str]:
    return {a or b for a, b in _READ.findall(LOADER)}


def test_every_key_the_loader_reads_is_documented() -> None:
    keys = read_keys()
    assert len(keys) > 50  # the pattern still finds the loader's reads
    assert keys - documented() == set()


def test_every_documented_key_is_read() -> None:
    assert documented() - read_keys() == set()
