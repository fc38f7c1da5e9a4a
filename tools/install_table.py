"""Print the README's install table of the artifact formats, generated from the backend registry.

    python tools/install_table.py

tests/test_packaging.py checks that README.md holds exactly this table (between the
``<!-- install-table -->`` markers) and that every extra it names is in pyproject.toml.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeslm.registry import formats  # noqa: E402 - after sys.path


def install_table() -> str:
    rows = ["| format | backend | device install | needs on the device | build install |", "|---|---|---|---|---|"]
    for spec in formats().values():
        rows.append(f"| {spec.name} | {spec.backend} | `pip install 'edgeslm[{spec.device_extra}]'` | "
                    f"{spec.runtime_package} >= {spec.runtime_min_version} | "
                    f"`pip install 'edgeslm[{spec.build_extra}]'` |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(install_table())
