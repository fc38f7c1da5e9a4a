"""Ed25519 keys for signing bundles (``edgeslm keygen``), through the ``cryptography`` package.

A private key is a PKCS#8 PEM file, encrypted when a passphrase is given, written with mode 0600;
a key whose file other users can read is refused, as ssh refuses one. A public key is one OpenSSH
line (``ssh-ed25519 AAAA… NAME``): printable, easy to paste into a device's ``trust/`` folder. A
key's id is ``ed25519:`` + the first 16 hex digits of the sha256 of its 32 raw bytes.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import BackendMissingError, KeyFileError, OutputExistsError

PUBLIC_SUFFIX = ".pub"


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # fail closed: without the library no signature can be made or checked
        raise BackendMissingError("signing and trust policies need the 'cryptography' package",
                                  hint="pip install 'cryptography>=42' (a dependency of edgeslm)") from None
    return serialization, ed25519


@dataclass(frozen=True)
class PublicKey:
    raw: bytes  # the 32-byte Ed25519 public key
    name: str  # the comment of its OpenSSH line (who it belongs to)

    @property
    def key_id(self) -> str:
        return "ed25519:" + hashlib.sha256(self.raw).hexdigest()[:16]

    def openssh_line(self) -> str:
        serialization, ed25519 = _crypto()
        key = ed25519.Ed25519PublicKey.from_public_bytes(self.raw)
        line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
        return f"{line} {self.name}".strip()

    def verifies(self, signature: bytes, data: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature

        _, ed25519 = _crypto()
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class SigningKey:
    private: object  # cryptography's Ed25519PrivateKey
    public: PublicKey

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)  # type: ignore[attr-defined]


def generate_key(out: Path, name: str, passphrase: str | None = None, force: bool = False) -> PublicKey:
    """Write ``out`` (private, 0600) and ``out.pub``; never replace an existing key unless ``force``."""
    serialization, ed25519 = _crypto()
    out = Path(out)
    pub_path = out.with_name(out.name + PUBLIC_SUFFIX)
    for path in (out, pub_path):
        if path.exists() and not force:
            raise OutputExistsError(f"{path} exists", hint="choose another path, or pass [[force]] to replace the key")
    if passphrase == "":
        raise KeyFileError("an empty passphrase protects nothing", hint="give a passphrase, or none at all")
    private = ed25519.Ed25519PrivateKey.generate()
    encryption = (serialization.BestAvailableEncryption(passphrase.encode()) if passphrase
                  else serialization.NoEncryption())
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    public = PublicKey(raw, name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, not even briefly
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    os.replace(tmp, out)
    pub_path.write_text(public.openssh_line() + "\n", encoding="utf-8")
    return public


def load_signing_key(path: Path, passphrase: str | None = None) -> SigningKey:
    """Read a private key: refused if group/others can read it, or if it is encrypted and no passphrase
    is given (a non-interactive run cannot ask for one)."""
    serialization, ed25519 = _crypto()
    path = Path(path)
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"signing key {path} does not exist", hint="create one with 'edgeslm keygen'") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read signing key {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"signing key {path} is readable by other users (mode {stat.S_IMODE(mode):04o})",
                           hint=f"chmod 600 {path}")
    encrypted = b"ENCRYPTED" in data.split(b"\n", 1)[0]
    if encrypted and not passphrase:
        raise KeyFileError(f"signing key {path} is protected by a passphrase and none was given",
                           hint="pass [[passphrase_env]] NAME with the passphrase in that environment variable, "
                                "or run in a terminal to be asked")
    try:
        private = serialization.load_pem_private_key(data, password=passphrase.encode() if encrypted else None)
    except (ValueError, TypeError) as exc:
        wrong = "incorrect password" in str(exc).lower() or "bad decrypt" in str(exc).lower()
        raise KeyFileError(f"signing key {path}: " + ("wrong passphrase" if wrong else "not an Ed25519 private key "
                           "in PEM format")) from None
    if not isinstance(private, ed25519.Ed25519PrivateKey):
        raise KeyFileError(f"signing key {path} is not an Ed25519 key")
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pub_path = path.with_name(path.name + PUBLIC_SUFFIX)
    name = _read_public(pub_path).name if pub_path.is_file() else path.stem
    return SigningKey(private, PublicKey(raw, name))


def parse_public_key(line: str, where: str) -> PublicKey:
    serialization, ed25519 = _crypto()
    parts = line.strip().split(None, 2)
    if len(parts) < 2 or parts[0] != "ssh-ed25519":
        raise KeyFileError(f"{where} is not an Ed25519 public key (expected one 'ssh-ed25519 AAAA… NAME' line)")
    try:
        key = serialization.load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
    except (ValueError, TypeError):
        raise KeyFileError(f"{where}: the public key does not decode") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise KeyFileError(f"{where} is not an Ed25519 public key")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PublicKey(raw, parts[2] if len(parts) > 2 else "")


def _read_public(path: Path) -> PublicKey:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read public key {path}: {exc}") from None
    return parse_public_key(text, str(path))


def load_public_keys(paths: list[Path] | tuple[Path, ...]) -> dict[str, PublicKey]:
    """Public keys by id, from ``.pub`` files and from folders of them (a keyring)."""
    keys: dict[str, PublicKey] = {}
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix == PUBLIC_SUFFIX and p.is_file())
        elif path.is_file():
            files = [path]
        else:
            raise KeyFileError(f"trusted key {path} does not exist")
        for file in files:
            key = _read_public(file)
            keys[key.key_id] = key
    return keys
