"""Flashing over SSH with paramiko: SFTP for files, a few POSIX commands (sha256sum, cp, df) on the device.

Host keys are checked against known_hosts (``~/.ssh/known_hosts`` or ``--known-hosts``); an unknown
or changed host key is refused unless the user explicitly passes ``--insecure-no-host-key-check``.
"""

from __future__ import annotations

import shlex
import socket
import threading
from pathlib import Path
from typing import Callable

from ..errors import EdgeslmError
from .destination import Destination
from .local_transport import FlashIOError

CHUNK = 1 << 18


class SshError(EdgeslmError):
    exit_code = 14


class SshTransport:
    resumable_bytes = True

    def __init__(self, dest: Destination, identity: Path | None = None, known_hosts: Path | None = None,
                 check_host_key: bool = True, rate_limiter=None, timeout: float = 15.0):
        try:
            import paramiko
        except ImportError:
            raise SshError("flashing over SSH needs paramiko", hint="pip install 'edgeslm[flash]'") from None
        self._paramiko, self.dest, self.rate_limiter = paramiko, dest, rate_limiter
        self._local = threading.local()
        client = paramiko.SSHClient()
        hosts_file = Path(known_hosts).expanduser() if known_hosts else Path("~/.ssh/known_hosts").expanduser()
        if check_host_key:
            if hosts_file.is_file():
                client.load_host_keys(str(hosts_file))
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        else:
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        where = f"{dest.user + '@' if dest.user else ''}{dest.host}:{dest.port}"
        try:
            client.connect(dest.host, port=dest.port, username=dest.user or None,
                           key_filename=str(Path(identity).expanduser()) if identity else None,
                           timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                           allow_agent=identity is None, look_for_keys=identity is None)
        except paramiko.BadHostKeyException:
            raise SshError(f"the host key of {where} does not match {hosts_file}: refusing to connect",
                           hint="if the device was reinstalled, remove its old key with ssh-keygen -R") from None
        except paramiko.AuthenticationException:
            raise SshError(f"authentication failed for {where}",
                           hint="check --identity (the private key) and the user name") from None
        except paramiko.SSHException as exc:
            if "known_hosts" in str(exc):
                raise SshError(f"{where} is not in {hosts_file}: refusing an unknown host key",
                               hint="connect once with ssh to accept its key, pass --known-hosts, "
                                    "or --insecure-no-host-key-check") from None
            raise SshError(f"SSH to {where} failed: {exc}") from None
        except (OSError, socket.timeout) as exc:
            raise SshError(f"cannot connect to {where}: {getattr(exc, 'strerror', None) or exc}",
                           hint="is the device on, reachable, and sshd running on that port?") from None
        self.client = client

    # --- plumbing -------------------------------------------------------------------------------
    def _sftp(self):
        sftp = getattr(self._local, "sftp", None)
        if sftp is None:
            sftp = self._local.sftp = self._guard(self.client.open_sftp, "open SFTP")
        return sftp

    def _guard(self, func, what: str, *args):
        try:
            return func(*args)
        except (EOFError, self._paramiko.SSHException, socket.error) as exc:
            if isinstance(exc, OSError) and exc.errno is not None and not isinstance(exc, ConnectionError):
                raise
            detail = f"{type(exc).__name__}: {exc}".rstrip(": ")
            raise SshError(f"the SSH connection was lost during {what} ({detail})",
                           hint="run the same flash again: it resumes where it stopped") from None

    def run(self, command: str, check: bool = True) -> str:
        def call() -> tuple[int, str, str]:
            _, stdout, stderr = self.client.exec_command(command, timeout=600)
            out, err = stdout.read().decode(errors="replace"), stderr.read().decode(errors="replace")
            return stdout.channel.recv_exit_status(), out, err

        status, out, err = self._guard(call, f"'{command.split()[0]}'")
        if check and status != 0:
            if "Read-only file system" in err or "Permission denied" in err:
                raise FlashIOError(f"{self.dest}: the destination is read-only or not writable ({err.strip()})",
                                   hint="pick a writable folder; nothing was switched")
            if "No space left" in err:
                from ..errors import DiskSpaceError
                raise DiskSpaceError(f"{self.dest}: the device is full ({err.strip()})")
            raise SshError(f"command on {self.dest.host} failed: {command.split()[0]}: {err.strip() or status}")
        return out

    # --- Transport ----------------------------------------------------------------------------
    def size(self, path: str) -> int | None:
        try:
            return self._guard(self._sftp().stat, "stat", path).st_size
        except OSError:
            return None

    def makedirs(self, path: str) -> None:
        self.run(f"mkdir -p {shlex.quote(path)} && touch {shlex.quote(path)}/.edgeslm-write-test "
                 f"&& rm -f {shlex.quote(path)}/.edgeslm-write-test")

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(self._guard(self._sftp().listdir, "listdir", path))
        except OSError:
            return []

    def read_text(self, path: str) -> str | None:
        try:
            with self._sftp().open(path, "r") as fh:
                return fh.read().decode("utf-8")
        except OSError:
            return None

    def write_text(self, path: str, text: str) -> None:
        tmp = f"{path}.tmp"
        try:
            with self._sftp().open(tmp, "w") as fh:
                fh.write(text.encode("utf-8"))
            self._sftp().posix_rename(tmp, path)
        except OSError as exc:
            raise FlashIOError(f"{self.dest}: cannot write {path}: {exc}") from None

    def upload(self, local: Path, remote: str, offset: int, progress: Callable[[int], None]) -> int:
        sent = 0

        def copy() -> None:
            nonlocal sent
            with open(local, "rb") as src, self._sftp().open(remote, "ab" if offset else "wb") as dst:
                dst.set_pipelined(True)
                src.seek(offset)
                while block := src.read(CHUNK):
                    if self.rate_limiter:
                        self.rate_limiter.wait(len(block))
                    dst.write(block)
                    sent += len(block)
                    progress(len(block))

        try:
            self._guard(copy, f"the copy of {Path(remote).name}")
        except OSError as exc:
            raise FlashIOError(f"{self.dest}: writing {remote} failed: {exc}",
                               hint="is the device full or the folder read-only? nothing was switched") from None
        return sent

    def copy_within(self, src: str, dst: str) -> None:
        self.run(f"cp -l {shlex.quote(src)} {shlex.quote(dst)} 2>/dev/null || cp {shlex.quote(src)} {shlex.quote(dst)}")

    def rename(self, src: str, dst: str) -> None:
        self._guard(self._sftp().posix_rename, "rename", src, dst)

    def switch_link(self, link: str, target: str) -> None:
        tmp = f"{link}.new"
        self.run(f"rm -f {shlex.quote(tmp)} && ln -s {shlex.quote(target)} {shlex.quote(tmp)}")
        self._guard(self._sftp().posix_rename, "switch", tmp, link)

    def read_link(self, link: str) -> str | None:
        try:
            return self._guard(self._sftp().readlink, "readlink", link)
        except OSError:
            return None

    def remove(self, path: str) -> None:
        self.run(f"rm -rf {shlex.quote(path)}")

    def sha256(self, paths: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for i in range(0, len(paths), 64):
            batch = " ".join(shlex.quote(p) for p in paths[i:i + 64])
            for line in self.run(f"sha256sum {batch} 2>/dev/null", check=False).splitlines():
                digest, _, name = line.partition("  ")
                if len(digest) == 64:
                    found[name] = digest
        return found

    def free_bytes(self, path: str) -> int | None:
        out = self.run(f"df -Pk {shlex.quote(path)} 2>/dev/null | tail -1", check=False).split()
        return int(out[3]) * 1024 if len(out) >= 4 and out[3].isdigit() else None

    def remote_doctor(self, bundle_path: str) -> str | None:
        out = self.run(f"command -v edgeslm >/dev/null 2>&1 && edgeslm doctor {shlex.quote(bundle_path)} --json",
                       check=False)
        return out or None

    def close(self) -> None:
        self.client.close()
