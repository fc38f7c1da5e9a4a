"""The registry of backends: the built-in ones and plugins from the ``edgeslm.backends`` entry points.

Every lookup of a format, its backend, its exporter, engine or scorer goes through here. A plugin is
any installed distribution that declares, in its metadata,

    [project.entry-points."edgeslm.backends"]
    mybackend = "my_package:BACKEND"

where ``BACKEND`` is an ``edgeslm.backend.Backend``. Loading a plugin imports only its declaration
(standard library by the same rule as the built-in ones). A plugin that fails to load, or that
declares a format another backend already has, is left out and reported by ``load_problems()``
(shown by ``edgeslm doctor``), so a broken plugin never breaks the built-in formats.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from importlib.metadata import entry_points

from .backend import Backend, FormatSpec
from .errors import ConfigError

ENTRY_POINT_GROUP = "edgeslm.backends"
BUILTIN_BACKENDS = ("edgeslm.backends.onnx_genai", "edgeslm.backends.openvino", "edgeslm.backends.mlx",
                    "edgeslm.backends.qnn", "edgeslm.backends.gguf", "edgeslm.backends.remote")


@dataclasses.dataclass(frozen=True)
class _Loaded:
    backends: dict[str, Backend]
    formats: dict[str, FormatSpec]
    problems: tuple[str, ...]


@functools.lru_cache(maxsize=1)
def _load() -> _Loaded:
    declared: list[tuple[str, Backend]] = [(name, importlib.import_module(name).BACKEND) for name in BUILTIN_BACKENDS]
    problems: list[str] = []
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            backend = entry.load()
        except Exception as exc:  # a broken plugin must not break the built-in formats
            problems.append(f"plugin backend '{entry.name}' ({entry.value}) failed to load: {type(exc).__name__}: {exc}")
            continue
        if not isinstance(backend, Backend):
            problems.append(f"plugin backend '{entry.name}' ({entry.value}) is not an edgeslm.backend.Backend")
            continue
        dist = entry.dist.name if entry.dist else entry.value
        declared.append((entry.value, dataclasses.replace(backend, distribution=dist)))
    backends: dict[str, Backend] = {}
    formats: dict[str, FormatSpec] = {}
    for where, backend in declared:
        if backend.name in backends:
            problems.append(f"backend '{backend.name}' from {where} is declared twice; the first one is kept")
            continue
        clashes = [f.name for f in backend.formats if f.name in formats]
        if clashes:
            problems.append(f"backend '{backend.name}' from {where} declares format(s) {', '.join(clashes)} that "
                            f"backend '{formats[clashes[0]].backend}' already serves; it is left out")
            continue
        backends[backend.name] = backend
        for fmt in backend.formats:
            formats[fmt.name] = dataclasses.replace(fmt, backend=backend.name)
    return _Loaded(backends, formats, tuple(problems))


def backends() -> dict[str, Backend]:
    return _load().backends


def formats() -> dict[str, FormatSpec]:
    return _load().formats


def load_problems() -> tuple[str, ...]:
    return _load().problems


def get_format(name: str, where: str = "") -> FormatSpec:
    try:
        return formats()[name]
    except KeyError:
        prefix = f"{where}: " if where else ""
        raise ConfigError(f"{prefix}unknown artifact format '{name}'",
                          hint=f"known formats: {', '.join(formats())}; a format from a plugin needs that plugin "
                               "installed") from None


def backend_of(fmt: FormatSpec | str) -> Backend:
    spec = fmt if isinstance(fmt, FormatSpec) else get_format(fmt)
    return backends()[spec.backend]


def reload() -> None:
    """Forget the loaded backends (tests that install or register a backend at run time)."""
    _load.cache_clear()


def register(backend: Backend) -> None:
    """Add a backend at run time (tests' fake backends; plugins use the entry point instead)."""
    loaded = _load()
    if backend.name in loaded.backends or any(f.name in loaded.formats for f in backend.formats):
        raise ConfigError(f"backend '{backend.name}' or one of its formats is already registered")
    loaded.backends[backend.name] = backend
    for fmt in backend.formats:
        loaded.formats[fmt.name] = dataclasses.replace(fmt, backend=backend.name)
