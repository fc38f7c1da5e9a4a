"""Rank a bundle's artifacts for this host, best accelerator first, and say why each was taken or not.

The generic rules live here: the artifact's format must be registered, its CPU architectures must
include the host's, its backend must place it (``Backend.placement``: the accelerator it needs, and
that backend's own checks, such as a compiled SoC or SDK version), its runtime package must be
installed at the required version, and the RAM must hold its weights plus the KV cache for a useful
context. Usable artifacts are ordered NPU > GPU > CPU, then by the bundle's target preference order.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..backend import FormatSpec, Rejection
from ..bundle.manifest import Artifact, Manifest
from ..errors import NoArtifactError, UsageError
from ..package_versions import at_least
from ..registry import backend_of, formats
from .accelerator_probe import Accelerator
from .context_envelope import ContextPlan, plan_context
from .host_probe import HostProfile

DEVICE_RANK = {"npu": 3, "gpu": 2, "cpu": 1}


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
class RejectedArtifact:
    artifact_id: str
    reason: str


@dataclass(frozen=True)
class Selection:
    host: HostProfile
    ranked: tuple[Candidate, ...]
    rejected: tuple[RejectedArtifact, ...]

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
            rejected.append(RejectedArtifact(art.id, f"not requested (--artifact {artifact_id})"))
            continue
        outcome = _evaluate(art, host, explicit=artifact_id is not None, context=context,
                            reserve=_reserve(manifest, art.id))
        if isinstance(outcome, str):
            rejected.append(RejectedArtifact(art.id, outcome))
        elif device is not None and outcome[0] != device:
            rejected.append(RejectedArtifact(art.id, f"runs on {outcome[0]}, --device {device} was requested"))
        else:
            dev, acc, plan, version = outcome
            score = (DEVICE_RANK[dev], -preference.get(art.id, 99))
            ranked.append(Candidate(art, formats()[art.format], dev, acc, plan, version, score))
    ranked.sort(key=lambda c: c.score, reverse=True)
    return Selection(host, tuple(ranked), tuple(rejected))


def _preference(manifest: Manifest) -> dict[str, int]:
    """Best position of each artifact in any target's preference list."""
    best: dict[str, int] = {}
    for entry in manifest.targets.values():
        for position, art_id in enumerate(entry.artifacts):
            best[art_id] = min(best.get(art_id, 99), position)
    return best


def _reserve(manifest: Manifest, artifact_id: str) -> int:
    """RAM to leave free: the largest reserve of the targets the artifact was built for."""
    return max((t.reserve_ram_bytes for t in manifest.targets.values() if artifact_id in t.artifacts), default=0)


def _evaluate(art: Artifact, host: HostProfile, explicit: bool, context: int | None, reserve: int = 0):
    spec = formats().get(art.format)
    if spec is None:
        return (f"unknown format '{art.format}' (made by a newer edgeslm, or by a backend plugin that is not "
                "installed here?)")
    if host.cpu_arch not in art.cpu_archs:
        return f"built for {'/'.join(art.cpu_archs)}, this host is {host.cpu_arch}"
    placed = backend_of(spec).placement(spec, host, art, explicit)
    if isinstance(placed, Rejection):
        return placed.reason
    version = _installed(spec, art.runtime.package, host)
    if version is None:
        return f"runtime package {art.runtime.package} is not installed (pip install 'edgeslm[{spec.device_extra}]')"
    if not at_least(version, art.runtime.min_version):
        return f"{art.runtime.package} {version} is older than the {art.runtime.min_version} this artifact needs"
    plan = plan_context(art, host.ram_available_bytes, context, device=placed.device, reserve_bytes=reserve)
    if isinstance(plan, str):
        return plan
    return placed.device, placed.accelerator, plan, version


def _installed(spec: FormatSpec, package: str, host: HostProfile) -> str | None:
    """The installed version of the artifact's runtime package, or of a distribution providing the same module."""
    names = spec.runtime_distributions if package == spec.runtime_package else (package,)
    for name in names:
        if name in host.packages:
            return host.packages[name]
    return None
