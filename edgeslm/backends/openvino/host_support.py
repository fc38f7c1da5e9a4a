"""How OpenVINO artifacts meet a host: the Intel NPU (intel_vpu driver) and GPU, as OpenVINO's device list
or, without openvino installed, the kernel reports them; NPU, then GPU, then the CPU. The device list is
the only import, and only when openvino is installed."""

from __future__ import annotations

from ...backend import Placement, Rejection
from ...runtime.accelerator_probe import Accelerator


def probe_facts(packages: dict[str, str]) -> dict:
    if "openvino" not in packages:
        return {"openvino_devices": None}
    try:
        import openvino

        return {"openvino_devices": tuple(openvino.Core().available_devices)}
    except Exception:  # a broken driver must not break the probe
        return {"openvino_devices": ()}


def find_accelerators(files, host, findings) -> list[Accelerator]:
    found = []
    devices = findings.facts.get("openvino_devices")
    npu_driver = any("DRIVER=intel_vpu" in files.read(f"/sys/class/accel/{d}/device/uevent")
                     for d in files.listdir("/sys/class/accel"))
    # When OpenVINO is installed its device list decides (a driver without its user-space part is no use).
    if (devices is not None and "NPU" in devices) or (devices is None and npu_driver):
        found.append(Accelerator("npu", "intel", "Intel NPU", "openvino"))
    intel_gpu = any(files.read(f"/sys/class/drm/{c}/device/vendor").strip() == "0x8086"
                    for c in files.listdir("/sys/class/drm") if c.startswith("card") and "-" not in c)
    if (devices is not None and any(d.startswith("GPU") for d in devices)) or (devices is None and intel_gpu
                                                                                and host.cpu_arch == "x86_64"):
        found.append(Accelerator("gpu", "intel", "Intel GPU", "openvino"))
    return found


def place(fmt, host, artifact, explicit: bool) -> Placement | Rejection:
    ours = [a for a in host.accelerators if a.api == "openvino"]
    for kind in ("npu", "gpu"):
        for acc in ours:
            if acc.kind == kind:
                return Placement(kind, acc)
    return Placement("cpu")
