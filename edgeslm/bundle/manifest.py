"""``manifest.json``: the versioned description of a bundle (documented in docs/manifest.md).

The manifest is read with the same strict checker as the TOML files, so a manifest with an unknown
key or a wrong type is refused with the key's name. ``schema_version`` is bumped on any change
that an older runtime could misread; a runtime refuses versions it does not know.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.strict import parse, to_plain
from ..errors import BundleError, ConfigError
from ..json_files import read_json

SCHEMA = "edgeslm-bundle"
SCHEMA_VERSION = 3
SUPPORTED_VERSIONS = (1, 2, 3)  # 2 added Quality's KL/limit fields and Manifest.warnings (all optional);
# 3 added Artifact.vision (artifacts that take images)
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class FileEntry:
    """A file and its checksum: in a bundle (path relative to its root, '/' separated) or a source checkpoint."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ModelInfo:
    name: str
    architecture: str
    model_type: str
    parameter_count: int
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    max_position_embeddings: int
    source_files: tuple[FileEntry, ...]
    hub_id: str = ""


@dataclass(frozen=True)
class ChatInfo:
    template: str  # Jinja chat template, as in the source tokenizer_config.json
    stop_token_ids: tuple[int, ...]
    stop_tokens: tuple[str, ...]
    bos_token: str
    eos_token: str
    add_bos_token: bool
    special_tokens: dict[str, int]  # added special tokens, content -> id


@dataclass(frozen=True)
class Runtime:
    package: str
    min_version: str


@dataclass(frozen=True)
class ContextEnvelope:
    max_total_tokens: int  # hard limit of the artifact (prompt + generated)
    max_prompt_tokens: int  # hard limit on the prompt alone
    default_total_tokens: int  # planned default; the runtime lowers it to fit the host's RAM


@dataclass(frozen=True)
class MemoryNeeds:
    weight_bytes: int  # bytes of weights loaded into memory
    kv_cache_bytes_per_token: int
    kv_cache_dtype: str
    runtime_overhead_bytes: int  # activations, runtime and tokenizer, measured or estimated


@dataclass(frozen=True)
class Quality:
    metric: str  # "perplexity"
    dataset: str  # the evaluation text: a file name, or "edgeslm:evaluation.txt" for the built-in one
    windows: int
    window_tokens: int
    source: float
    artifact: float
    relative_change: float  # (artifact - source) / source
    dataset_sha256: str = ""
    kl_divergence: float | None = None  # mean per predicted token of KL(source || artifact), nats
    max_relative_change: float | None = None  # the recipe's limit the build checked
    within_limit: bool = True
    allowed_loss: bool = False  # over the limit, kept with --allow-quality-loss
    scored_on: str = ""  # the provider that ran the artifact's windows (a CUDA graph is scored on the CPU
    # of a build host without a GPU: same graph and weights, other kernels)
    reference: str = ""  # how the source was scored: torch-fp32-layerwise, or onnx-fp32-layerwise (torch-free)


@dataclass(frozen=True)
class VisionAccuracy:
    """Answer accuracy on an image-question set: the artifact against the fp32 torch reference."""

    dataset: str  # e.g. "edgeslm:vision-dev" (the built-in set) or a folder name
    questions: int
    source: float  # fraction right, fp32 torch reference
    artifact: float
    max_drop: float  # the limit the build checked (fraction, e.g. 0.05 = 5 points)
    within_limit: bool = True
    by_type: dict[str, float] = field(default_factory=dict)  # the artifact's accuracy per question type
    feature_cosine_min: float | None = None  # vision part vs the torch reference, over the set's images
    feature_max_abs_error: float | None = None


@dataclass(frozen=True)
class VisionInfo:
    """An artifact that takes images (Phi-3.5-vision): how they are cut and what they cost."""

    num_crops: int  # most 336-px crops per image the runtime cuts (the processor's HD rule)
    tokens_per_crop: int  # 144
    tokens_per_image: dict[str, int]  # most image tokens one image costs, by num_crops ("1", "4", ...)
    tokens_by_grid: dict[str, int]  # image tokens by crop grid "HxW" reachable at num_crops
    vision_weight_bytes: int  # the vision part's files
    vision_runtime_bytes: int  # the vision part's activations for one image at num_crops (estimated)
    precision: str  # the vision part's weights: int8 | int4 | float32 | float16 (MLX, QNN) | a16w8 (QNN)
    preprocessing: str = "edgeslm.vision.phi3v_processor"
    max_image_pixels: int = 40_000_000
    accuracy: VisionAccuracy | None = None


@dataclass(frozen=True)
class Artifact:
    id: str
    format: str
    path: str  # folder relative to the bundle root
    runtime: Runtime
    device_kinds: tuple[str, ...]
    cpu_archs: tuple[str, ...]
    quantization: dict[str, Any]
    context: ContextEnvelope
    memory: MemoryNeeds
    files: tuple[FileEntry, ...]
    quality: Quality | None = None
    details: dict[str, Any] = field(default_factory=dict)  # format-specific facts
    vision: VisionInfo | None = None  # set when the artifact takes images


@dataclass(frozen=True)
class TargetEntry:
    artifacts: tuple[str, ...]  # artifact ids in order of preference
    context_length: int  # the target's planned default context
    reserve_ram_bytes: int = 0  # RAM the OS and other processes keep on such a device (planning.reserve_ram_gb)


@dataclass(frozen=True)
class Provenance:
    edgeslm_version: str
    created: str  # ISO 8601, UTC
    packages: dict[str, str]
    recipe: dict[str, Any]
    build_host: dict[str, str]
    duration_s: float


@dataclass(frozen=True)
class Manifest:
    schema: str
    schema_version: int
    bundle_id: str
    model: ModelInfo
    chat: ChatInfo
    artifacts: tuple[Artifact, ...]
    targets: dict[str, TargetEntry]
    provenance: Provenance
    shared_files: tuple[FileEntry, ...] = ()
    warnings: tuple[str, ...] = ()  # e.g. quality not measured (--no-eval)

    def artifact(self, artifact_id: str) -> Artifact:
        for art in self.artifacts:
            if art.id == artifact_id:
                return art
        raise BundleError(f"bundle has no artifact '{artifact_id}'",
                          hint=f"artifacts: {', '.join(a.id for a in self.artifacts)}")

    def all_files(self) -> list[FileEntry]:
        return [*self.shared_files, *(f for a in self.artifacts for f in a.files)]

    def to_json(self) -> dict[str, Any]:
        return to_plain(self)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n"

    def for_target(self, name: str) -> Manifest:
        """This manifest with only one target and its artifacts (what ``flash --target`` installs)."""
        wanted = self.targets[name].artifacts
        return dataclasses.replace(self, artifacts=tuple(a for a in self.artifacts if a.id in wanted),
                                   targets={name: self.targets[name]})


def write_manifest(manifest: Manifest, folder: Path) -> Path:
    path = folder / MANIFEST_NAME
    path.write_text(manifest.dumps(), encoding="utf-8")
    return path


def read_manifest(folder: Path) -> Manifest:
    """Read and strictly validate ``folder/manifest.json``."""
    folder = Path(folder)
    if not folder.exists():
        raise BundleError(f"bundle {folder} does not exist")
    if not folder.is_dir():
        raise BundleError(f"{folder} is not a bundle folder",
                          hint="pass the folder made by 'edgeslm build' (or a .tar made with [[pack]])")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{folder} is not a bundle: it has no {MANIFEST_NAME}",
                          hint="pass the folder made by 'edgeslm build'")
    return manifest_from_json(read_json(path, BundleError, kind=object), str(path))


def manifest_from_json(data: Any, where: str = MANIFEST_NAME) -> Manifest:
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise BundleError(f"{where} is not an edgeslm bundle manifest (schema is not '{SCHEMA}')")
    version = data.get("schema_version")
    if version not in SUPPORTED_VERSIONS:
        raise BundleError(f"{where} has schema_version {version!r}; this edgeslm reads {SUPPORTED_VERSIONS}",
                          hint="upgrade edgeslm on this device, or rebuild the bundle with this version")
    try:
        manifest = parse(Manifest, data, where)
    except ConfigError as exc:
        raise BundleError(exc.message, hint=exc.hint) from None
    _check_paths(manifest, where)
    return manifest


def _check_paths(manifest: Manifest, where: str) -> None:
    for entry in manifest.all_files():
        parts = entry.path.split("/")
        if entry.path.startswith("/") or ".." in parts or "\\" in entry.path or not entry.path:
            raise BundleError(f"{where}: file path '{entry.path}' escapes the bundle")
