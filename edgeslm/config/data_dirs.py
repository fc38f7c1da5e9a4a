"""Where the shipped ``targets/`` and ``recipes/`` folders are.

In a wheel they are packaged as ``edgeslm/_data/<name>``; in a source checkout (editable install)
they are the top-level folders of the repository. ``EDGESLM_DATA_DIR`` overrides both.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError

_PACKAGE = Path(__file__).resolve().parent.parent


def data_dir(name: str) -> Path:
    override = os.environ.get("EDGESLM_DATA_DIR")
    candidates = [Path(override) / name] if override else []
    candidates += [_PACKAGE / "_data" / name, _PACKAGE.parent / name]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise ConfigError(f"cannot find the '{name}' folder (looked in {', '.join(map(str, candidates))})",
                      hint="reinstall edgeslm or set EDGESLM_DATA_DIR")
