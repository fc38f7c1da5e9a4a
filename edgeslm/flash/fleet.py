"""Flash many devices in parallel from an inventory file; one failing host does not stop the others."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from ..config.strict import parse, read_toml
from ..errors import EdgeslmError, UsageError
from ..progress import Progress
from .flasher import FlashOptions, FlashReport, flash_bundle


@dataclass(frozen=True)
class HostDefaults:
    target: str = ""
    identity: str = ""
    known_hosts: str = ""


@dataclass(frozen=True)
class InventoryHost:
    name: str
    dest: str
    target: str = ""
    identity: str = ""
    known_hosts: str = ""


@dataclass(frozen=True)
class Inventory:
    hosts: tuple[InventoryHost, ...]
    defaults: HostDefaults = HostDefaults()


@dataclass
class HostResult:
    name: str
    dest: str
    ok: bool
    report: FlashReport | None = None
    error: str = ""
    failure: EdgeslmError | None = None  # the error, for callers that render option names their own way


def load_inventory(path: Path) -> Inventory:
    inventory = parse(Inventory, read_toml(path), path.name)
    if not inventory.hosts:
        raise UsageError(f"{path.name}: no [[hosts]]")
    names = [h.name for h in inventory.hosts]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UsageError(f"{path.name}: host name(s) used twice: {', '.join(duplicates)}")
    return inventory


def flash_fleet(bundle: Path, inventory_path: Path, options: FlashOptions, progress: Progress,
                parallel: int = 8) -> list[HostResult]:
    inventory = load_inventory(inventory_path)
    base = inventory_path.parent

    def resolve(value: str) -> Path | None:
        return (base / Path(value).expanduser()) if value else None

    def one(host: InventoryHost) -> HostResult:
        d = inventory.defaults
        opts = replace(options, target=host.target or d.target or options.target,
                       identity=resolve(host.identity or d.identity) or options.identity,
                       known_hosts=resolve(host.known_hosts or d.known_hosts) or options.known_hosts)
        try:
            report = flash_bundle(bundle, host.dest, opts, _Prefixed(progress, host.name))
            return HostResult(host.name, host.dest, True, report)
        except EdgeslmError as exc:
            return HostResult(host.name, host.dest, False, error=exc.one_line(), failure=exc)
        except Exception as exc:  # noqa: BLE001 - one host's bug must not stop the fleet
            return HostResult(host.name, host.dest, False, error=f"{type(exc).__name__}: {exc}")

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        return list(pool.map(one, inventory.hosts))


class _Prefixed:
    """Progress lines labelled with the host name."""

    def __init__(self, progress: Progress, name: str):
        self.progress, self.name = progress, name

    def task(self, description: str, total: float | None = None):
        return self.progress.task(f"[{self.name}] {description}", total)

    def note(self, message: str) -> None:
        self.progress.note(f"[{self.name}] {message}")
