"""``edgeslm push BUNDLE oci://HOST/REPO:TAG``: verify the bundle, upload the blobs the registry lacks,
then the manifest under the tag (docs/oci.md)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..bundle.pack import OpenedBundle
from ..bundle.verify import verify_bundle
from ..errors import UsageError
from ..progress import NullProgress, Progress
from .bundle_layout import MANIFEST_MEDIA_TYPE, bundle_to_oci
from .reference import parse_reference
from .registry_client import RegistryClient


@dataclass
class PushReport:
    reference: str
    digest: str  # the image manifest's: pin devices to it with @sha256:…
    bundle_id: str
    uploaded_files: int = 0
    uploaded_bytes: int = 0
    skipped_files: int = 0  # already in the registry (content-addressed: unchanged since an earlier push)
    skipped_bytes: int = 0
    signed: bool = False
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


def push_bundle(bundle: Path, reference: str, plain_http: bool = False, progress: Progress | None = None) -> PushReport:
    progress = progress or NullProgress()
    ref = parse_reference(reference)
    if ref.digest:
        raise UsageError(f"push to a tag, not a digest: {reference}", hint="e.g. oci://HOST/REPO:v2")
    started = time.monotonic()
    with OpenedBundle(Path(bundle)) as opened:
        with progress.task("Verifying the bundle") as advance:
            verify_bundle(opened.folder, progress=advance).raise_for_problems()  # never push a tampered bundle
        data, manifest, oci = bundle_to_oci(opened.folder)
        report = PushReport(str(ref), "", manifest.bundle_id, signed=oci.signature is not None)
        with RegistryClient(ref.registry, plain_http) as client:
            small = [(opened.folder / b.path).read_bytes() for b in (oci.config, *([oci.signature] if oci.signature
                                                                                   else []))]
            missing = [b for b in oci.files if not client.blob_exists(ref.repository, b.digest, push=True)]
            for blob in oci.files:
                if blob not in missing:
                    report.skipped_files += 1
                    report.skipped_bytes += blob.size
            with progress.task(f"Uploading to {ref.registry}", total=sum(b.size for b in missing)) as advance:
                for blob in missing:
                    client.upload_blob(ref.repository, blob.digest, opened.folder / blob.path, blob.size, advance)
                    report.uploaded_files += 1
                    report.uploaded_bytes += blob.size
            for raw in small:
                client.upload_bytes(ref.repository, raw)
            report.digest = client.put_manifest(ref.repository, ref.tag or "latest", data, MANIFEST_MEDIA_TYPE)
    report.seconds = round(time.monotonic() - started, 2)
    return report
