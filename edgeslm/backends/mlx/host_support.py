"""How MLX artifacts meet a host: every Apple silicon Mac has a Metal GPU; elsewhere mlx[cpu] runs them on
the CPU, slowly, so they are picked only when asked for. Standard library only."""

from __future__ import annotations

from ...backend import Placement, Rejection
from ...runtime.accelerator_probe import Accelerator


def find_accelerators(files, host, findings) -> list[Accelerator]:
    if host.os == "macos" and host.cpu_arch == "arm64":
        return [Accelerator("gpu", "apple", f"Apple GPU ({host.cpu_model or 'Apple silicon'})", "metal")]
    return []


def place(fmt, host, artifact, explicit: bool) -> Placement | Rejection:
    metal = [a for a in host.accelerators if a.api == "metal"]
    if metal:
        return Placement(metal[0].kind, metal[0])
    if explicit:
        return Placement("cpu")  # mlx[cpu] works on Linux, slowly: only when asked for
    return Rejection("MLX is selected automatically only on Apple silicon (Metal); pass --artifact to force it")
