"""Detached Ed25519 signatures over a bundle's manifest (``manifest.sig``), and their check.

``manifest.json`` lists every file's size and sha256, so signing it signs the bundle. What a key
signs is a *statement*: the sha256 of the manifest's canonical JSON (keys sorted, no whitespace:
re-serializing the manifest does not change it), the bundle id, the signer's name, the time, an
optional trust-policy update and the key's public half. ``manifest.sig`` holds any number of such
signatures, one per key::

    {"schema": "edgeslm-signatures", "schema_version": 1,
     "signatures": [{"key_id": "ed25519:…", "algorithm": "ed25519", "signer": "release-2026",
                     "signed_at": "2026-12-01T18:00:00Z", "bundle_id": "…", "manifest_sha256": "…",
                     "public_key": "ssh-ed25519 AAAA… release-2026",
                     "trust_update": {"add": [], "remove": []}, "signature": "<base64>"}]}

A flash of one target (``flash --target``) installs that target's subset as ``manifest.json`` and the
signed manifest beside it as ``signed-manifest.json``: the check then also requires ``manifest.json``
to be exactly the signed manifest restricted to its one target. Verification works on the texts, so
the flasher can check what is on a device through its transport. Checksums are checked elsewhere
(``verify.py``, ``runtime/verified_files.py``), after the signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config.strict import parse, to_plain
from ..errors import BundleError, ConfigError, EdgeslmError, SignatureError
from .manifest import MANIFEST_NAME, manifest_from_json
from .signing_keys import PublicKey, SigningKey, parse_public_key

SIGNATURE_NAME = "manifest.sig"
SIGNED_MANIFEST_NAME = "signed-manifest.json"
SCHEMA = "edgeslm-signatures"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class TrustUpdate:
    """Keys a device's trust policy gains or loses when it installs this bundle (key rotation)."""

    add: tuple[str, ...] = ()  # OpenSSH public key lines
    remove: tuple[str, ...] = ()  # key ids


@dataclass(frozen=True)
class Signature:
    key_id: str
    algorithm: str
    signer: str
    signed_at: str  # ISO 8601, UTC
    bundle_id: str
    manifest_sha256: str
    public_key: str
    signature: str  # base64 of the 64-byte Ed25519 signature over statement()
    trust_update: TrustUpdate = TrustUpdate()

    def statement(self) -> bytes:
        fields = to_plain(self)
        fields.pop("signature")
        return canonical_json({"purpose": "edgeslm bundle manifest signature", **fields})


@dataclass(frozen=True)
class SignatureFile:
    schema: str
    schema_version: int
    signatures: tuple[Signature, ...] = ()


@dataclass(frozen=True)
class SignatureCheck:
    """Signatures by trusted keys over the manifest in use (``accepted``, never empty)."""

    accepted: tuple[Signature, ...]
    manifest_sha256: str
    trust_updates: tuple[TrustUpdate, ...] = field(default=())


def canonical_json(data: object) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def manifest_sha256(manifest_text: str) -> str:
    try:
        data = json.loads(manifest_text)
    except ValueError as exc:
        raise BundleError(f"{MANIFEST_NAME} is not valid JSON: {exc}") from None
    return hashlib.sha256(canonical_json(data)).hexdigest()


def read_signature_file(text: str | None, where: str = SIGNATURE_NAME) -> SignatureFile | None:
    """``None`` when there is no signature file; SignatureError(malformed) when it does not parse."""
    if text is None:
        return None
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("schema") != SCHEMA or data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"not an {SCHEMA} v{SCHEMA_VERSION} file")
        return parse(SignatureFile, data, where)
    except (ValueError, ConfigError) as exc:
        message = exc.message if isinstance(exc, ConfigError) else str(exc)
        raise SignatureError(f"{where} is damaged or truncated: {message}", "malformed",
                             hint="sign the bundle again ('edgeslm sign'), or re-copy it") from None


def sign_manifest(manifest_text: str, old: SignatureFile | None, key: SigningKey, signer: str | None = None,
                  update: TrustUpdate = TrustUpdate(), now: float | None = None) -> tuple[SignatureFile, int]:
    """The signature file with ``key``'s signature added (replacing its earlier one); signatures over an
    older manifest are dropped. Returns the file and how many stale signatures were dropped."""
    manifest = manifest_from_json(json.loads(manifest_text))
    for line in update.add:
        parse_public_key(line, "a key to add to the trust policy")
    digest = manifest_sha256(manifest_text)
    unsigned = Signature(key.public.key_id, "ed25519", signer or key.public.name, _utc(now), manifest.bundle_id,
                         digest, key.public.openssh_line(), "", update)
    signed = Signature(**{**vars(unsigned), "signature": base64.b64encode(key.sign(unsigned.statement())).decode()})
    kept = [s for s in (old.signatures if old else ()) if s.manifest_sha256 == digest and s.key_id != signed.key_id]
    dropped = sum(1 for s in (old.signatures if old else ()) if s.manifest_sha256 != digest)
    return SignatureFile(SCHEMA, SCHEMA_VERSION, (*kept, signed)), dropped


def sign_bundle(folder: Path, key: SigningKey, signer: str | None = None, update: TrustUpdate = TrustUpdate(),
                now: float | None = None) -> tuple[Signature, int]:
    """Sign ``folder``'s manifest.json; write manifest.sig atomically. Returns the new signature and the
    number of stale signatures dropped."""
    folder = Path(folder)
    if (folder / SIGNED_MANIFEST_NAME).exists():
        raise BundleError(f"{folder} is one target's part of a bundle installed by 'edgeslm flash'",
                          hint="sign the bundle that was built, then flash it again")
    try:
        text = (folder / MANIFEST_NAME).read_text(encoding="utf-8")
    except OSError:
        raise BundleError(f"{folder} is not a bundle: it has no readable {MANIFEST_NAME}") from None
    old = read_signature_file(_read(folder / SIGNATURE_NAME), str(folder / SIGNATURE_NAME))
    sig_file, dropped = sign_manifest(text, old, key, signer, update, now)
    write_signature_file(folder, sig_file)
    return sig_file.signatures[-1], dropped


def write_signature_file(folder: Path, sig_file: SignatureFile) -> None:
    tmp = Path(folder) / f".{SIGNATURE_NAME}.tmp"
    tmp.write_text(dumps(sig_file), encoding="utf-8")
    os.replace(tmp, Path(folder) / SIGNATURE_NAME)


def dumps(sig_file: SignatureFile) -> str:
    return json.dumps(to_plain(sig_file), indent=1) + "\n"


def check_signatures(manifest_text: str, sig_text: str | None, signed_manifest_text: str | None,
                     trusted: dict[str, PublicKey], label: str) -> SignatureCheck:
    """Accept the manifest in use only if a trusted key signed it; else SignatureError naming what failed."""
    sig_file = read_signature_file(sig_text, f"{label}/{SIGNATURE_NAME}")
    if sig_file is None or not sig_file.signatures:
        raise SignatureError(f"{label} is not signed (no {SIGNATURE_NAME}) and this device only runs signed bundles",
                             "unsigned", hint="sign it with a trusted key: edgeslm sign BUNDLE --key KEY")
    document = signed_manifest_text if signed_manifest_text is not None else manifest_text
    digest = manifest_sha256(document)
    accepted, stale, bad = [], [], []
    for sig in sig_file.signatures:
        key = trusted.get(sig.key_id)
        if key is None:
            continue
        if not key.verifies(_decode(sig.signature), sig.statement()):
            bad.append(sig)
        elif sig.manifest_sha256 != digest:
            stale.append(sig)
        else:
            accepted.append(sig)
    if not accepted:
        if bad:
            raise SignatureError(f"{label}: the signature by {bad[0].key_id} ({bad[0].signer}) does not verify: "
                                 "manifest.sig was altered", "bad-signature",
                                 hint="never run it; rebuild or re-sign the bundle")
        if stale:
            raise SignatureError(f"{label}: the signature by {stale[0].key_id} ({stale[0].signer}, "
                                 f"{stale[0].signed_at}) is over another manifest: {MANIFEST_NAME} changed after "
                                 "it was signed", "stale-signature",
                                 hint="never run it; if the change is yours, sign the bundle again")
        ids = ", ".join(f"{s.key_id} ({s.signer})" for s in sig_file.signatures)
        raise SignatureError(f"{label} is signed only by key(s) this device does not trust: {ids}", "unknown-key",
                             hint=f"trusted: {', '.join(trusted) or 'none'}; add a key with a bundle signed by a "
                                  "trusted key (edgeslm sign --add-trusted-key)")
    if signed_manifest_text is not None:
        _check_subset(manifest_text, signed_manifest_text, label)
    return SignatureCheck(tuple(accepted), digest, tuple(s.trust_update for s in accepted))


def _check_subset(manifest_text: str, signed_text: str, label: str) -> None:
    """``manifest.json`` must be exactly the signed manifest restricted to its one target."""
    used = json.loads(manifest_text)
    targets = list(used.get("targets") or {}) if isinstance(used, dict) else []
    signed = manifest_from_json(json.loads(signed_text), f"{label}/{SIGNED_MANIFEST_NAME}")
    if len(targets) != 1 or targets[0] not in signed.targets or \
            canonical_json(signed.for_target(targets[0]).to_json()) != canonical_json(used):
        raise SignatureError(f"{label}/{MANIFEST_NAME} is not the signed manifest restricted to one target",
                             "not-the-signed-manifest", hint="never run it; flash the signed bundle again")


def check_folder(folder: Path, trusted: dict[str, PublicKey]) -> SignatureCheck:
    folder = Path(folder)
    text = _read(folder / MANIFEST_NAME)
    if text is None:
        raise BundleError(f"{folder} is not a bundle: it has no {MANIFEST_NAME}")
    return check_signatures(text, _read(folder / SIGNATURE_NAME), _read(folder / SIGNED_MANIFEST_NAME),
                            trusted, str(folder))


def describe(folder: Path) -> list[dict]:
    """Each signature of a bundle with its own check (by the public key it names, not a trusted one):
    for ``edgeslm inspect``, which shows who signed and when."""
    folder = Path(folder)
    sig_file = read_signature_file(_read(folder / SIGNATURE_NAME), str(folder / SIGNATURE_NAME))
    text = _read(folder / SIGNED_MANIFEST_NAME) or _read(folder / MANIFEST_NAME) or "{}"
    digest = manifest_sha256(text)
    rows = []
    for sig in sig_file.signatures if sig_file else ():
        try:
            key = parse_public_key(sig.public_key, SIGNATURE_NAME)
            valid = key.key_id == sig.key_id and key.verifies(_decode(sig.signature), sig.statement())
        except EdgeslmError:  # a damaged key line: an invalid signature
            valid = False
        state = "stale" if valid and sig.manifest_sha256 != digest else "valid" if valid else "invalid"
        rows.append({"key_id": sig.key_id, "signer": sig.signer, "signed_at": sig.signed_at, "state": state,
                     "trust_update": to_plain(sig.trust_update)})
    return rows


def _decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return b""


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"cannot read {path}: {exc}") from None


def _utc(now: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))
