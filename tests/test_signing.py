"""Signed bundles and the device trust policy (issue 19): real Ed25519 keys (cryptography), real builds of the
docs model, real flashes to folders and over a real OpenSSH server, the real runtime refusing what it must."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from conftest import DOCS_MODEL, assert_clean_error, run_cli

PROMPT = "What is `len`?"


def keygen(folder: Path, name: str, *extra: str, env: dict | None = None) -> Path:
    key = folder / name
    result = run_cli("keygen", str(key), "--name", name, "--json", *extra, env=env, input="")
    assert result.returncode == 0, result
    info = result.json()
    assert info["key_id"].startswith("ed25519:") and info["public_key"].startswith("ssh-ed25519 ")
    return key


def key_id(key: Path) -> str:
    from edgeslm.bundle.signing_keys import load_public_keys

    return next(iter(load_public_keys([Path(f"{key}.pub")])))


def sign(bundle: Path, key: Path, *extra: str, env: dict | None = None):
    return run_cli("sign", str(bundle), "--key", str(key), "--json", *extra, env=env, input="")


def signed(bundle: Path, key: Path, *extra: str) -> Path:
    result = sign(bundle, key, *extra)
    assert result.returncode == 0, result
    return bundle


def rewrite_like_an_attacker(bundle: Path) -> str:
    """Change bytes of the weights, recompute their sha256 and write it into manifest.json."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = next(f for a in manifest["artifacts"] for f in a["files"] if f["path"].endswith(".onnx.data"))
    path = bundle / entry["path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(data))
    entry["sha256"] = hashlib.sha256(data).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return entry["path"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    return {name: keygen(folder, name) for name in ("release", "other", "next")}


@pytest.fixture()
def signed_copy(bundle_copy, keys) -> Path:
    return signed(bundle_copy, keys["release"])


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path, keys):
    key = keys["release"]
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert Path(f"{key}.pub").read_text().startswith("ssh-ed25519 ") and "PRIVATE" in key.read_text()
    assert_clean_error(run_cli("keygen", str(key), input=""), "exists", "--force")  # never replaced silently
    loose = tmp_path / "loose"
    shutil.copy(key, loose)
    os.chmod(loose, 0o644)
    assert_clean_error(run_cli("sign", str(tmp_path), "--key", str(loose), input=""), "readable by other users",
                       "chmod 600")


def test_passphrase_key_needs_its_passphrase_in_a_non_interactive_run(bundle_copy, tmp_path):
    env = {"KEY_PASS": "correct horse battery staple"}
    key = keygen(tmp_path, "locked", "--passphrase-env", "KEY_PASS", env=env)
    assert "ENCRYPTED" in key.read_text()
    assert_clean_error(sign(bundle_copy, key), "protected by a passphrase", "--passphrase-env")
    assert_clean_error(sign(bundle_copy, key, "--passphrase-env", "KEY_PASS", env={"KEY_PASS": "wrong"}),
                       "wrong passphrase")
    assert_clean_error(sign(bundle_copy, key, "--passphrase-env", "UNSET_VARIABLE_X"), "not set")
    assert not (bundle_copy / "manifest.sig").exists()
    ok = sign(bundle_copy, key, "--passphrase-env", "KEY_PASS", env=env)
    assert ok.returncode == 0, ok
    assert ok.json()["signer"] == "locked"
    # a build refuses before it starts, not after the export
    out = tmp_path / "never.bundle"
    assert_clean_error(run_cli("build", "--target", "raspberrypi", "--model", str(DOCS_MODEL), "--out", str(out),
                               "--sign", str(key), "--no-eval", input=""), "protected by a passphrase")
    assert not out.exists()


def test_verify_checks_the_signature_then_every_checksum(signed_copy, keys):
    pub = f"{keys['release']}.pub"
    ok = run_cli("verify", str(signed_copy), "--trusted-key", pub)
    assert ok.returncode == 0 and "signed by release" in ok.stdout, ok
    keyring = keys["release"].parent  # a folder of .pub files works as a keyring
    assert run_cli("verify", str(signed_copy), "--trusted-key", str(keyring), "--json").json()["signed_by"]
    assert_clean_error(run_cli("verify", str(signed_copy), "--trusted-key", f"{keys['other']}.pub"),
                       "does not trust", key_id(keys["release"]))
    # a file altered without touching the manifest: the signature holds, the checksum names the file
    data = next(signed_copy.rglob("*.onnx.data"))
    with data.open("r+b") as handle:
        handle.seek(100)
        handle.write(b"\xff" * 8)
    assert_clean_error(run_cli("verify", str(signed_copy), "--trusted-key", pub), "altered", data.name)


def test_the_rewritten_manifest_attack_is_refused_by_verify_flash_and_run(signed_copy, keys, tmp_path):
    pub = f"{keys['release']}.pub"
    rewrite_like_an_attacker(signed_copy)
    assert run_cli("verify", str(signed_copy)).returncode == 0  # the checksums alone cannot see it
    assert_clean_error(run_cli("verify", str(signed_copy), "--trusted-key", pub), "over another manifest")
    dest = tmp_path / "device"
    assert_clean_error(run_cli("flash", str(signed_copy), "--to", str(dest), "--trust", pub), "over another manifest")
    assert not (dest / "versions").exists() and not (dest / "CURRENT").exists()  # nothing was sent or switched
    policy = {"EDGESLM_TRUST_DIR": str(keys["release"].parent)}
    assert_clean_error(run_cli("run", str(signed_copy), PROMPT, "-n", "4", env=policy), "over another manifest")
    assert_clean_error(run_cli("serve", str(signed_copy), "--port", "0", env=policy, timeout=120),
                       "over another manifest")  # refused at load, before the server starts


def test_unknown_key_removed_and_truncated_signatures(bundle_copy, keys, tmp_path):
    trust = {"EDGESLM_TRUST_DIR": str(tmp_path / "policy")}
    (tmp_path / "policy").mkdir()
    shutil.copy(f"{keys['release']}.pub", tmp_path / "policy" / "release.pub")
    assert_clean_error(run_cli("run", str(bundle_copy), PROMPT, "-n", "4", env=trust), "is not signed")
    signed(bundle_copy, keys["other"])
    assert_clean_error(run_cli("run", str(bundle_copy), PROMPT, "-n", "4", env=trust), "does not trust",
                       key_id(keys["other"]))
    signed(bundle_copy, keys["release"])  # a second signature beside the first: now trusted
    ok = run_cli("run", str(bundle_copy), PROMPT, "-n", "4", "--json", env=trust)
    assert ok.returncode == 0, ok
    assert ok.json()["signed_by"] == [f"release ({key_id(keys['release'])})"]
    sig = bundle_copy / "manifest.sig"
    text = sig.read_text()
    sig.write_text(text[: len(text) // 2])
    assert_clean_error(run_cli("run", str(bundle_copy), PROMPT, "-n", "4", env=trust), "damaged or truncated")
    tampered = json.loads(text)
    last = tampered["signatures"][-1]
    last["signer"] = "someone else"  # the statement changed: the signature no longer verifies
    sig.write_text(json.dumps(tampered))
    assert_clean_error(run_cli("run", str(bundle_copy), PROMPT, "-n", "4", env=trust), "does not verify")
    sig.unlink()
    assert_clean_error(run_cli("verify", str(bundle_copy), "--trusted-key", str(tmp_path / "policy")),
                       "is not signed")


def test_a_signature_over_an_older_manifest_is_refused(built_bundle, tmp_path, keys):
    old, new = tmp_path / "old.bundle", tmp_path / "new.bundle"
    shutil.copytree(built_bundle, old)
    shutil.copytree(built_bundle, new)
    signed(old, keys["release"])
    manifest = json.loads((new / "manifest.json").read_text())
    manifest["warnings"] = [*manifest.get("warnings", []), "a newer build"]  # a later manifest of the same bundle
    (new / "manifest.json").write_text(json.dumps(manifest, indent=2))
    shutil.copy(old / "manifest.sig", new / "manifest.sig")
    assert_clean_error(run_cli("verify", str(new), "--trusted-key", f"{keys['release']}.pub"), "over another manifest")
    again = sign(new, keys["release"])  # signing the new manifest replaces the stale signature
    assert again.returncode == 0 and again.json()["dropped_stale_signatures"] == 1, again
    assert run_cli("verify", str(new), "--trusted-key", f"{keys['release']}.pub").returncode == 0


def test_packed_and_unpacked_bundles_keep_their_signature(signed_copy, keys, tmp_path):
    tar = tmp_path / "signed.tar"
    packed = run_cli("pack", str(signed_copy), "--out", str(tar))
    assert packed.returncode == 0, packed
    assert run_cli("verify", str(tar), "--trusted-key", f"{keys['release']}.pub").returncode == 0
    ok = run_cli("run", str(tar), PROMPT, "-n", "4", env={"EDGESLM_TRUST_DIR": str(keys["release"].parent)})
    assert ok.returncode == 0, ok
    from edgeslm.bundle.pack import unpack_bundle

    unpacked = unpack_bundle(tar, tmp_path / "unpacked")
    assert (unpacked / "manifest.sig").read_bytes() == (signed_copy / "manifest.sig").read_bytes()
    assert run_cli("verify", str(unpacked), "--trusted-key", f"{keys['release']}.pub").returncode == 0
    inspect = run_cli("inspect", str(tar))
    assert "signed    by release" in inspect.stdout and ": valid" in inspect.stdout, inspect
    assert run_cli("inspect", str(tar), "--json").json()["signatures"][0]["signer"] == "release"


def test_unsigned_bundles_run_without_a_policy_with_a_notice(built_bundle):
    ok = run_cli("run", str(built_bundle), PROMPT, "-n", "4")
    assert ok.returncode == 0, ok
    assert "edgeslm: notice: the bundle is unsigned" in ok.stderr
    assert "signed    no" in run_cli("inspect", str(built_bundle)).stdout


def test_flash_installs_a_policy_and_then_refuses_unsigned_and_untrusted_bundles(built_bundle, signed_copy, keys,
                                                                               tmp_path):
    dest, pub = tmp_path / "sdcard", f"{keys['release']}.pub"
    assert_clean_error(run_cli("flash", str(built_bundle), "--to", str(dest), "--trust", pub), "is not signed")
    assert not (dest / "trust").exists()  # a refused flash installs no policy either
    first = run_cli("flash", str(signed_copy), "--to", str(dest), "--trust", pub, "--json")
    assert first.returncode == 0, first
    report = first.json()
    assert report["signed_by"] == [f"release ({key_id(keys['release'])})"] and report["trust_changes"]
    assert [p.name for p in (dest / "trust").iterdir()] == [key_id(keys["release"]).replace(":", "-") + ".pub"]
    assert {"manifest.sig", "manifest.json"} <= {p.name for p in (dest / "current").iterdir()}
    active = (dest / "CURRENT").read_text()
    assert run_cli("run", str(dest), PROMPT, "-n", "4").returncode == 0  # the device's runtime trusts it
    # from now on the device's policy decides, without --trust
    other = tmp_path / "other.bundle"
    shutil.copytree(built_bundle, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["bundle_id"] += "-other"
    (other / "manifest.json").write_text(json.dumps(manifest, indent=2))
    assert_clean_error(run_cli("flash", str(other), "--to", str(dest)), "is not signed")
    signed(other, keys["other"])
    assert_clean_error(run_cli("flash", str(other), "--to", str(dest)), "does not trust")
    assert_clean_error(run_cli("flash", str(other), "--to", str(dest), "--trust", f"{keys['other']}.pub"),
                       "already has a trust policy", "--add-trusted-key")
    assert (dest / "CURRENT").read_text() == active
    # an attacker on the device rewrites the active bundle: the runtime there refuses it
    rewrite_like_an_attacker(dest / "current")
    assert_clean_error(run_cli("run", str(dest), PROMPT, "-n", "4"), "over another manifest")
    assert_clean_error(run_cli("run", str(dest / "current"), PROMPT, "-n", "4", "--verify", "off"),
                       "over another manifest")


def test_one_target_of_a_signed_bundle_is_checked_against_the_signed_manifest(signed_copy, keys, tmp_path):
    dest = tmp_path / "pi"
    flashed = run_cli("flash", str(signed_copy), "--to", str(dest), "--target", "raspberrypi", "--trust",
                      f"{keys['release']}.pub", "--json")
    assert flashed.returncode == 0, flashed
    current = dest / "current"
    assert (current / "signed-manifest.json").read_bytes() == (signed_copy / "manifest.json").read_bytes()
    assert list(json.loads((current / "manifest.json").read_text())["targets"]) == ["raspberrypi5"]  # the alias's name
    assert run_cli("run", str(dest), PROMPT, "-n", "4").returncode == 0
    manifest = json.loads((current / "manifest.json").read_text())
    manifest["artifacts"][0]["context"]["max_total_tokens"] *= 4  # a signed field changed in the subset
    (current / "manifest.json").write_text(json.dumps(manifest, indent=2))
    assert_clean_error(run_cli("run", str(dest), PROMPT, "-n", "4"), "not the signed manifest")


def test_key_rotation_through_a_bundle_signed_by_a_trusted_key(built_bundle, keys, tmp_path):
    dest, old, new = tmp_path / "device", keys["release"], keys["next"]
    v1 = signed(_copy(built_bundle, tmp_path / "v1.bundle", "v1"), old)
    assert run_cli("flash", str(v1), "--to", str(dest), "--trust", f"{old}.pub").returncode == 0
    v2 = _copy(built_bundle, tmp_path / "v2.bundle", "v2")
    signed(v2, old, "--add-trusted-key", f"{new}.pub", "--remove-trusted-key", key_id(old))
    signed(v2, new)  # signed by the new key too, so that it runs once the old key is gone
    rotated = run_cli("flash", str(v2), "--to", str(dest), "--json")
    assert rotated.returncode == 0, rotated
    assert sorted(rotated.json()["trust_changes"]) == sorted([f"+{key_id(new)}", f"-{key_id(old)}"])
    assert [p.name for p in (dest / "trust").iterdir()] == [key_id(new).replace(":", "-") + ".pub"]
    assert run_cli("run", str(dest), PROMPT, "-n", "4").returncode == 0
    v3 = signed(_copy(built_bundle, tmp_path / "v3.bundle", "v3"), old)
    assert_clean_error(run_cli("flash", str(v3), "--to", str(dest)), "does not trust")
    assert_clean_error(run_cli("flash", "--to", str(dest), "--rollback"), "does not trust")  # v1: only the old key
    # an update that would leave no trusted key is refused before anything is sent
    v4 = _copy(built_bundle, tmp_path / "v4.bundle", "v4")
    signed(v4, new, "--remove-trusted-key", key_id(new))
    assert_clean_error(run_cli("flash", str(v4), "--to", str(dest)), "remove every trusted key")
    assert (dest / "CURRENT").read_text().strip().endswith("v2")


def _copy(bundle: Path, out: Path, version: str) -> Path:
    shutil.copytree(bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["bundle_id"] += f"-{version}"
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def test_build_sign_writes_a_signature_devices_accept(keys, tmp_path):
    out = tmp_path / "signed.bundle"
    result = run_cli("build", "--target", "raspberrypi", "--model", str(DOCS_MODEL), "--out", str(out), "--no-eval",
                     "--sign", str(keys["release"]), "--signer", "ci-release", "--json", input="")
    assert result.returncode == 0, result
    assert run_cli("verify", str(out), "--trusted-key", f"{keys['release']}.pub").returncode == 0
    sig = json.loads((out / "manifest.sig").read_text())["signatures"][0]
    assert sig["signer"] == "ci-release" and sig["bundle_id"] == json.loads((out / "manifest.json").read_text())["bundle_id"]
    source = json.loads((out / "manifest.json").read_text())["model"]["source_files"]
    assert source and all(len(f["sha256"]) == 64 for f in source)  # the signed manifest names the checkpoint


def test_flash_over_ssh_with_a_policy(signed_copy, built_bundle, keys, tmp_path):
    from sshd_harness import sshd_available
    from test_flash import DeviceSsh, _ssh_args

    if reason := sshd_available():
        pytest.skip(reason)
    dest = tmp_path / "device"
    with DeviceSsh() as server:
        first = run_cli("flash", str(signed_copy), *_ssh_args(server, dest), "--trust", f"{keys['release']}.pub",
                        "--json")
        assert first.returncode == 0, f"{first}\n{server.log_tail()}"
        assert first.json()["signed_by"] and (dest / "trust").is_dir()
        assert json.loads(first.json()["doctor"])["chosen"] == "onnx-int4-cpu"  # the device's runtime accepted it
        unsigned = _copy(built_bundle, tmp_path / "unsigned.bundle", "u")
        assert_clean_error(run_cli("flash", str(unsigned), *_ssh_args(server, dest)), "is not signed")
    assert run_cli("run", str(dest), PROMPT, "-n", "4").returncode == 0
