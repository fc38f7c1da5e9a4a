"""What a backend package declares: its formats, settings, build options and how it meets a host.

A backend is one package (``edgeslm/backends/<name>/`` for the built-in ones, or a plugin
distribution) whose ``__init__`` defines ``BACKEND = Backend(...)``. The declaration is plain data
plus ``module:attribute`` references resolved on first use, so reading it imports only the standard
library: listing formats, validating a target or recipe file, or ranking artifacts on a device never
imports an engine or a converter. The registry (``edgeslm.registry``) collects the declarations.

What a backend provides, each behind one reference:

- ``exporter``: an object following ``builder.exporter.Exporter`` (build side);
- ``engine``: ``open_engine(artifact_dir, candidate, host, manifest, threads)`` returning a
  ``runtime.generation.Engine`` (device side);
- ``scorer``: a module with ``window_logits(artifact_dir, windows)`` (measured quality);
- ``host_support``: a standard-library module with ``find_accelerators(files, host, findings)``, optional
  ``probe_facts(packages) -> dict`` (what only a package API can tell, e.g. a device list) and
  ``place(fmt, host, artifact, explicit) -> Placement | Rejection`` (the backend's own rules: which
  accelerator, which SoC, which SDK version).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any


def resolve(reference: str) -> Any:
    """``"package.module:attribute"`` → the attribute; ``"package.module"`` → the module."""
    module_name, _, attribute = reference.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute) if attribute else module


@dataclass(frozen=True)
class FormatSpec:
    """One artifact format: what a target can accept and a device must have to run it."""

    name: str
    device_kind: str  # cpu | gpu | npu: where it runs best
    cpu_archs: tuple[str, ...]
    runtime_package: str  # the distribution the device must have installed
    runtime_min_version: str
    device_extra: str  # pip extra of edgeslm for the device side
    build_extra: str  # pip extra of edgeslm for the build side
    settings: str  # "module:Class" of the recipe options dataclass
    runtime_alternatives: tuple[str, ...] = ()  # distributions that provide the same module
    backend: str = ""  # the declaring backend's name (set by the registry)

    def settings_class(self) -> type:
        return resolve(self.settings)

    @property
    def runtime_distributions(self) -> tuple[str, ...]:
        return self.runtime_alternatives or (self.runtime_package,)


@dataclass(frozen=True)
class BuildOption:
    """A flag a backend adds to ``edgeslm build``: a shortcut for ``--set SETTING=VALUE``."""

    flag: str  # e.g. "--npu-compiler"
    setting: str  # FORMAT.KEY
    choices: tuple[str, ...]
    help: str


@dataclass(frozen=True)
class Placement:
    """Where an artifact would run on a host: a device kind and the accelerator used (None: the CPU)."""

    device: str
    accelerator: Any = None


@dataclass(frozen=True)
class Rejection:
    """Why an artifact cannot run on a host, in one line a user can act on."""

    reason: str


@dataclass(frozen=True)
class Backend:
    name: str
    formats: tuple[FormatSpec, ...]
    exporter_ref: str = ""
    engine_ref: str = ""
    scorer_ref: str = ""
    host_support_ref: str = ""
    probe_packages: tuple[str, ...] = ()  # distributions the host probe records for this backend
    build_options: tuple[BuildOption, ...] = ()
    distribution: str = field(default="edgeslm", compare=False)  # who provides it (a plugin's name)

    @classmethod
    def in_package(cls, package: str, name: str, formats: tuple[FormatSpec, ...], **fields: Any) -> Backend:
        """A backend laid out by the convention of the built-in ones: ``exporter.EXPORTER``,
        ``engine.open_engine``, ``scoring`` and ``host_support`` modules of ``package``."""
        refs = {"exporter_ref": f"{package}.exporter:EXPORTER", "engine_ref": f"{package}.engine:open_engine",
                "scorer_ref": f"{package}.scoring", "host_support_ref": f"{package}.host_support"}
        return cls(name=name, formats=formats, **{**refs, **fields})

    def exporter(self) -> Any:
        return resolve(self.exporter_ref)

    def open_engine(self) -> Any:
        return resolve(self.engine_ref)

    def scorer(self) -> Any:
        return resolve(self.scorer_ref)

    def _host_support(self) -> Any:
        return resolve(self.host_support_ref) if self.host_support_ref else None

    def find_accelerators(self, files: Any, host: Any, findings: Any) -> tuple[Any, ...]:
        support = self._host_support()
        return tuple(support.find_accelerators(files, host, findings)) if support else ()

    def probe_facts(self, packages: dict[str, str]) -> dict[str, Any]:
        support = self._host_support()
        return dict(support.probe_facts(packages)) if support and hasattr(support, "probe_facts") else {}

    def placement(self, fmt: FormatSpec, host: Any, artifact: Any, explicit: bool) -> Placement | Rejection:
        """The backend's own compatibility rules; a backend without any runs its artifacts on the CPU."""
        support = self._host_support()
        if support is None or not hasattr(support, "place"):
            return Placement("cpu")
        return support.place(fmt, host, artifact, explicit)
