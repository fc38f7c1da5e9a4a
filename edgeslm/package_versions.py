"""Installed versions of Python distributions, without importing them."""

from __future__ import annotations

import importlib.metadata
import re


def version_of(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def version_tuple(text: str) -> tuple[int, int, int]:
    """'0.18.0rc1' -> (0, 18, 0), '2.7' -> (2, 7, 0): enough to compare release numbers."""
    numbers = [int(x) for x in re.findall(r"\d+", text.split("+")[0])[:3]]
    return tuple(numbers + [0] * (3 - len(numbers)))


def at_least(installed: str, minimum: str) -> bool:
    return version_tuple(installed) >= version_tuple(minimum)
