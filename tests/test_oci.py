"""Bundles through a real OCI registry (issue 20): Debian's docker-registry (CNCF distribution 2.8) started on
127.0.0.1 by a fixture; real pushes and pulls of the docs model's bundles over HTTP, htpasswd auth, a real
interrupted download, a blob tampered with in the registry's own storage."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DOCS_MODEL, assert_clean_error, run_cli
from registry_harness import Registry, registry_available

PROMPT = "What is `len`?"

pytestmark = pytest.mark.skipif(bool(registry_available()), reason=registry_available() or "")


def cli_json(*args: str, env: dict | None = None) -> dict:
    result = run_cli(*args, "--json", env=env, input="")
    assert result.returncode == 0, result
    return result.json()


@pytest.fixture(scope="module")
def registry():
    with Registry() as server:
        yield server


@pytest.fixture(scope="module")
def second_bundle(tmp_path_factory) -> Path:
    """A new model version: another block size (the tokenizer files are the same blobs)."""
    out = tmp_path_factory.mktemp("v2") / "v2.bundle"
    result = run_cli("build", "--target", "raspberrypi", "--model", str(DOCS_MODEL), "--out", str(out),
                     "--set", "block_size=64", "--no-eval")
    assert result.returncode == 0, result
    return out


def files_of(bundle: Path) -> dict[str, tuple[str, int]]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    return {f["path"]: (f["sha256"], f["size"]) for a in manifest["artifacts"] for f in a["files"]}


def test_push_then_pull_round_trip_and_pushing_again_uploads_nothing(registry, built_bundle, tmp_path):
    ref = f"oci://{registry.host}/edgeslm/docs:v1"
    first = cli_json("push", str(built_bundle), ref, "--plain-http")
    files = files_of(built_bundle)
    assert first["uploaded_files"] == len(files) and first["uploaded_bytes"] == sum(s for _, s in files.values())
    assert first["digest"].startswith("sha256:")
    again = cli_json("push", str(built_bundle), ref, "--plain-http")
    assert again["uploaded_bytes"] == 0 and again["skipped_files"] == len(files)  # content-addressed
    assert again["digest"] == first["digest"]
    out = tmp_path / "pulled.bundle"
    pulled = cli_json("pull", f"oci://{registry.host}/edgeslm/docs@{first['digest']}", "--out", str(out), "--plain-http")
    assert pulled["downloaded_bytes"] == first["uploaded_bytes"] and pulled["digest"] == first["digest"]
    assert (out / "manifest.json").read_bytes() == (built_bundle / "manifest.json").read_bytes()
    assert run_cli("verify", str(out)).returncode == 0
    answer = run_cli("run", str(out), PROMPT, "-n", "6")
    assert answer.returncode == 0 and answer.stdout.strip(), answer
    one = cli_json("pull", ref, "--out", str(tmp_path / "pi.bundle"), "--target", "raspberrypi4", "--plain-http")
    assert list(json.loads((tmp_path / "pi.bundle" / "manifest.json").read_text())["targets"]) == ["raspberrypi4"]
    assert one["files"] <= pulled["files"]


def test_a_new_version_moves_only_the_changed_blobs(registry, built_bundle, second_bundle, tmp_path):
    repo = f"oci://{registry.host}/edgeslm/versions"
    cli_json("push", str(built_bundle), f"{repo}:v1", "--plain-http")
    v2 = cli_json("push", str(second_bundle), f"{repo}:v2", "--plain-http")
    old, new = files_of(built_bundle), files_of(second_bundle)
    shared = {sha for sha, _ in new.values()} & {sha for sha, _ in old.values()}
    assert shared and v2["skipped_files"] == sum(1 for sha, _ in new.values() if sha in shared)
    changed_bytes = sum(size for sha, size in new.values() if sha not in shared)
    assert v2["uploaded_bytes"] == changed_bytes
    device = tmp_path / "device"
    first = cli_json("pull", f"{repo}:v1", "--install", str(device), "--plain-http")
    assert first["action"] == "installed" and (device / "current" / "manifest.json").is_file()
    second = cli_json("update", str(device), "--follow", f"{repo}:v2")
    assert second["action"] == "installed" and second["reused_files"] == len(new) - second["downloaded_files"]
    assert second["downloaded_bytes"] == changed_bytes  # the device downloads only what changed
    assert (device / "CURRENT").read_text().strip() == second["version"]
    assert run_cli("run", str(device), PROMPT, "-n", "4").returncode == 0


def test_an_interrupted_pull_resumes(registry, built_bundle, tmp_path):
    ref = f"oci://{registry.host}/edgeslm/resume:v1"
    cli_json("push", str(built_bundle), ref, "--plain-http")
    out = tmp_path / "slow.bundle"
    cmd = [sys.executable, "-m", "edgeslm", "pull", ref, "--out", str(out), "--plain-http", "--limit-rate", "4M"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = tmp_path / ".slow.bundle.partial"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        parts = [p for p in staging.rglob("*.part") if p.stat().st_size > 2_000_000] if staging.exists() else []
        if parts:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # a power cut, not a polite stop
    proc.wait()
    assert parts and not out.exists()
    cut = sum(p.stat().st_size for p in staging.rglob("*.part"))
    resumed = cli_json("pull", ref, "--out", str(out), "--plain-http")
    assert resumed["resumed_files"] >= 1
    total = sum(size for _, size in files_of(built_bundle).values())
    assert resumed["downloaded_bytes"] <= total - cut + 1  # what the cut pull had was not fetched again
    assert run_cli("verify", str(out)).returncode == 0 and not staging.exists()


def test_a_blob_tampered_with_in_the_registry_is_refused(built_bundle, tmp_path):
    with Registry() as own:  # its own storage: the shared registry's blobs stay intact
        ref = f"oci://{own.host}/edgeslm/tampered:v1"
        cli_json("push", str(built_bundle), ref, "--plain-http")
        sha, _ = next(v for k, v in files_of(built_bundle).items() if k.endswith(".onnx.data"))
        blob = own.blob_file(f"sha256:{sha}")
        data = bytearray(blob.read_bytes())
        data[1000:1008] = b"\x00" * 8
        blob.write_bytes(bytes(data))
        out = tmp_path / "never.bundle"
        assert_clean_error(run_cli("pull", ref, "--out", str(out), "--plain-http"), "does not match its digest")
        assert not out.exists()
        assert not list((tmp_path / ".never.bundle.partial").rglob("*.onnx.data"))  # nothing bad was kept


def test_registry_authentication(built_bundle, tmp_path):
    with Registry(user="fleet", password="s3cret-pass") as own:
        ref = f"oci://{own.host}/edgeslm/private:v1"
        home = {"HOME": str(tmp_path), "DOCKER_CONFIG": str(tmp_path / "docker")}
        assert_clean_error(run_cli("push", str(built_bundle), ref, "--plain-http", env=home), "needs a user name")
        wrong = {**home, "EDGESLM_REGISTRY_USERNAME": "fleet", "EDGESLM_REGISTRY_PASSWORD": "nope"}
        refused = run_cli("push", str(built_bundle), ref, "--plain-http", env=wrong)
        assert_clean_error(refused, "refused access")
        assert "nope" not in refused.stderr + refused.stdout
        good = {**home, "EDGESLM_REGISTRY_USERNAME": "fleet", "EDGESLM_REGISTRY_PASSWORD": "s3cret-pass"}
        assert cli_json("push", str(built_bundle), ref, "--plain-http", env=good)["uploaded_files"]
        (tmp_path / "docker").mkdir()  # docker login's file
        auth = base64.b64encode(b"fleet:s3cret-pass").decode()
        (tmp_path / "docker" / "config.json").write_text(json.dumps({"auths": {own.host: {"auth": auth}}}))
        pulled = run_cli("pull", ref, "--out", str(tmp_path / "p.bundle"), "--plain-http", env=home)
        assert pulled.returncode == 0 and "s3cret" not in pulled.stdout + pulled.stderr, pulled
        # a credential helper (docker-credential-<name> get, host on stdin), as credsStore/credHelpers name it
        helper_bin = tmp_path / "bin"
        helper_bin.mkdir()
        helper = helper_bin / "docker-credential-edgeslmtest"
        helper.write_text(f"#!/bin/sh\nread host\n[ \"$host\" = \"{own.host}\" ] || exit 1\n"
                          "echo '{\"Username\": \"fleet\", \"Secret\": \"s3cret-pass\"}'\n")
        helper.chmod(0o755)
        (tmp_path / "docker" / "config.json").write_text(json.dumps({"credHelpers": {own.host: "edgeslmtest"}}))
        path = {**home, "PATH": f"{helper_bin}:{os.environ['PATH']}"}
        helped = run_cli("pull", ref, "--out", str(tmp_path / "h.bundle"), "--plain-http", env=path)
        assert helped.returncode == 0 and "s3cret" not in helped.stdout + helped.stderr, helped


def test_unknown_tag_registry_down_and_bad_references(registry, tmp_path):
    assert_clean_error(run_cli("pull", f"oci://{registry.host}/edgeslm/docs:nope", "--out", str(tmp_path / "x"),
                               "--plain-http"), "not found")
    assert_clean_error(run_cli("pull", "oci://127.0.0.1:1/edgeslm/docs:v1", "--out", str(tmp_path / "x"),
                               "--plain-http"), "cannot reach the registry")
    assert_clean_error(run_cli("pull", f"oci://{registry.host}/Bad_Repo:v1", "--out", str(tmp_path / "x")),
                       "not a valid repository name")
    assert_clean_error(run_cli("pull", f"oci://{registry.host}/edgeslm/docs:v1", "--out", str(tmp_path / "x")),
                       "cannot reach", "--plain-http")  # TLS by default: a plain-HTTP registry is not reachable so


def test_signatures_travel_with_the_bundle_and_are_checked_on_pull(registry, built_bundle, tmp_path):
    key = tmp_path / "release"
    assert run_cli("keygen", str(key), input="").returncode == 0
    signed = tmp_path / "signed.bundle"
    shutil.copytree(built_bundle, signed)
    assert run_cli("sign", str(signed), "--key", str(key), input="").returncode == 0
    repo = f"oci://{registry.host}/edgeslm/signed"
    cli_json("push", str(signed), f"{repo}:v1", "--plain-http")
    cli_json("push", str(built_bundle), f"{repo}:unsigned", "--plain-http")
    out = tmp_path / "checked.bundle"
    ok = cli_json("pull", f"{repo}:v1", "--out", str(out), "--plain-http", "--trusted-key", f"{key}.pub")
    assert ok["signed_by"] and (out / "manifest.sig").read_bytes() == (signed / "manifest.sig").read_bytes()
    assert_clean_error(run_cli("pull", f"{repo}:unsigned", "--out", str(tmp_path / "u"), "--plain-http",
                               "--trusted-key", f"{key}.pub"), "is not signed")
    # a device with a trust policy installs only the signed one, and its runtime accepts it
    device = tmp_path / "device"
    (device / "trust").mkdir(parents=True)
    shutil.copy(f"{key}.pub", device / "trust" / "release.pub")
    assert_clean_error(run_cli("pull", f"{repo}:unsigned", "--install", str(device), "--plain-http"), "is not signed")
    assert not (device / "versions").exists()
    assert cli_json("pull", f"{repo}:v1", "--install", str(device), "--plain-http")["signed_by"]
    assert run_cli("run", str(device), PROMPT, "-n", "4").returncode == 0


def test_flash_from_a_registry_and_update_follows_the_tag(registry, built_bundle, second_bundle, tmp_path):
    repo = f"oci://{registry.host}/edgeslm/channel"
    cli_json("push", str(built_bundle), f"{repo}:stable", "--plain-http")
    device = tmp_path / "device"
    flashed = cli_json("flash", f"{repo}:stable", "--to", str(device), "--plain-http")
    assert flashed["action"] == "installed"
    assert cli_json("update", str(device))["action"] == "up-to-date"  # the tag did not move
    cli_json("push", str(second_bundle), f"{repo}:stable", "--plain-http")  # the release moves the tag
    moved = cli_json("update", str(device))
    assert moved["action"] == "installed" and moved["version"] != flashed["version"]
    assert cli_json("update", str(device))["action"] == "up-to-date"
    assert run_cli("run", str(device), PROMPT, "-n", "4").returncode == 0
    assert_clean_error(run_cli("update", str(tmp_path / "never-installed")), "not installed from a registry")


def test_flash_from_a_registry_to_an_ssh_device(registry, built_bundle, tmp_path):
    from sshd_harness import sshd_available
    from test_flash import DeviceSsh, _ssh_args

    if reason := sshd_available():
        pytest.skip(reason)
    ref = f"oci://{registry.host}/edgeslm/ssh:v1"
    cli_json("push", str(built_bundle), ref, "--plain-http")
    dest = tmp_path / "device"
    with DeviceSsh() as server:
        env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
        report = cli_json("flash", ref, *_ssh_args(server, dest), "--plain-http", env=env)
    assert report["action"] == "flashed" and report["verified_files"] == report["files"]
    assert (dest / "current" / "manifest.json").read_bytes() == (built_bundle / "manifest.json").read_bytes()
    assert os.listdir(tmp_path / "cache" / "edgeslm" / "oci")
