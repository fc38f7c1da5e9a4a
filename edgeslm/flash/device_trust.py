"""The trust policy on a flashed device (``DEST/trust/*.pub``), read and changed through a transport.

``install_policy`` writes the keys of ``flash --trust`` on a device that has no policy yet; a device
that has one accepts new keys only through a bundle signed by a key it trusts (``apply_updates`` after
the switch). ``check_texts`` checks a manifest's signature against the device's keys: the flasher refuses
an untrusted bundle before anything is sent or switched, and the runtime on the device checks again
when it loads (``bundle/trust_policy.py``).
"""

from __future__ import annotations

from pathlib import Path

from ..bundle.signatures import SIGNATURE_NAME, SIGNED_MANIFEST_NAME, SignatureCheck, check_signatures
from ..bundle.signing_keys import PUBLIC_SUFFIX, PublicKey, load_public_keys, parse_public_key
from ..bundle.trust_policy import TRUST_DIR, key_file_name, updated_keys
from ..errors import SignatureError, UsageError
from .device_layout import Layout
from .transport import Transport


def trust_folder(layout: Layout) -> str:
    return f"{layout.root}/{TRUST_DIR}"


def device_keys(t: Transport, layout: Layout) -> dict[str, PublicKey]:
    """The device's trusted keys by id (empty: the device has no policy)."""
    keys: dict[str, PublicKey] = {}
    folder = trust_folder(layout)
    for name in sorted(t.listdir(folder)):
        if name.endswith(PUBLIC_SUFFIX):
            text = t.read_text(f"{folder}/{name}")
            if text:
                key = parse_public_key(text, f"{folder}/{name}")
                keys[key.key_id] = key
    return keys


def policy_to_apply(t: Transport, layout: Layout, trust: tuple[Path, ...], label: str
                    ) -> tuple[dict[str, PublicKey], bool]:
    """The keys the flash checks against, and whether they are new (``trust`` keys for a device without a
    policy: written by ``install_policy`` once the bundle passed). A device with a policy accepts only keys
    it already trusts on the command line (a workstation cannot add its own key to it)."""
    current = device_keys(t, layout)
    if not trust:
        return current, False
    wanted = load_public_keys(list(trust))
    if not wanted:
        raise UsageError(f"--trust {', '.join(map(str, trust))}: no public key found")
    if current:
        new = [k for k in wanted if k not in current]
        if new:
            raise SignatureError(f"{label} already has a trust policy ({', '.join(current)}); it does not take "
                                 f"new key(s) {', '.join(new)} from the command line", "unknown-key",
                                 hint="add keys with a bundle signed by a trusted key: edgeslm sign BUNDLE --key "
                                      "OLD --add-trusted-key NEW.pub")
        return current, False
    return wanted, True


def install_policy(t: Transport, layout: Layout, keys: dict[str, PublicKey]) -> None:
    _write_keys(t, layout, keys)


def check_texts(t: Transport, folder: str, keys: dict[str, PublicKey], label: str) -> SignatureCheck:
    """Check the signature of a bundle already on the device (an installed version, a rollback)."""
    manifest = t.read_text(f"{folder}/manifest.json") or ""
    return check_signatures(manifest, t.read_text(f"{folder}/{SIGNATURE_NAME}"),
                            t.read_text(f"{folder}/{SIGNED_MANIFEST_NAME}"), keys, label)


def planned_keys(keys: dict[str, PublicKey], check: SignatureCheck) -> dict[str, PublicKey] | None:
    """The key set the accepted signatures' trust updates ask for (checked before sending), or None."""
    updates = tuple(u for u in check.trust_updates if u.add or u.remove)
    return updated_keys(keys, updates) if updates else None


def apply_updates(t: Transport, layout: Layout, old: dict[str, PublicKey], new: dict[str, PublicKey]) -> list[str]:
    """Write added keys, then remove dropped ones (never an empty policy in between). Returns the changes."""
    changes = [f"+{k}" for k in new if k not in old] + [f"-{k}" for k in old if k not in new]
    _write_keys(t, layout, {k: v for k, v in new.items() if k not in old})
    folder = trust_folder(layout)
    for name in t.listdir(folder):
        text = t.read_text(f"{folder}/{name}") if name.endswith(PUBLIC_SUFFIX) else None
        if text and parse_public_key(text, f"{folder}/{name}").key_id not in new:
            t.remove(f"{folder}/{name}")
    return changes


def _write_keys(t: Transport, layout: Layout, keys: dict[str, PublicKey]) -> None:
    t.makedirs(trust_folder(layout))
    for key in keys.values():
        t.write_text(f"{trust_folder(layout)}/{key_file_name(key)}", key.openssh_line() + "\n")
