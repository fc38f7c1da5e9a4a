"""``edgeslm keygen`` and ``edgeslm sign``: Ed25519 keys and signed bundles (docs/signing.md)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .output import echo_json


def passphrase_option(command):
    return click.option("--passphrase-env", metavar="NAME", default=None,
                        help="Environment variable holding the key's passphrase (else asked in a terminal).")(command)


def read_passphrase(key: Path, env_name: str | None) -> str | None:
    """The passphrase from ``env_name``, else asked on a terminal when the key is encrypted, else None
    (the library then refuses an encrypted key with a one-line error: a non-interactive run cannot ask)."""
    from ..errors import UsageError

    if env_name:
        if env_name not in os.environ:
            raise UsageError(f"--passphrase-env {env_name}: that environment variable is not set")
        return os.environ[env_name]
    try:
        encrypted = b"ENCRYPTED" in Path(key).read_bytes()[:64]
    except OSError:
        return None  # the library names the missing or unreadable file
    if encrypted and sys.stdin.isatty():
        return click.prompt(f"passphrase for {key}", hide_input=True)
    return None


def load_key(key: Path, env_name: str | None):
    from ..bundle.signing_keys import load_signing_key

    return load_signing_key(key, read_passphrase(key, env_name))


@click.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--name", default=None, help="Who the key belongs to, recorded with each signature [default: OUT's name].")
@click.option("--passphrase-env", metavar="NAME", default=None, help="Encrypt the key with this variable's value.")
@click.option("--ask-passphrase", is_flag=True, help="Ask for a passphrase to encrypt the key with (a terminal).")
@click.option("--force", is_flag=True, help="Replace an existing key.")
@click.option("--json", "as_json", is_flag=True)
def keygen(out: Path, name: str | None, passphrase_env: str | None, ask_passphrase: bool, force: bool,
           as_json: bool) -> None:
    """Create an Ed25519 signing key OUT (mode 0600) and its public key OUT.pub."""
    from ..bundle.signing_keys import generate_key
    from ..errors import UsageError

    passphrase = None
    if passphrase_env:
        passphrase = read_passphrase(out, passphrase_env)
    elif ask_passphrase:
        if not sys.stdin.isatty():
            raise UsageError("--ask-passphrase needs a terminal", hint="use --passphrase-env NAME in scripts")
        passphrase = click.prompt("passphrase", hide_input=True, confirmation_prompt=True)
    public = generate_key(out, name or out.name, passphrase, force)
    if as_json:
        echo_json({"private_key": str(out), "public_key_file": f"{out}.pub", "key_id": public.key_id,
                   "public_key": public.openssh_line(), "encrypted": bool(passphrase)})
        return
    click.echo(f"wrote {out} (private, mode 0600{', passphrase-protected' if passphrase else ''}) and {out}.pub")
    click.echo(f"key id {public.key_id}")
    click.echo(public.openssh_line())


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--key", "-k", type=click.Path(path_type=Path), required=True, help="Private key from 'edgeslm keygen'.")
@passphrase_option
@click.option("--signer", default=None, help="Name recorded with the signature [default: the key's name].")
@click.option("--add-trusted-key", "add", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
              help="A public key devices that trust this signature add to their policy (key rotation).")
@click.option("--remove-trusted-key", "remove", multiple=True, metavar="KEY_ID",
              help="A key id devices that trust this signature remove from their policy.")
@click.option("--json", "as_json", is_flag=True)
def sign(bundle: Path, key: Path, passphrase_env: str | None, signer: str | None, add: tuple[Path, ...],
         remove: tuple[str, ...], as_json: bool) -> None:
    """Sign BUNDLE's manifest (which lists every file's sha256) into BUNDLE/manifest.sig."""
    from ..bundle.signatures import TrustUpdate, sign_bundle
    from ..bundle.signing_keys import load_public_keys

    lines = tuple(k.openssh_line() for k in load_public_keys(list(add)).values())
    signature, dropped = sign_bundle(bundle, load_key(key, passphrase_env), signer, TrustUpdate(lines, remove))
    if as_json:
        echo_json({"bundle": str(bundle), "key_id": signature.key_id, "signer": signature.signer,
                   "signed_at": signature.signed_at, "manifest_sha256": signature.manifest_sha256,
                   "dropped_stale_signatures": dropped})
        return
    click.echo(f"signed {bundle} as {signature.signer} ({signature.key_id}) at {signature.signed_at}")
    if dropped:
        click.echo(f"removed {dropped} signature(s) over an older manifest")
