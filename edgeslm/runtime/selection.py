"""Rank a bundle's artifacts for this host, best accelerator first, and say why each was taken or not.

An artifact is usable when its CPU architectures include the host's, the accelerator its format
needs is present, its runtime package is installed at the required version, and the RAM holds its
weights plus the KV cache for a useful context. Usable artifacts are ordered NPU > GPU > CPU, then by
the bundle's target preference order.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..bundle.manifest import Artifact, Manifest
from ..errors import EdgeslmError, UsageError
from ..formats import FORMATS, FormatSpec
from ..package_versions import at_least
from .accelerator_probe import Accelerator
from .context_envelope import ContextPlan, plan_context
from .host_probe import HostProfile

DEVICE_RANK = {"npu": 3, "gpu": 2, "cpu": 1}
# Distributions that provide the same Python module as the one a manifest names.
PACKAGE_ALTERNATIVES = {"onnxruntime-genai": ("onnxruntime-genai", "onnxruntime-genai-cuda",
                                              "onnxruntime-genai-directml"),
                        "onnxruntime-genai-cuda": ("onnxruntime-genai-cuda",)}


class NoArtifactError(EdgeslmError):
    """No artifact of the bundle can run on this host."""

    exit_code = 12


@dataclass(frozen=True)
class Candidate:
    artifact: Artifact
    spec: FormatSpec
    device: str  # cpu | gpu | npu
    accelerator: Accelerator | None
    context: ContextPlan
    package_version: str
    score: tuple[int, int]

    @property
    def summary(self) -> str:
        where = self.accelerator.name if self.accelerator else "CPU"
        return (f"{self.artifact.id} on {where} with {self.artifact.runtime.package} {self.package_version}, "
                f"context {self.context.total_tokens:,} tokens (limited by {self.context.limited_by}), "
                f"~{self.context.memory_bytes / 2**30:.2f} GiB")


@dataclass(frozen=True)
class Rejection:
    artifact_id: str
    reason: str


@dataclass(frozen=True)
class Selection:
    host: HostProfile
    ranked: tuple[Candidate, ...]
    rejected: tuple[Rejection, ...]

    @property
    def chosen(self) -> Candidate:
        if not self.ranked:
            lines = "; ".join(f"{r.artifact_id}: {r.reason}" for r in self.rejected) or "the bundle has no artifacts"
            raise NoArtifactError(f"no artifact of this bundle can run here ({lines})",
                                  hint="run 'edgeslm doctor BUNDLE' for the host profile; build for a matching target")
        return self.ranked[0]


def rank_artifacts(manifest: Manifest, host: HostProfile, artifact_id: str | None = None,
                   device: str | None = None, context: int | None = None) -> Selection:
    if device is not None and device not in DEVICE_RANK:
        raise UsageError(f"unknown device '{device}'", hint="use cpu, gpu or npu")
    ids = [a.id for a in manifest.artifacts]
    if artifact_id is not None and artifact_id not in ids:
        raise UsageError(f"bundle has no artifact '{artifact_id}'", hint=f"artifacts: {', '.join(ids)}")
    preference = _preference(manifest)
    ranked, rejected = [], []
    for art in manifest.artifacts:
        if artifact_id is not None and art.id != artifact_id:
            rejected.append(Rejection(art.id, f"not requested (--artifact {artifact_id})"))
            continue
        outcome = _evaluate(art, host, explicit=artifact_id is not None, context=context)
        if isinstance(outcome, str):
            rejected.append(Rejection(art.id, outcome))
        elif device is not None and outcome[0] != device:
            rejected.append(Rejection(art.id, f"runs on {outcome[0]}, --device {device} was requested"))
        else:
            dev, acc, plan, version = outcome
            score = (DEVICE_RANK[dev], -preference.get(art.id, 99))
            ranked.append(Candidate(art, FORMATS[art.format], dev, acc, plan, version, score))
    ranked.sort(key=lambda c: c.score, reverse=True)
    return Selection(host, tuple(ranked), tuple(rejected))


def _preference(manifest: Manifest) -> dict[str, int]:
    """Best position of each artifact in any target's preference list."""
    best: dict[str, int] = {}
    for entry in manifest.targets.values():
        for position, art_id in enumerate(entry.artifacts):
            best[art_id] = min(best.get(art_id, 99), position)
    return best


def _evaluate(art: Artifact, host: HostProfile, explicit: bool, context: int | None):
    spec = FORMATS.get(art.format)
    if spec is None:
        return f"unknown format '{art.format}' (a newer edgeslm made this bundle?)"
    if host.cpu_arch not in art.cpu_archs:
        return f"built for {'/'.join(art.cpu_archs)}, this host is {host.cpu_arch}"
    placed = _place(spec, host, explicit)
    if isinstance(placed, str):
        return placed
    dev, acc = placed
    version = _installed(art.runtime.package, host)
    if version is None:
        return f"runtime package {art.runtime.package} is not installed (pip install 'edgeslm[{spec.device_extra}]')"
    if not at_least(version, art.runtime.min_version):
        return f"{art.runtime.package} {version} is older than the {art.runtime.min_version} this artifact needs"
    if spec.accelerator == "qnn":
        mismatch = _qnn_mismatch(art, host, dev, version)
        if mismatch:
            return mismatch
    plan = plan_context(art, host.ram_available_bytes, context, device=dev)
    if isinstance(plan, str):
        return plan
    return dev, acc, plan, version


def _place(spec: FormatSpec, host: HostProfile, explicit: bool):
    """The device the format would use here, or why it cannot run."""
    need = spec.accelerator
    if not need:
        return "cpu", None
    matches = [a for a in host.accelerators if a.api == need]
    if need == "openvino":
        for kind in ("npu", "gpu"):
            for acc in matches:
                if acc.kind == kind:
                    return kind, acc
        return "cpu", None
    if need == "qnn" and not matches and explicit and host.cpu_arch == "x86_64":
        return "cpu", None  # onnxruntime-qnn's HTP simulator: only when asked for, slow
    if need == "metal" and not matches:
        if explicit:
            return "cpu", None  # mlx[cpu] works on Linux, slowly: only when asked for
        return "MLX is selected automatically only on Apple silicon (Metal); pass --artifact to force it"
    if not matches:
        wanted = {"cuda": "an NVIDIA CUDA GPU", "qnn": "a Qualcomm Hexagon NPU"}.get(need, need)
        return f"needs {wanted}, none found on this host"
    return matches[0].kind, matches[0]


def _qnn_mismatch(art: Artifact, host: HostProfile, device: str, version: str) -> str | None:
    """Context binaries are specific to a SoC and to the QNN SDK that compiled them (the failure users
    meet most at load time): check both before loading."""
    details = art.details
    compiled = str(details.get("onnxruntime_qnn_version", ""))
    if compiled and version.split(".")[:2] != compiled.split(".")[:2]:
        return (f"context binaries were compiled with onnxruntime-qnn {compiled} (QNN SDK "
                f"{details.get('qnn_sdk_version', '?')}); the installed {version} bundles another QNN SDK "
                f"(pip install 'onnxruntime-qnn=={compiled}', or rebuild)")
    socs = details.get("socs") or {}
    if device == "npu" and compiled_soc(socs, host.soc) is None:
        return (f"context binaries were compiled for {', '.join(socs) or 'no SoC'}; this device's SoC is "
                f"{host.soc or 'unknown'}")
    return None


def compiled_soc(socs: dict, host_soc: str | None) -> str | None:
    """The SoC of a QNN artifact's ``socs`` table that the host's SoC name (Qualcomm part number or
    device-tree id, any case) refers to."""
    wanted = (host_soc or "").lower()
    if not wanted:
        return None
    return next((name for name, entry in socs.items()
                 if wanted == name.lower() or wanted in entry.get("device_ids", [])), None)


def _installed(package: str, host: HostProfile) -> str | None:
    for name in PACKAGE_ALTERNATIVES.get(package, (package,)):
        if name in host.packages:
            return host.packages[name]
    return None
