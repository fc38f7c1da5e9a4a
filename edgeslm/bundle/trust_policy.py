"""A device's trust policy: the public keys whose signed bundles it installs and runs.

The policy is a folder of ``.pub`` files (one OpenSSH Ed25519 line each). ``edgeslm flash --trust
PUB`` writes it as ``DEST/trust/`` beside the flashed versions; a policy can also be given to the
runtime explicitly, by ``EDGESLM_TRUST_DIR``, or system-wide in ``/etc/edgeslm/trust``. Where a
policy exists, the runtime loads a bundle only if a key of the policy signed its manifest (then the
checksums are checked as always); where none exists, everything runs as before, with a notice that the
bundle is unsigned. The check runs on the device itself, so a compromised workstation cannot skip it.

Keys change only through a bundle signed by a currently trusted key whose signature carries a
``trust_update`` (``edgeslm sign --add-trusted-key/--remove-trusted-key``); ``updated_keys`` computes
the new set, which may never be empty.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import SignatureError
from .signatures import SIGNATURE_NAME, SignatureCheck, TrustUpdate, check_folder, describe
from .signing_keys import PUBLIC_SUFFIX, PublicKey, load_public_keys, parse_public_key

TRUST_DIR = "trust"
ENVIRONMENT = "EDGESLM_TRUST_DIR"
SYSTEM_DIR = Path("/etc/edgeslm/trust")


@dataclass(frozen=True)
class TrustStatus:
    policy: Path | None  # the policy folder that was enforced, if any
    check: SignatureCheck | None  # the accepted signatures (with a policy)
    notice: str | None = None  # one line for the user (e.g. an unsigned bundle without a policy)

    @property
    def signed_by(self) -> list[str]:
        return [f"{s.signer} ({s.key_id})" for s in self.check.accepted] if self.check else []


def key_file_name(key: PublicKey) -> str:
    return key.key_id.replace(":", "-") + PUBLIC_SUFFIX  # no ':' (FAT and Android storage refuse it)


def find_policy(source: Path, explicit: Path | None = None) -> Path | None:
    """The policy folder for a bundle opened from ``source``: explicit, else $EDGESLM_TRUST_DIR, else the
    flash layout's ``trust/`` (``source`` is DEST, DEST/current or DEST/versions/V), else the system one."""
    if explicit is not None:
        return Path(explicit)
    if os.environ.get(ENVIRONMENT):
        return Path(os.environ[ENVIRONMENT])
    source = Path(source).absolute()
    roots = [source]
    if source.name == "current":
        roots.append(source.parent)
    if source.parent.name == "versions":
        roots.append(source.parent.parent)
    for root in roots:
        if (root / TRUST_DIR).is_dir() and ((root / "versions").is_dir() or (root / "CURRENT").exists()):
            return root / TRUST_DIR
    return SYSTEM_DIR if SYSTEM_DIR.is_dir() else None


def policy_keys(folder: Path) -> dict[str, PublicKey]:
    keys = load_public_keys([folder])
    if not keys:  # an emptied policy must not mean "trust nothing is checked"
        raise SignatureError(f"the trust policy {folder} holds no public key: nothing can be trusted", "unknown-key",
                             hint="restore its .pub files (edgeslm flash --trust PUB on an empty folder)")
    return keys


def enforce(folder: Path, source: Path, explicit: Path | None = None) -> TrustStatus:
    """Refuse a bundle (SignatureError) that the applicable policy does not trust."""
    policy = find_policy(source, explicit)
    if policy is None:
        if (Path(folder) / SIGNATURE_NAME).exists():
            signers = ", ".join(f"{r['signer']} ({r['state']})" for r in describe(folder))
            return TrustStatus(None, None, f"bundle signed by {signers}; no trust policy on this device checks it")
        return TrustStatus(None, None, "the bundle is unsigned (no trust policy on this device: it runs anyway)")
    if not policy.is_dir():
        raise SignatureError(f"trust policy {policy} does not exist", "unknown-key",
                             hint="create it with edgeslm flash --trust PUB, or unset " + ENVIRONMENT)
    return TrustStatus(policy, check_folder(folder, policy_keys(policy)))


def updated_keys(current: dict[str, PublicKey], updates: tuple[TrustUpdate, ...]) -> dict[str, PublicKey]:
    """The key set after the updates carried by accepted signatures; never empty."""
    keys = dict(current)
    for update in updates:
        for line in update.add:
            key = parse_public_key(line, "a trust_update key")
            keys[key.key_id] = key
        for key_id in update.remove:
            keys.pop(key_id, None)
    if not keys:
        raise SignatureError("the bundle's trust update would remove every trusted key", "unknown-key",
                             hint="add the new key in the same update that removes the old one")
    return keys
