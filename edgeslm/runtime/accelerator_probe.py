"""Accelerators and runtime packages: found from system files, plus package APIs where files cannot tell.

Package checks read distribution metadata (no import). The only import is OpenVINO's device list,
and only when openvino is installed. Tests pass :class:`Findings` instead of probing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..package_versions import version_of

if TYPE_CHECKING:
    from .host_probe import HostFiles, HostProfile

RUNTIME_PACKAGES = ("onnxruntime-genai", "onnxruntime-genai-cuda", "onnxruntime-genai-directml", "onnxruntime",
                    "onnxruntime-qnn", "openvino", "openvino-genai", "mlx", "mlx-lm")


@dataclass(frozen=True)
class Accelerator:
    kind: str  # gpu | npu
    vendor: str  # nvidia | intel | qualcomm | apple | any
    name: str
    api: str  # cuda | openvino | qnn | metal | directml


@dataclass(frozen=True)
class Findings:
    """What cannot be read from files. ``None`` for openvino_devices means: openvino not installed."""

    packages: dict[str, str] = field(default_factory=dict)
    openvino_devices: tuple[str, ...] | None = None
    qnn_htp: bool = False  # the QNN execution provider's HTP backend is installed (counts on arm64 hosts only)


def probe_findings(os_name: str) -> Findings:
    packages = {name: v for name in RUNTIME_PACKAGES if (v := version_of(name))}
    devices = None
    if "openvino" in packages:
        try:
            import openvino

            devices = tuple(openvino.Core().available_devices)
        except Exception:  # a broken driver must not break the probe
            devices = ()
    return Findings(packages=packages, openvino_devices=devices, qnn_htp="onnxruntime-qnn" in packages)


def accelerators_from(files: "HostFiles", host: "HostProfile", findings: Findings) -> tuple[Accelerator, ...]:
    found: list[Accelerator] = []
    compatible = files.read("/sys/firmware/devicetree/base/compatible")
    # NVIDIA: Jetson (Tegra iGPU) or a discrete GPU with the driver loaded.
    tegra = files.read("/etc/nv_tegra_release")
    if tegra or "nvidia,tegra" in compatible:
        found.append(Accelerator("gpu", "nvidia", f"Jetson iGPU ({host.board or 'Tegra'})", "cuda"))
    for gpu in files.listdir("/proc/driver/nvidia/gpus"):
        info = dict(key_values(files.read(f"/proc/driver/nvidia/gpus/{gpu}/information")))
        found.append(Accelerator("gpu", "nvidia", info.get("Model", "NVIDIA GPU"), "cuda"))
    # Intel NPU (intel_vpu driver, /dev/accel) and GPU, as OpenVINO or the kernel reports them.
    ov = findings.openvino_devices
    npu_driver = any("DRIVER=intel_vpu" in files.read(f"/sys/class/accel/{d}/device/uevent")
                     for d in files.listdir("/sys/class/accel"))
    # When OpenVINO is installed its device list decides (a driver without its user-space part is no use).
    if (ov is not None and "NPU" in ov) or (ov is None and npu_driver):
        found.append(Accelerator("npu", "intel", "Intel NPU", "openvino"))
    intel_gpu = any(files.read(f"/sys/class/drm/{c}/device/vendor").strip() == "0x8086"
                    for c in files.listdir("/sys/class/drm") if c.startswith("card") and "-" not in c)
    if (ov is not None and any(d.startswith("GPU") for d in ov)) or (ov is None and intel_gpu
                                                                      and host.cpu_arch == "x86_64"):
        found.append(Accelerator("gpu", "intel", "Intel GPU", "openvino"))
    # Qualcomm Hexagon NPU: Snapdragon device tree or FastRPC device, usable through the QNN EP.
    snapdragon = "qcom," in compatible or files.exists("/dev/fastrpc-cdsp") or "Qualcomm" in host.cpu_model \
        or "Oryon" in host.cpu_model or findings.qnn_htp
    if snapdragon and host.cpu_arch == "arm64":
        found.append(Accelerator("npu", "qualcomm", f"Hexagon NPU ({host.soc or 'Snapdragon'})", "qnn"))
    # Apple GPU: every Apple silicon Mac has Metal.
    if host.os == "macos" and host.cpu_arch == "arm64":
        found.append(Accelerator("gpu", "apple", f"Apple GPU ({host.cpu_model or 'Apple silicon'})", "metal"))
    if host.os == "windows" and ("onnxruntime-genai-directml" in findings.packages):
        found.append(Accelerator("gpu", "any", "DirectML GPU", "directml"))
    return tuple(found)


def key_values(text: str):
    """'key: value' lines (cpuinfo, meminfo, sysctl, nvidia information files)."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            yield key.strip(), value.strip()
