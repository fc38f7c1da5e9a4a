"""How ONNX artifacts meet a host: NVIDIA GPUs (Jetson iGPU or a discrete GPU with its driver) for the CUDA
format, DirectML GPUs on Windows; the CPU format runs anywhere. Standard library only."""

from __future__ import annotations

from ...backend import Placement, Rejection
from ...runtime.accelerator_probe import Accelerator, key_values


def find_accelerators(files, host, findings) -> list[Accelerator]:
    found = []
    tegra = files.read("/etc/nv_tegra_release")
    if tegra or "nvidia,tegra" in files.read("/sys/firmware/devicetree/base/compatible"):
        found.append(Accelerator("gpu", "nvidia", f"Jetson iGPU ({host.board or 'Tegra'})", "cuda"))
    for gpu in files.listdir("/proc/driver/nvidia/gpus"):
        info = dict(key_values(files.read(f"/proc/driver/nvidia/gpus/{gpu}/information")))
        found.append(Accelerator("gpu", "nvidia", info.get("Model", "NVIDIA GPU"), "cuda"))
    if host.os == "windows" and "onnxruntime-genai-directml" in findings.packages:
        found.append(Accelerator("gpu", "any", "DirectML GPU", "directml"))
    return found


def place(fmt, host, artifact, explicit: bool) -> Placement | Rejection:
    if fmt.device_kind == "cpu":
        return Placement("cpu")
    gpus = [a for a in host.accelerators if a.api == "cuda"]
    if not gpus:
        return Rejection("needs an NVIDIA CUDA GPU, none found on this host")
    return Placement(gpus[0].kind, gpus[0])
