"""Every ``sh.<name>`` / ``saehooks.<name>`` that a message, docstring, demo or the
README mentions exists (an error once told users to call a function that did not)."""

import importlib
import re
from pathlib import Path

import pytest

import saehooks as sh

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    [
        *ROOT.glob("saehooks/**/*.py"),
        *ROOT.glob("demos/*.py"),
        ROOT / "README.md",
        *ROOT.glob("*.md"),
    ]
)
MENTION = re.compile(r"\b(sh|saehooks)((?:\.[A-Za-z_]\w*)+)")


def _resolve(dotted: str) -> bool:
    obj = sh
    parts = dotted.strip(".").split(".")
    for i, part in enumerate(parts):
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        try:  # a submodule not imported by the package itself
            obj = importlib.import_module("saehooks." + ".".join(parts[: i + 1]))
        except ImportError:
            return False
    return True


def _mentions():
    found = {}
    for path in SOURCES:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in MENTION.finditer(line):
                dotted = match.group(2)
                # file names and module paths in prose (saehooks.io, saehooks/...) count too
                if dotted.endswith((".py", ".md", ".json")):
                    continue
                found.setdefault(dotted, f"{path.relative_to(ROOT)}:{number}")
    return found


def test_there_are_mentions_to_check():
    assert len(_mentions()) > 20


@pytest.mark.parametrize("dotted, where", sorted(_mentions().items()))
def test_every_mentioned_public_name_exists(dotted, where):
    assert _resolve(dotted), f"{where} mentions sh{dotted}, which does not exist"
