"""Accelerators and runtime packages: found from system files, plus package APIs where files cannot tell.

Each backend knows its own hardware: the probe asks every registered backend for the distributions
it cares about (read from metadata, no import), for the facts only a package API can tell (e.g. a
device list, imported only when that package is installed) and for the accelerators it finds in the
host's files. Tests pass :class:`Findings` instead of probing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..package_versions import version_of

if TYPE_CHECKING:
    from .host_probe import HostFiles, HostProfile


@dataclass(frozen=True)
class Accelerator:
    kind: str  # gpu | npu
    vendor: str  # nvidia | intel | qualcomm | apple | any
    name: str
    api: str  # the API its backend drives it through, e.g. cuda or metal


class Findings:
    """What cannot be read from files: installed runtime packages, and backend facts by name
    (``Findings(packages={...}, some_fact=value)``; a backend reads ``findings.facts``)."""

    def __init__(self, packages: dict[str, str] | None = None, **facts: Any):
        self.packages = dict(packages or {})
        self.facts = facts

    def __repr__(self) -> str:
        return f"Findings(packages={self.packages!r}, facts={self.facts!r})"


def probe_findings(os_name: str) -> Findings:
    from ..registry import backends

    wanted = [name for backend in backends().values() for name in backend.probe_packages]
    packages = {name: v for name in dict.fromkeys(wanted) if (v := version_of(name))}
    facts: dict[str, Any] = {}
    for backend in backends().values():
        facts.update(backend.probe_facts(packages))
    return Findings(packages, **facts)


def accelerators_from(files: HostFiles, host: HostProfile, findings: Findings) -> tuple[Accelerator, ...]:
    from ..registry import backends

    return tuple(acc for backend in backends().values() for acc in backend.find_accelerators(files, host, findings))


def key_values(text: str):
    """'key: value' lines (cpuinfo, meminfo, sysctl, driver information files)."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            yield key.strip(), value.strip()
