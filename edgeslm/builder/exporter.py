"""The exporter protocol: what a backend implements to produce one artifact format.

The build pipeline hands an exporter an :class:`ExportJob` (validated source model, format,
typed settings, an empty folder to fill) and gets back an :class:`ExportResult` describing what it
made; the pipeline then checksums the files and writes the manifest. Exporters never print.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..backend import FormatSpec
from ..errors import BackendMissingError, BuildError, DiskSpaceError, EdgeslmError
from ..progress import Progress
from .source import SourceModel
from .text_windows import BuildText


@dataclass(frozen=True)
class ExportJob:
    source: SourceModel
    fmt: FormatSpec
    settings: Any  # the format's settings dataclass
    out_dir: Path  # empty folder the artifact is written into
    work_dir: Path  # scratch space, deleted after the build
    default_total_tokens: int  # planned context of the targets that use this artifact
    calibration: BuildText  # for data-aware quantization: --calibration-text, else the --eval-text after its
    # evaluation windows, else the built-in calibration text (text_windows.calibration_text)
    target_socs: tuple[str, ...] = ()  # the SoCs of the targets taking this artifact (empty: not every one names one)


@dataclass(frozen=True)
class ExportResult:
    quantization: dict[str, Any]
    max_total_tokens: int
    max_prompt_tokens: int
    kv_cache_bytes_per_token: int
    kv_cache_dtype: str
    weight_bytes: int
    runtime_overhead_bytes: int
    details: dict[str, Any] = field(default_factory=dict)
    packages: dict[str, str] = field(default_factory=dict)  # versions of the packages used
    vision: Any = None  # bundle.manifest.VisionInfo for an artifact that takes images (accuracy filled later)


class Exporter(Protocol):
    def check_available(self) -> None:
        """Raise BackendMissingError naming the extra to install if a package is missing."""

    def check_settings(self, settings: Any, source: SourceModel) -> None:
        """Raise UsageError for option combinations that cannot work with this source (layer widths that
        the group size does not divide, ...), before any export starts."""

    def estimate_output_bytes(self, source: SourceModel, settings: Any) -> int:
        """Upper estimate of the artifact's size on disk, for the free-space check."""

    def export(self, job: ExportJob, progress: Progress) -> ExportResult:
        """Write the artifact into ``job.out_dir``."""


class Scorer(Protocol):
    """Scores token windows with an artifact (used for the manifest's measured quality)."""

    def window_logits(self, artifact_dir: Path, windows: list[list[int]]) -> Iterator[Any]:
        """Per window, the artifact's logits [n-1, vocab] for positions 0..n-2 (numpy)."""


def require_modules(modules: tuple[str, ...], what: str, extra: str) -> None:
    """Raise BackendMissingError naming the pip extra when any of ``modules`` cannot be imported."""
    missing = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise BackendMissingError(f"{what} needs {', '.join(missing)}, which is not installed",
                                  hint=f"pip install 'edgeslm[{extra}]'")


def get_exporter(spec: FormatSpec) -> Exporter:
    """The exporter object of a format's backend (its ``Backend.exporter_ref``)."""
    from ..registry import backend_of

    return backend_of(spec).exporter()


@contextlib.contextmanager
def converter_errors(fmt_name: str, what: str, log_path: Path) -> Iterator[None]:
    """Turn what a third-party converter raises into one BuildError naming the step and its log
    (a full disk into DiskSpaceError); edgeslm's own errors pass through unchanged."""
    try:
        yield
    except EdgeslmError:
        raise
    except OSError as exc:
        if exc.errno == 28:
            raise DiskSpaceError(f"out of disk space while writing {fmt_name}",
                                 hint="free some space or pass [[out]] on a larger disk") from None
        raise BuildError(f"{fmt_name}: {what} failed: {exc}", hint=f"see the log {log_path}") from exc
    except Exception as exc:  # converters raise bare Exceptions, ValueErrors, RuntimeErrors
        raise BuildError(f"{fmt_name}: {what} failed: {type(exc).__name__}: {exc}",
                         hint=f"see the log {log_path}") from exc
