"""The folder layout a flash keeps on the device, and its history.

    DEST/versions/<version>/     complete, verified bundles (kept: the active one + N previous)
    DEST/staging/<version>/      a flash in progress (partial files end in .part and are resumed)
    DEST/current -> versions/<version>   the active bundle (symlink, switched atomically by rename)
    DEST/CURRENT                 the active version's name (for file systems without symlinks, e.g. FAT)
    DEST/flash-history.json      activations, newest last (for --rollback and pruning)

``edgeslm run DEST/current`` (or ``edgeslm run DEST``) uses the active bundle.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from .transport import Transport

HISTORY = "flash-history.json"


@dataclass(frozen=True)
class Layout:
    root: str

    @property
    def versions(self) -> str:
        return f"{self.root}/versions"

    @property
    def staging(self) -> str:
        return f"{self.root}/staging"

    def version(self, name: str) -> str:
        return f"{self.versions}/{name}"

    def staged(self, name: str) -> str:
        return f"{self.staging}/{name}"

    @property
    def current_link(self) -> str:
        return f"{self.root}/current"


def read_history(t: Transport, layout: Layout) -> list[dict]:
    text = t.read_text(f"{layout.root}/{HISTORY}")
    try:
        data = json.loads(text) if text else []
    except ValueError:
        data = []
    return data if isinstance(data, list) else []


def active_version(t: Transport, layout: Layout) -> str | None:
    pointer = (t.read_text(f"{layout.root}/CURRENT") or "").strip()
    if pointer:
        return pointer
    link = t.read_link(layout.current_link)
    return link.rstrip("/").rsplit("/", 1)[-1] if link else None


def activate(t: Transport, layout: Layout, version: str, bundle_id: str, action: str) -> None:
    """Switch ``current`` to ``version``: symlink first (atomic rename), then the pointer file."""
    try:
        t.switch_link(layout.current_link, f"versions/{version}")
    except Exception:  # noqa: BLE001 - FAT and some Android storage have no symlinks: the pointer file suffices
        pass
    t.write_text(f"{layout.root}/CURRENT", version + "\n")
    history = read_history(t, layout)
    history.append({"version": version, "bundle_id": bundle_id, "action": action,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    t.write_text(f"{layout.root}/{HISTORY}", json.dumps(history[-50:], indent=1) + "\n")


def previous_version(t: Transport, layout: Layout) -> str | None:
    current = active_version(t, layout)
    installed = set(t.listdir(layout.versions))
    for entry in reversed(read_history(t, layout)):
        name = entry.get("version")
        if name != current and name in installed:
            return name
    return None


def prune(t: Transport, layout: Layout, keep_previous: int) -> list[str]:
    """Remove installed versions beyond the active one and the ``keep_previous`` most recent others."""
    current = active_version(t, layout)
    order: list[str] = []
    for entry in reversed(read_history(t, layout)):
        name = entry.get("version")
        if name and name != current and name not in order:
            order.append(name)
    keep = {current, *order[:keep_previous]}
    removed = []
    for name in t.listdir(layout.versions):
        if name not in keep:
            t.remove(layout.version(name))
            removed.append(name)
    return removed
