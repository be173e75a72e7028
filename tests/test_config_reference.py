"""docs/CONFIG.md lists every key the code reads, and no key it does not (the contract audit found keys documented
only in edge/config.py's comments)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from edge.config import Config

DOC = Path(__file__).resolve().parents[1] / "docs" / "CONFIG.md"


def test_the_configuration_reference_names_every_key_and_no_other() -> None:
    keys = {f"{section.name}.{f.name}" for section in dataclasses.fields(Config)
            for f in dataclasses.fields(getattr(Config(), section.name))}
    assert len(keys) > 50
    documented = set(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", DOC.read_text(), flags=re.MULTILINE))
    assert keys - documented == set(), "keys missing from docs/CONFIG.md"
    assert documented - keys == set(), "docs/CONFIG.md names keys the code does not read"
