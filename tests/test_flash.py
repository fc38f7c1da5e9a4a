"""edgeslm flash: local folders, a real OpenSSH server on loopback, and a stand-in adb (no Android here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import DOCS_MODEL, assert_clean_error, run_cli
from sshd_harness import SshServer, sshd_available

FAKE_ADB = Path(__file__).parent / "fake_adb"
VENV_BIN = Path(sys.executable).parent


def flash(*args: str, env: dict | None = None):
    return run_cli("flash", *args, "--json", env=env)


def _report(result) -> dict:
    assert result.returncode == 0, result
    return result.json()


def _current(dest: Path) -> str:
    return (dest / "CURRENT").read_text().strip()


@pytest.fixture(scope="module")
def second_bundle(tmp_path_factory, built_bundle) -> Path:
    """A new 'model version': the same checkpoint with another block size (shares the tokenizer files)."""
    out = tmp_path_factory.mktemp("v2") / "v2.bundle"
    result = run_cli("build", "--target", "raspberrypi", "--model", str(DOCS_MODEL), "--out", str(out),
                     "--set", "block_size=64")
    assert result.returncode == 0, result
    return out


def test_local_flash_reflash_and_run(built_bundle, tmp_path):
    dest = tmp_path / "sdcard"
    first = _report(flash(str(built_bundle), "--to", str(dest)))
    assert first["action"] == "flashed" and first["sent_files"] == first["files"] - 1  # + manifest written
    assert first["verified_files"] == first["files"]
    assert (dest / "current").resolve() == (dest / "versions" / first["version"]).resolve()
    again = _report(flash(str(built_bundle), "--to", str(dest)))
    assert again["action"] == "already-active" and again["sent_bytes"] == 0
    answer = run_cli("run", str(dest), "What is `len`?", "-n", "8")  # the flash root stands for its active bundle
    assert answer.returncode == 0 and answer.stdout.strip()
    assert run_cli("run", str(dest / "current"), "What is `len`?", "-n", "4").returncode == 0


def test_delta_reuses_files_the_device_has(built_bundle, second_bundle, tmp_path):
    dest = tmp_path / "dev"
    _report(flash(str(built_bundle), "--to", str(dest)))
    plan = _report(flash(str(second_bundle), "--to", str(dest), "--dry-run"))
    actions = {p["path"].rsplit("/", 1)[-1]: p["action"] for p in plan["plan"]}
    assert actions["tokenizer.json"] == "reuse" and actions["model.onnx.data"] == "send"
    assert not (dest / "staging" / plan["version"]).exists()  # a dry run changes nothing
    second = _report(flash(str(second_bundle), "--to", str(dest)))
    assert second["reused_files"] >= 2 and second["action"] == "flashed"
    total = sum(f["size"] for a in json.loads((second_bundle / "manifest.json").read_text())["artifacts"]
                for f in a["files"])
    assert second["sent_bytes"] < total
    assert _current(dest) == second["version"]
    back = _report(flash("--rollback", "--to", str(dest)))
    assert back["action"] == "rolled-back" and _current(dest) == json.loads(
        (built_bundle / "manifest.json").read_text())["bundle_id"]
    assert run_cli("run", str(dest), "What is `len`?", "-n", "4").returncode == 0


def test_keep_prunes_old_versions(built_bundle, second_bundle, tmp_path):
    dest = tmp_path / "dev"
    for bundle, target in ((built_bundle, None), (second_bundle, None), (built_bundle, "raspberrypi4")):
        _report(flash(str(bundle), "--to", str(dest), "--keep", "1", *(["--target", target] if target else [])))
    assert len(os.listdir(dest / "versions")) == 2  # the active one and one previous


def test_target_filter_and_unknown_target(built_bundle, tmp_path):
    dest = tmp_path / "dev"
    report = _report(flash(str(built_bundle), "--to", str(dest), "--target", "raspberrypi4"))
    manifest = json.loads((dest / "current" / "manifest.json").read_text())
    assert list(manifest["targets"]) == ["raspberrypi4"] and report["version"].endswith("-raspberrypi4")
    assert_clean_error(run_cli("flash", str(built_bundle), "--to", str(dest), "--target", "apple-silicon"),
                       "not built for target")


def test_interrupted_local_flash_resumes(built_bundle, tmp_path):
    dest = tmp_path / "dev"
    proc = subprocess.Popen([sys.executable, "-m", "edgeslm", "flash", str(built_bundle), "--to", str(dest),
                             "--limit-rate", "20M", "--jobs", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not list(dest.glob("staging/*/artifacts/*/*.part")):
        time.sleep(0.05)
    time.sleep(0.8)
    proc.kill()
    proc.wait()
    assert not (dest / "CURRENT").exists()  # nothing was switched
    resumed = _report(flash(str(built_bundle), "--to", str(dest)))
    total = sum(p.stat().st_size for p in built_bundle.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert resumed["resumed_files"] + resumed["kept_files"] >= 1
    assert resumed["sent_bytes"] < total
    assert resumed["action"] == "flashed" and resumed["verified_files"] == resumed["files"]


def test_corruption_on_the_device_is_caught_and_the_old_bundle_stays(built_bundle, second_bundle, tmp_path):
    dest = tmp_path / "dev"
    v1 = _report(flash(str(built_bundle), "--to", str(dest)))["version"]
    proc = subprocess.Popen([sys.executable, "-m", "edgeslm", "flash", str(second_bundle), "--to", str(dest),
                             "--limit-rate", "10M", "--jobs", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    staged = None  # a file that was sent (it differs from v1's), complete in the staging folder
    while time.monotonic() < deadline and staged is None:
        found = list(dest.glob("staging/*/artifacts/onnx-int4-cpu/model.onnx"))
        staged = found[0] if found else None
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert staged is not None
    with open(staged, "r+b") as fh:  # same size, one byte different
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    failed = run_cli("flash", str(second_bundle), "--to", str(dest))
    assert_clean_error(failed, "failed verification on the device", "model.onnx")
    assert _current(dest) == v1
    assert _report(flash("--verify", "--to", str(dest)))["action"] == "verified"
    fixed = _report(flash(str(second_bundle), "--to", str(dest)))  # re-sends only what was removed
    assert fixed["action"] == "flashed" and fixed["sent_files"] >= 1 and _current(dest) == fixed["version"]


def test_verify_reports_a_file_altered_on_the_device(built_bundle, tmp_path):
    dest = tmp_path / "dev"
    _report(flash(str(built_bundle), "--to", str(dest)))
    weights = next((dest / "current").glob("artifacts/*/model.onnx.data"))
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert_clean_error(run_cli("flash", "--verify", "--to", str(dest)), "model.onnx.data")


def test_tampered_bundle_is_never_flashed(bundle_copy, tmp_path):
    (bundle_copy / "artifacts/onnx-int4-cpu/genai_config.json").write_text("{}")
    assert_clean_error(run_cli("flash", str(bundle_copy), "--to", str(tmp_path / "dev")), "failed verification")
    assert not (tmp_path / "dev").exists()


@pytest.mark.parametrize("dest, words", [
    ("ssh://", "no valid host"), ("ssh://host", "absolute folder path"), ("ssh://host:99999/x", "invalid port"),
    ("ftp://host/x", "unsupported destination scheme"), ("adb://bad serial!/x", "invalid device serial"),
    ("adb://", "absolute folder path"), ("scp:host/path", "without '//'"),
])
def test_malformed_destinations(built_bundle, dest, words):
    assert_clean_error(run_cli("flash", str(built_bundle), "--to", dest), words)


def _tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode == 0


def test_read_only_and_full_destinations(built_bundle, tmp_path):
    ro, full = tmp_path / "ro", tmp_path / "full"
    if not (_tmpfs(ro, "ro,size=1m") and _tmpfs(full, "size=8m")):
        pytest.skip("cannot mount tmpfs here (needs root)")
    try:
        assert_clean_error(run_cli("flash", str(built_bundle), "--to", str(ro / "edgeslm")), "read-only")
        assert_clean_error(run_cli("flash", str(built_bundle), "--to", str(full / "edgeslm")), "MiB free")
        assert not (full / "edgeslm" / "CURRENT").exists()
    finally:
        subprocess.run(["umount", str(ro)])
        subprocess.run(["umount", str(full)])


class DeviceSsh(SshServer):
    """The sshd of a 'device' that has edgeslm installed (its PATH includes this venv)."""

    def _write_config(self) -> Path:
        config = super()._write_config()
        config.write_text(config.read_text() + f"SetEnv PATH={VENV_BIN}:/usr/bin:/bin HF_HUB_OFFLINE=1\n")
        return config


@pytest.fixture(scope="module")
def sshd():
    reason = sshd_available()
    if reason:
        pytest.skip(reason)
    with DeviceSsh() as server:
        yield server


def _ssh_report(result, server) -> dict:
    """_report for a flash over SSH: a failure shows the end of sshd's log (why it dropped a connection)."""
    assert result.returncode == 0, f"{result}\n--- sshd log (last lines) ---\n{server.log_tail()}"
    return result.json()


def _ssh_args(server, path: Path, identity=None, known_hosts=None) -> list[str]:
    return ["--to", f"ssh://{server.user}@127.0.0.1:{server.port}{path}", "--identity",
            str(identity or server.identity), "--known-hosts", str(known_hosts or server.known_hosts)]


def test_ssh_flash_reflash_doctor(built_bundle, sshd, tmp_path):
    dest = tmp_path / "device"
    first = _ssh_report(flash(str(built_bundle), *_ssh_args(sshd, dest)), sshd)
    assert first["action"] == "flashed" and first["verified_files"] == first["files"]
    assert json.loads(first["doctor"])["chosen"] == "onnx-int4-cpu"  # edgeslm doctor ran on the device
    again = _ssh_report(flash(str(built_bundle), *_ssh_args(sshd, dest)), sshd)
    assert again["action"] == "already-active" and again["sent_bytes"] == 0
    assert run_cli("run", str(dest), "What is `len`?", "-n", "4").returncode == 0


def test_ssh_commands_send_no_channel_eof_after_the_server_closed(sshd, tmp_path, monkeypatch):
    """The cause of "the SSH connection was lost during the copy of model.onnx.part" on a loaded machine.

    SSHClient.exec_command() returns a stdin file whose close (explicit, or when it is collected after
    the command) sends the channel's EOF from the calling thread after releasing the channel's lock
    (paramiko#1705). If that thread is descheduled there while paramiko's transport thread answers the
    server's CHANNEL_CLOSE, the EOF reaches sshd after it freed the channel, and sshd drops the whole
    connection ("ieof packet referred to nonexistent channel"): the transfers running on it fail.
    Here every channel EOF sent by a thread other than paramiko's own waits 0.3 s first, as a thread
    on a busy machine may: the race that load makes rare is lost on the first command or two.
    """
    import paramiko
    from paramiko.common import cMSG_CHANNEL_EOF

    from edgeslm.flash.destination import parse_destination
    from edgeslm.flash.ssh_transport import SshError, SshTransport

    send = paramiko.Transport._send_user_message

    def descheduled(transport, message):
        if threading.current_thread() is not transport and message.asbytes()[:1] == cMSG_CHANNEL_EOF:
            time.sleep(0.3)
        return send(transport, message)

    monkeypatch.setattr(paramiko.Transport, "_send_user_message", descheduled)
    (tmp_path / "a.txt").write_text("a")
    transport = SshTransport(parse_destination(f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{tmp_path}"),
                             sshd.identity, sshd.known_hosts)
    try:
        for i in range(6):
            assert transport.run(f"echo {i}") == f"{i}\n"
            assert transport.listdir(str(tmp_path)) == ["a.txt"]
    except SshError as exc:
        pytest.fail(f"{exc}\n--- sshd log (last lines) ---\n{sshd.log_tail()}")
    finally:
        transport.close()
    assert "nonexistent channel" not in sshd.log_tail(200)


@pytest.mark.parametrize("max_sessions", [1, 2])
def test_ssh_flash_with_more_jobs_than_the_server_allows_sessions(built_bundle, tmp_path, max_sessions):
    """sshd allows MaxSessions channels per connection (10 by default, fewer on some devices): a flash
    with more parallel transfers waits for a free session instead of failing."""
    if reason := sshd_available():
        pytest.skip(reason)
    with DeviceSsh(max_sessions=max_sessions) as server:
        dest = tmp_path / "device"
        result = flash(str(built_bundle), *_ssh_args(server, dest), "--jobs", "8")
        first = _ssh_report(result, server)
        assert "FAILED" not in result.stderr  # paramiko's log line for each refused session is kept quiet
        assert first["action"] == "flashed" and first["verified_files"] == first["files"]
        assert first["sent_files"] == first["files"] - 1 and json.loads(first["doctor"])["chosen"]
        assert "no more sessions" in server.log.read_text()  # the server did refuse sessions
        again = _ssh_report(flash(str(built_bundle), *_ssh_args(server, dest), "--jobs", "8"), server)
        assert again["action"] == "already-active"


def test_ssh_cut_connection_resumes(built_bundle, sshd, tmp_path):
    dest = tmp_path / "device"
    proc = subprocess.Popen([sys.executable, "-m", "edgeslm", "flash", str(built_bundle), *_ssh_args(sshd, dest),
                             "--limit-rate", "15M", "--jobs", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not list(dest.glob("staging/*/artifacts/*/model.onnx*.part")):
        time.sleep(0.05)
    time.sleep(1.0)
    assert sshd.kill_sessions() >= 1
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "connection was lost" in stderr and "Traceback" not in stderr
    assert not (dest / "CURRENT").exists()
    resumed = _ssh_report(flash(str(built_bundle), *_ssh_args(sshd, dest)), sshd)
    total = sum(p.stat().st_size for p in built_bundle.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert resumed["resumed_files"] >= 1 and resumed["sent_bytes"] < total
    assert resumed["action"] == "flashed"


def test_ssh_errors_lose_nothing(built_bundle, sshd, tmp_path):
    dest = tmp_path / "device"
    _ssh_report(flash(str(built_bundle), *_ssh_args(sshd, dest)), sshd)
    before = _current(dest)
    assert_clean_error(run_cli("flash", str(built_bundle), *_ssh_args(sshd, dest, identity=sshd.wrong_identity)),
                       "authentication failed")
    assert_clean_error(run_cli("flash", str(built_bundle), *_ssh_args(sshd, dest, known_hosts=sshd.wrong_known_hosts)),
                       "does not match")
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    assert_clean_error(run_cli("flash", str(built_bundle), *_ssh_args(sshd, dest, known_hosts=empty)),
                       "refusing an unknown host key")
    closed = run_cli("flash", str(built_bundle), "--to", f"ssh://root@127.0.0.1:1{dest}",
                     "--identity", str(sshd.identity), "--known-hosts", str(sshd.known_hosts))
    assert_clean_error(closed, "cannot connect")
    assert _current(dest) == before and _report(flash("--verify", *_ssh_args(sshd, dest)))["action"] == "verified"


def test_fleet_inventory_one_bad_host(built_bundle, sshd, tmp_path):
    inventory = tmp_path / "fleet.toml"
    inventory.write_text(f"""
[defaults]
identity = "{sshd.identity}"
known_hosts = "{sshd.known_hosts}"

[[hosts]]
name = "pi-ssh"
dest = "ssh://{sshd.user}@127.0.0.1:{sshd.port}{tmp_path / 'pi-ssh'}"

[[hosts]]
name = "sdcard"
dest = "{tmp_path / 'sdcard'}"
target = "raspberrypi4"

[[hosts]]
name = "offline"
dest = "ssh://root@127.0.0.1:1/opt/edgeslm"
""")
    result = run_cli("flash", str(built_bundle), "--inventory", str(inventory), "--json")
    assert result.returncode != 0
    rows = {row["name"]: row for row in result.json()}
    assert rows["pi-ssh"]["ok"] and rows["sdcard"]["ok"] and not rows["offline"]["ok"]
    assert "cannot connect" in rows["offline"]["error"]
    assert (tmp_path / "pi-ssh" / "CURRENT").is_file() and (tmp_path / "sdcard" / "CURRENT").is_file()
    text = run_cli("flash", str(built_bundle), "--inventory", str(inventory))
    assert "2 of 3 hosts succeeded" in text.stdout


def test_adb_flash_with_a_stand_in_adb(built_bundle, tmp_path):
    """No Android device exists here: tests/fake_adb/adb implements the adb commands used, over a folder."""
    root = tmp_path / "phone"
    env = {"PATH": f"{FAKE_ADB}:{os.environ['PATH']}", "FAKE_ADB_ROOT": str(root)}
    first = _report(flash(str(built_bundle), "--to", "adb://emulator-5554/data/local/tmp/edgeslm", env=env))
    assert first["action"] == "flashed" and first["verified_files"] == first["files"]
    installed = root / "data/local/tmp/edgeslm"
    assert (installed / "CURRENT").read_text().strip() == first["version"]
    assert (installed / "current").resolve() == (installed / "versions" / first["version"]).resolve()
    again = _report(flash(str(built_bundle), "--to", "adb://emulator-5554/data/local/tmp/edgeslm", env=env))
    assert again["action"] == "already-active"
    assert_clean_error(run_cli("flash", str(built_bundle), "--to", "adb://other-phone/data/local/tmp/x", env=env),
                       "no Android device with serial 'other-phone'")
    no_adb = run_cli("flash", str(built_bundle), "--to", "adb:///data/local/tmp/x",
                     env={"PATH": str(Path(shutil.which("sh")).parent)})
    assert_clean_error(no_adb, "adb is not installed")


def test_ssh_read_only_and_full_destinations(built_bundle, sshd, tmp_path):
    ro, full = tmp_path / "ro", tmp_path / "full"
    if not (_tmpfs(ro, "ro,size=1m") and _tmpfs(full, "size=8m")):
        pytest.skip("cannot mount tmpfs here (needs root)")
    try:
        assert_clean_error(run_cli("flash", str(built_bundle), *_ssh_args(sshd, ro / "edgeslm")), "read-only")
        assert_clean_error(run_cli("flash", str(built_bundle), *_ssh_args(sshd, full / "edgeslm")), "MiB free")
        assert not (full / "edgeslm" / "CURRENT").exists()
    finally:
        subprocess.run(["umount", str(ro)])
        subprocess.run(["umount", str(full)])
