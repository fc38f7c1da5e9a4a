"""How QNN artifacts meet a host: a Snapdragon's Hexagon NPU, the SoC the binaries were compiled for, and
the QNN SDK of the installed onnxruntime-qnn. Context binaries are specific to both (the failure users
meet most at load time), so both are checked before loading. Standard library only."""

from __future__ import annotations

from ...backend import Placement, Rejection
from ...package_versions import at_least
from ...runtime.accelerator_probe import Accelerator


def probe_facts(packages: dict[str, str]) -> dict:
    return {"qnn_htp": "onnxruntime-qnn" in packages}  # the QNN EP's HTP backend (counts on arm64 hosts only)


def find_accelerators(files, host, findings) -> list[Accelerator]:
    compatible = files.read("/sys/firmware/devicetree/base/compatible")
    snapdragon = "qcom," in compatible or files.exists("/dev/fastrpc-cdsp") or "Qualcomm" in host.cpu_model \
        or "Oryon" in host.cpu_model or findings.facts.get("qnn_htp", False)
    if snapdragon and host.cpu_arch == "arm64":
        return [Accelerator("npu", "qualcomm", f"Hexagon NPU ({host.soc or 'Snapdragon'})", "qnn")]
    return []


def place(fmt, host, artifact, explicit: bool) -> Placement | Rejection:
    npus = [a for a in host.accelerators if a.api == "qnn"]
    if not npus and not (explicit and host.cpu_arch == "x86_64"):
        return Rejection("needs a Qualcomm Hexagon NPU, none found on this host")
    placement = Placement(npus[0].kind, npus[0]) if npus else Placement("cpu")  # x86_64: the HTP simulator
    details = artifact.details
    compiled = str(details.get("onnxruntime_qnn_version", ""))
    installed = host.packages.get(fmt.runtime_package)
    # A missing or too old onnxruntime-qnn is the generic check's to report (after placement).
    usable = installed and at_least(installed, artifact.runtime.min_version)
    if compiled and usable and installed.split(".")[:2] != compiled.split(".")[:2]:
        return Rejection(f"context binaries were compiled with onnxruntime-qnn {compiled} (QNN SDK "
                         f"{details.get('qnn_sdk_version', '?')}); the installed {installed} bundles another QNN SDK "
                         f"(pip install 'onnxruntime-qnn=={compiled}', or rebuild)")
    socs = details.get("socs") or {}
    if placement.device == "npu" and compiled_soc(socs, host.soc) is None:
        return Rejection(f"context binaries were compiled for {', '.join(socs) or 'no SoC'}; this device's SoC is "
                         f"{host.soc or 'unknown'}")
    return placement


def compiled_soc(socs: dict, host_soc: str | None) -> str | None:
    """The SoC of a QNN artifact's ``socs`` table that the host's SoC name (Qualcomm part number or
    device-tree id, any case) refers to."""
    wanted = (host_soc or "").lower()
    if not wanted:
        return None
    return next((name for name, entry in socs.items()
                 if wanted == name.lower() or wanted in entry.get("device_ids", [])), None)
