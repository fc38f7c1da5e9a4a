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
    soc = compiled_soc(socs, host.soc)
    if placement.device == "npu" and soc is None:
        return Rejection(f"context binaries were compiled for {', '.join(socs) or 'no SoC'}; this device's SoC is "
                         f"{host.soc or 'unknown'}")
    if placement.device == "npu" and (over := npu_budget_problem(details, socs[soc], soc, artifact.vision)):
        return Rejection(over)
    return placement


def npu_budget_problem(details: dict, soc_entry: dict, soc: str, vision=None) -> str | None:
    """What the artifact's parts need on the HTP (compiled weights + 16-bit KV cache + the largest part's
    activations; with images also the vision encoder's binary, whose activations come before the decoder's)
    against what one process can map on that SoC (the recipe's npu_memory_mb)."""
    parts = details.get("parts") or []
    budget = int(soc_entry.get("npu_memory_mb") or 0) * 2**20
    if not parts or not budget:
        return None
    activations = max(p["activation_bytes"] for p in parts)
    need = sum(p["weight_bytes"] + p["kv_cache_bytes"] for p in parts)
    if vision is not None:
        need += vision.vision_weight_bytes
        activations = max(activations, vision.vision_runtime_bytes)
    need += activations
    if need <= budget:
        return None
    what = "part(s) and the vision encoder" if vision is not None else "part(s)"
    return (f"its {len(parts)} {what} need {need / 2**20:,.0f} MiB on the NPU (weights + KV cache at "
            f"{details.get('context_length', '?')} tokens), more than the {budget / 2**20:,.0f} MiB {soc}'s HTP maps "
            "per process (rebuild with a smaller qnn-context.context_length, or share_weights = true)")


def compiled_soc(socs: dict, host_soc: str | None) -> str | None:
    """The SoC of a QNN artifact's ``socs`` table that the host's SoC name (Qualcomm part number or
    device-tree id, any case) refers to."""
    wanted = (host_soc or "").lower()
    if not wanted:
        return None
    return next((name for name, entry in socs.items()
                 if wanted == name.lower() or wanted in entry.get("device_ids", [])), None)
