"""How the command line spells the library's option names in error messages and hints.

Library errors name an option as ``[[name]]`` (the library's parameter name, see errors.py); the CLI
renders it as the flag a user types. Most flags are the name with dashes; the others are listed here.
"""

from __future__ import annotations

FLAGS = {"overrides": "--set", "targets": "--target"}


def flag(name: str) -> str:
    return FLAGS.get(name, "--" + name.replace("_", "-"))
