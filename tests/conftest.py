"""Shared pytest fixtures: a private Mosquitto broker per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mosquitto import Mosquitto


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real mosquitto on a free loopback port, anonymous access allowed, stopped after the test."""
    b = Mosquitto(tmp_path / "broker").start()
    try:
        yield b
    finally:
        b.stop()
