"""The test servers behave like the real thing: a real sshd (tests/sshd_harness.py) and fake adb."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import paramiko
import pytest
from sshd_harness import SshServer, sshd_available

FAKE_ADB = Path(__file__).resolve().parent / "fake_adb" / "adb"


@pytest.fixture(scope="module")
def sshd():
    reason = sshd_available()
    if reason:
        pytest.skip(reason)
    with SshServer() as server:
        yield server


def connect(server: SshServer, identity: Path | None = None, known_hosts: Path | None = None) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts or server.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(server.host, port=server.port, username=server.user,
                   key_filename=str(identity or server.identity), look_for_keys=False,
                   allow_agent=False, timeout=10, banner_timeout=10, auth_timeout=10)
    return client


def run(client: paramiko.SSHClient, command: str) -> tuple[int, str]:
    _stdin, stdout, _stderr = client.exec_command(command, timeout=10)
    out = stdout.read().decode()
    return stdout.channel.recv_exit_status(), out


def test_sshd_runs_commands_and_sftp(sshd, tmp_path):
    assert sshd.user == "root" or os.geteuid() != 0
    assert sshd.known_hosts.read_text().startswith(f"[127.0.0.1]:{sshd.port} ssh-ed25519 ")
    client = connect(sshd)
    try:
        assert run(client, "echo ok") == (0, "ok\n")
        assert run(client, "exit 3")[0] == 3
        payload = os.urandom(300_000)
        local = tmp_path / "payload.bin"
        local.write_bytes(payload)
        remote = f"{sshd.dir}/remote-payload.bin"
        with client.open_sftp() as sftp:
            sftp.put(str(local), remote)
            assert sftp.stat(remote).st_size == len(payload)
            sftp.get(remote, str(tmp_path / "back.bin"))
        assert (tmp_path / "back.bin").read_bytes() == payload
        status, out = run(client, f"sha256sum {remote}")
        assert status == 0 and out.split()[0] == hashlib.sha256(payload).hexdigest()
    finally:
        client.close()


def test_sshd_rejects_wrong_key(sshd):
    with pytest.raises(paramiko.AuthenticationException):
        connect(sshd, identity=sshd.wrong_identity)


def test_sshd_wrong_host_key_is_refused(sshd):
    with pytest.raises(paramiko.SSHException) as caught:  # BadHostKeyException is an SSHException
        connect(sshd, known_hosts=sshd.wrong_known_hosts)
    assert isinstance(caught.value, paramiko.BadHostKeyException), caught.value


def test_sshd_unknown_host_is_refused(sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        connect(sshd, known_hosts=empty)


def test_sshd_kill_sessions_cuts_open_connection(sshd):
    client = connect(sshd)
    try:
        assert run(client, "echo before") == (0, "before\n")
        assert sshd.kill_sessions() >= 1
        assert sshd.session_pids() == []
        with pytest.raises((paramiko.SSHException, EOFError, OSError)):
            run(client, "echo after")
            # If the channel opened before the transport noticed, the next one cannot.
            time.sleep(0.5)
            run(client, "echo after again")
        assert not client.get_transport().is_active()
    finally:
        client.close()
    fresh = connect(sshd)
    try:
        assert run(fresh, "echo again") == (0, "again\n")
    finally:
        fresh.close()


def test_sshd_kill_sessions_mid_sftp_transfer(sshd, tmp_path):
    client = connect(sshd)
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(8 << 20))
    killed = []

    def progress(done: int, total: int) -> None:
        if done > (1 << 20) and not killed:
            killed.append(sshd.kill_sessions())

    try:
        with pytest.raises((paramiko.SSHException, EOFError, OSError)):
            with client.open_sftp() as sftp:
                sftp.put(str(local), f"{sshd.dir}/big.bin", callback=progress)
        assert killed and killed[0] >= 1
    finally:
        client.close()


# ---------------------------------------------------------------------------------------- fake adb

def adb(*args: str, root: Path, input: bytes | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(FAKE_ADB), *args], capture_output=True, input=input, timeout=30,
                          env={**os.environ, "FAKE_ADB_ROOT": str(root), **env})


def test_fake_adb_devices(tmp_path):
    assert os.access(FAKE_ADB, os.X_OK)
    result = adb("devices", root=tmp_path)
    assert result.returncode == 0
    assert result.stdout.decode().startswith("List of devices attached\nemulator-5554\tdevice\n")
    result = adb("devices", root=tmp_path, FAKE_ADB_SERIAL="R58M123")
    assert "R58M123\tdevice" in result.stdout.decode()
    result = adb("devices", root=tmp_path, FAKE_ADB_STATE="none")
    assert result.stdout.decode().strip() == "List of devices attached"


def test_fake_adb_push_shell_pull(tmp_path):
    device = tmp_path / "device"
    payload = os.urandom(100_000)
    local = tmp_path / "model.bin"
    local.write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()

    result = adb("-s", "emulator-5554", "push", str(local), "/sdcard/edgeslm/b1/model.bin", root=device)
    assert result.returncode == 0, result
    assert "1 file pushed" in result.stdout.decode()
    assert (device / "sdcard/edgeslm/b1/model.bin").read_bytes() == payload

    result = adb("-s", "emulator-5554", "shell", "sha256sum", "/sdcard/edgeslm/b1/model.bin", root=device)
    assert result.returncode == 0, result
    assert result.stdout.decode() == f"{digest}  /sdcard/edgeslm/b1/model.bin\n"

    result = adb("shell", "stat -c %s '/sdcard/edgeslm/b1/model.bin'", root=device)
    assert result.stdout.decode().strip() == str(len(payload))

    result = adb("pull", "/sdcard/edgeslm/b1/model.bin", str(tmp_path / "back.bin"), root=device)
    assert result.returncode == 0, result
    assert (tmp_path / "back.bin").read_bytes() == payload

    # Folder push, then the shell verbs a flash uses: mkdir, mv, ln -s, readlink, ls, cat, rm, df.
    folder = tmp_path / "bundle"
    (folder / "sub").mkdir(parents=True)
    (folder / "manifest.json").write_text("{}\n")
    (folder / "sub" / "w.bin").write_bytes(b"x" * 10)
    result = adb("push", str(folder), "/data/local/tmp/stage", root=device)
    assert result.returncode == 0 and "2 files pushed" in result.stdout.decode(), result
    assert (device / "data/local/tmp/stage/sub/w.bin").read_bytes() == b"x" * 10
    script = ("mkdir -p /sdcard/edgeslm/releases && mv /data/local/tmp/stage /sdcard/edgeslm/releases/v2"
              " && ln -s /sdcard/edgeslm/releases/v2 /sdcard/edgeslm/current"
              " && readlink /sdcard/edgeslm/current && cat /sdcard/edgeslm/current/manifest.json"
              " && ls /sdcard/edgeslm/releases && df /sdcard >/dev/null && rm -rf /sdcard/edgeslm/b1")
    result = adb("shell", script, root=device)
    assert result.returncode == 0, result
    assert result.stdout.decode() == "/sdcard/edgeslm/releases/v2\n{}\nv2\n"
    assert not (device / "sdcard/edgeslm/b1").exists()
    result = adb("shell", "cat > /storage/emulated/0/piped.txt", root=device, input=b"hello")
    assert result.returncode == 0 and (device / "sdcard/piped.txt").read_bytes() == b"hello"


def test_fake_adb_errors(tmp_path):
    result = adb("-s", "other", "shell", "echo hi", root=tmp_path)
    assert result.returncode == 1
    assert result.stderr.decode().strip() == "adb: device 'other' not found"
    result = adb("shell", "ls /sdcard/missing", root=tmp_path)
    assert result.returncode != 0 and "/sdcard/missing" in result.stderr.decode()
    assert str(tmp_path) not in result.stderr.decode()
    assert adb("shell", "exit 7", root=tmp_path).returncode == 7
    result = adb("push", str(tmp_path / "nope"), "/sdcard/x", root=tmp_path)
    assert result.returncode == 1 and "cannot stat" in result.stderr.decode()
    result = adb("shell", "echo hi", root=tmp_path, FAKE_ADB_STATE="none")
    assert result.returncode == 1 and "no devices" in result.stderr.decode()
