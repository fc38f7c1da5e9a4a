"""A bundle as an OCI image manifest, and back.

    config    manifest.json, byte for byte (media type application/vnd.edgeslm.bundle.manifest.v1+json)
    layers    one per bundle file, its digest the sha256 the manifest already lists (so pushing needs no
              re-hashing, and a file that did not change between versions is the same blob: never uploaded
              or downloaded twice), its path in the ``org.opencontainers.image.title`` annotation;
              plus ``manifest.sig`` (application/vnd.edgeslm.bundle.signatures.v1+json) when signed

``artifactType`` is ``application/vnd.edgeslm.bundle.v1``; the image manifest carries the bundle id and the
model name as annotations. Registries that predate OCI 1.1 (distribution 2.8) store it as is.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..bundle.manifest import MANIFEST_NAME, Manifest, manifest_from_json
from ..bundle.signatures import SIGNATURE_NAME
from ..errors import RegistryError

ARTIFACT_TYPE = "application/vnd.edgeslm.bundle.v1"
CONFIG_MEDIA_TYPE = "application/vnd.edgeslm.bundle.manifest.v1+json"
FILE_MEDIA_TYPE = "application/vnd.edgeslm.bundle.file"
SIGNATURE_MEDIA_TYPE = "application/vnd.edgeslm.bundle.signatures.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
TITLE = "org.opencontainers.image.title"


@dataclass(frozen=True)
class Blob:
    path: str  # in the bundle ("manifest.json" for the config)
    digest: str  # sha256:…
    size: int
    media_type: str


@dataclass(frozen=True)
class OciBundle:
    config: Blob
    files: tuple[Blob, ...]
    signature: Blob | None


def bundle_to_oci(folder: Path) -> tuple[bytes, Manifest, OciBundle]:
    """The OCI image manifest (bytes) of a bundle folder, its manifest and its blobs."""
    folder = Path(folder)
    raw = (folder / MANIFEST_NAME).read_bytes()
    manifest = manifest_from_json(json.loads(raw), str(folder / MANIFEST_NAME))
    config = Blob(MANIFEST_NAME, _digest(raw), len(raw), CONFIG_MEDIA_TYPE)
    files = tuple(Blob(f.path, f"sha256:{f.sha256}", f.size, FILE_MEDIA_TYPE) for f in manifest.all_files())
    signature = None
    if (folder / SIGNATURE_NAME).is_file():
        sig = (folder / SIGNATURE_NAME).read_bytes()
        signature = Blob(SIGNATURE_NAME, _digest(sig), len(sig), SIGNATURE_MEDIA_TYPE)
    layers = [*files, *([signature] if signature else [])]
    doc = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": b.media_type, "digest": b.digest, "size": b.size, "annotations": {TITLE: b.path}}
                   for b in layers],
        "annotations": {"org.edgeslm.bundle_id": manifest.bundle_id, "org.edgeslm.model": manifest.model.name,
                        "org.opencontainers.image.created": manifest.provenance.created},
    }
    return json.dumps(doc, indent=1).encode(), manifest, OciBundle(config, files, signature)


def oci_to_bundle(data: bytes, where: str) -> OciBundle:
    """Read an image manifest written by ``bundle_to_oci``; refuse anything else."""
    try:
        doc = json.loads(data)
        config = doc["config"]
        if config.get("mediaType") != CONFIG_MEDIA_TYPE:
            raise ValueError(f"its config is {config.get('mediaType')!r}, not an edgeslm bundle manifest")
        blobs = [Blob(layer["annotations"][TITLE], layer["digest"], int(layer["size"]), layer["mediaType"])
                 for layer in doc.get("layers", [])]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RegistryError(f"{where} is not an edgeslm bundle: {exc}",
                            hint="push bundles with 'edgeslm push'") from None
    for blob in blobs:
        parts = PurePosixPath(blob.path).parts
        if blob.path.startswith("/") or ".." in parts or not parts or "\\" in blob.path:
            raise RegistryError(f"{where}: layer path '{blob.path}' escapes the bundle: refused")
        if not blob.digest.startswith("sha256:") or len(blob.digest) != 71:
            raise RegistryError(f"{where}: layer '{blob.path}' has digest {blob.digest!r}: only sha256 is accepted")
    signature = next((b for b in blobs if b.media_type == SIGNATURE_MEDIA_TYPE), None)
    files = tuple(b for b in blobs if b.media_type == FILE_MEDIA_TYPE)
    return OciBundle(Blob(MANIFEST_NAME, config["digest"], int(config["size"]), CONFIG_MEDIA_TYPE), files, signature)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
