"""Host probe: what this device is, read cheaply from system files, never failing on a missing package.

Everything is read through a root folder (``/`` on a real device), so tests can feed recorded
``/proc`` and ``/sys`` trees of a Raspberry Pi, a Jetson, an Arm or Intel laptop, or a Mac
(whose ``sysctl`` output is read from ``<root>/.commands/sysctl`` there). What files cannot show
(installed packages, a runtime's device list, accelerators the backends recognise) comes from
:mod:`edgeslm.runtime.accelerator_probe`, or from injected ``findings`` in tests.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .accelerator_probe import Accelerator, Findings, accelerators_from, probe_findings
from .accelerator_probe import key_values as _kv

ARM_FEATURES = {"asimd": "neon", "asimddp": "dotprod", "i8mm": "i8mm", "sve": "sve", "sve2": "sve2",
                "asimdhp": "fp16", "bf16": "bf16"}
X86_FEATURES = {"avx2": "avx2", "fma": "fma", "avx512f": "avx512f", "avx512_vnni": "avx512_vnni",
                "avx_vnni": "avx_vnni", "amx_tile": "amx", "avx512_bf16": "avx512_bf16", "f16c": "f16c"}
MAC_FEATURES = {"hw.optional.neon": "neon", "hw.optional.arm.FEAT_DotProd": "dotprod",
                "hw.optional.arm.FEAT_I8MM": "i8mm", "hw.optional.arm.FEAT_FP16": "fp16",
                "hw.optional.arm.FEAT_BF16": "bf16", "hw.optional.avx2_0": "avx2"}


@dataclass(frozen=True)
class HostProfile:
    os: str  # linux | macos | windows | android
    cpu_arch: str  # x86_64 | arm64 | other
    cpu_model: str
    board: str  # device-tree model or DMI product name
    soc: str  # e.g. bcm2712, tegra234, x1e80100, or ""
    cpu_features: tuple[str, ...]
    logical_cores: int
    physical_cores: int
    ram_total_bytes: int
    ram_available_bytes: int
    packages: dict[str, str]  # installed runtime packages -> version
    accelerators: tuple[Accelerator, ...] = field(default=())

    def has(self, api: str) -> bool:
        return any(a.api == api for a in self.accelerators)

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["accelerators"] = [a.__dict__ for a in self.accelerators]
        return data


class HostFiles:
    """Reads system files (and, on macOS, sysctl) below a root folder."""

    def __init__(self, root: Path | str = "/"):
        self.root = Path(root)
        self.real = self.root == Path("/")

    def read(self, path: str) -> str:
        try:
            return (self.root / path.lstrip("/")).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def exists(self, path: str) -> bool:
        return (self.root / path.lstrip("/")).exists()

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(self.root / path.lstrip("/")))
        except OSError:
            return []

    def command(self, name: str, *args: str) -> str:
        if not self.real:
            return self.read(f".commands/{name}")
        try:
            return subprocess.run([name, *args], capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return ""


def probe_host(root: Path | str = "/", os_name: str | None = None, findings: Findings | None = None) -> HostProfile:
    files = HostFiles(root)
    os_name = os_name or _os_name(files)
    if findings is None:
        findings = probe_findings(os_name)
    if os_name == "macos":
        cpu = _mac_cpu(files)
    elif os_name == "windows":
        cpu = _windows_cpu()
    else:
        cpu = _linux_cpu(files)
    board = files.read("/sys/firmware/devicetree/base/model").strip("\x00\n ") or \
        files.read("/sys/class/dmi/id/product_name").strip() or cpu.get("board", "")
    compatible = files.read("/sys/firmware/devicetree/base/compatible").split("\x00")
    soc = next((c.split(",", 1)[1] for c in reversed(compatible) if "," in c), "")
    profile = HostProfile(
        os=os_name, cpu_arch=cpu["arch"], cpu_model=cpu["model"], board=board, soc=soc,
        cpu_features=tuple(cpu["features"]), logical_cores=cpu["logical"], physical_cores=cpu["physical"],
        ram_total_bytes=cpu["ram_total"], ram_available_bytes=cpu["ram_available"],
        packages=dict(findings.packages), accelerators=(),
    )
    return HostProfile(**{**profile.__dict__, "accelerators": accelerators_from(files, profile, findings)})


def _os_name(files: HostFiles) -> str:
    if not files.real:
        if files.exists(".commands/sysctl"):
            return "macos"
        return "android" if files.exists("/system/build.prop") else "linux"
    system = platform.system().lower()
    if system == "darwin":
        return "macos"
    if system == "linux" and ("ANDROID_ROOT" in os.environ or files.exists("/system/build.prop")):
        return "android"
    return system


def _norm_arch(machine: str) -> str:
    machine = machine.lower()
    if machine in ("x86_64", "amd64"):
        return "x86_64"
    if machine in ("aarch64", "arm64", "armv8l"):
        return "arm64"
    return machine or "unknown"


def _linux_cpu(files: HostFiles) -> dict[str, Any]:
    cpuinfo = files.read("/proc/cpuinfo")
    blocks = [b for b in cpuinfo.split("\n\n") if "processor" in b]
    first = dict(_kv(blocks[0])) if blocks else {}
    flags = set((first.get("flags") or first.get("Features") or "").split())
    is_arm = "Features" in first or "CPU implementer" in first
    arch = "arm64" if is_arm else ("x86_64" if "flags" in first else _norm_arch(platform.machine()))
    table = ARM_FEATURES if arch == "arm64" else X86_FEATURES
    features = sorted({name for flag, name in table.items() if flag in flags})
    cores = {(d.get("physical id", "0"), d.get("core id", str(i))) for i, d in
             enumerate(dict(_kv(b)) for b in blocks)}
    model = first.get("model name") or _arm_model(first) or files.read("/proc/device-tree/model").strip("\x00")
    mem = dict(_kv(files.read("/proc/meminfo")))
    total = _kib(mem.get("MemTotal"))
    return {"arch": arch, "model": model, "features": features, "logical": len(blocks) or os.cpu_count() or 1,
            "physical": len(cores) or len(blocks) or 1, "ram_total": total,
            "ram_available": _kib(mem.get("MemAvailable")) or total}


ARM_PARTS = {("0x41", "0xd08"): "Cortex-A72", ("0x41", "0xd0b"): "Cortex-A76", ("0x41", "0xd42"): "Cortex-A78AE",
             ("0x41", "0xd4d"): "Cortex-A715", ("0x41", "0xd82"): "Cortex-X4", ("0x51", "0x001"): "Qualcomm Oryon"}


def _arm_model(info: dict[str, str]) -> str:
    return ARM_PARTS.get((info.get("CPU implementer", ""), info.get("CPU part", "")), "")


def _mac_cpu(files: HostFiles) -> dict[str, Any]:
    values = dict(_kv(files.command("sysctl", "-a")))
    features = sorted({name for key, name in MAC_FEATURES.items() if values.get(key) == "1"})
    total = int(values.get("hw.memsize", "0") or 0)
    page = int(values.get("hw.pagesize", "16384") or 16384)
    free_pages = int(values.get("vm.page_free_count", "0") or 0) + int(values.get("vm.page_purgeable_count", "0") or 0)
    arch = "arm64" if values.get("hw.optional.arm64") == "1" else _norm_arch(values.get("hw.machine", ""))
    return {"arch": arch, "model": values.get("machdep.cpu.brand_string", ""), "features": features,
            "logical": int(values.get("hw.logicalcpu", values.get("hw.ncpu", "1"))),
            "physical": int(values.get("hw.perflevel0.physicalcpu", values.get("hw.physicalcpu", "1"))),
            "ram_total": total, "ram_available": free_pages * page or total // 2,
            "board": values.get("hw.model", "")}


def _windows_cpu() -> dict[str, Any]:  # pragma: no cover - exercised on Windows devices only
    import ctypes

    class MemoryStatus(ctypes.Structure):
        _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                    ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                    ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
                    ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong),
                    ("ullAvailExtendedVirtual", ctypes.c_ulonglong)]

    status = MemoryStatus()
    status.dwLength = ctypes.sizeof(MemoryStatus)
    ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status))
    arch = _norm_arch(os.environ.get("PROCESSOR_ARCHITECTURE", platform.machine()))
    logical = os.cpu_count() or 1
    return {"arch": arch, "model": platform.processor(), "features": ["neon"] if arch == "arm64" else [],
            "logical": logical, "physical": logical, "ram_total": status.ullTotalPhys,
            "ram_available": status.ullAvailPhys}


def _kib(value: str | None) -> int:
    match = re.match(r"(\d+)", value or "")
    return int(match.group(1)) * 1024 if match else 0
