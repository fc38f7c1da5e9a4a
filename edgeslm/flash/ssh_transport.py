"""Flashing over SSH with paramiko: SFTP for files, a few POSIX commands (sha256sum, cp, df) on the device.

Host keys are checked against known_hosts (``~/.ssh/known_hosts`` or ``--known-hosts``); an unknown
or changed host key is refused unless the user explicitly passes ``--insecure-no-host-key-check``.

One SSH connection carries every transfer: each SFTP client and each command is a session channel on
it. SFTP clients are reused between calls, and no more sessions are kept open at once than the
device's sshd allows (``MaxSessions``, 10 by default): when it refuses a session, the transport waits
for one of its own to close instead of failing the flash.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import FlashIOError, SshError
from .destination import Destination
from .transport import copy_blocks

CHUNK = 1 << 18
COMMAND_TIMEOUT = 600.0  # seconds without output from a command on the device
CHANNEL_OPEN_TIMEOUT = 120.0  # seconds for the device to answer a session request
REFUSED_RETRY = 30.0  # seconds to keep asking for a session that sshd refuses while none of ours is open


class _QuietRefusals(logging.Filter):
    """Drops paramiko's ERROR record for a refused session channel ("Secsh channel 5 open FAILED"), which
    would reach stderr through logging's last-resort handler: the transport waits and asks again, and
    says so itself if the server keeps refusing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.ERROR and str(record.msg).startswith("Secsh channel")
                    and "open FAILED" in str(record.msg))


_QUIET_REFUSALS = _QuietRefusals()


class SshTransport:
    resumable_bytes = True

    def __init__(self, dest: Destination, identity: Path | None = None, known_hosts: Path | None = None,
                 check_host_key: bool = True, rate_limiter=None, timeout: float = 15.0):
        try:
            import paramiko
        except ImportError:
            raise SshError("flashing over SSH needs paramiko", hint="pip install 'edgeslm[flash]'") from None
        self._paramiko, self.dest, self.rate_limiter = paramiko, dest, rate_limiter
        logging.getLogger("paramiko.transport").addFilter(_QUIET_REFUSALS)  # no-op when already added
        self._sessions = threading.Condition()
        self._open = 0  # session channels of ours that are open (idle SFTP clients included)
        self._cap: int | None = None  # the most sessions the server accepted at once, once it refused one
        self._idle: list = []  # SFTP clients not in use
        client = paramiko.SSHClient()
        hosts_file = Path(known_hosts).expanduser() if known_hosts else Path("~/.ssh/known_hosts").expanduser()
        if check_host_key:
            if hosts_file.is_file():
                client.load_host_keys(str(hosts_file))
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        else:
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        self._where = where = f"{dest.user + '@' if dest.user else ''}{dest.host}:{dest.port}"
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
                           hint="check [[identity]] (the private key) and the user name") from None
        except paramiko.SSHException as exc:
            if "known_hosts" in str(exc):
                raise SshError(f"{where} is not in {hosts_file}: refusing an unknown host key",
                               hint="connect once with ssh to accept its key, pass [[known_hosts]], "
                                    "or [[insecure_no_host_key_check]]") from None
            raise SshError(f"SSH to {where} failed: {exc}") from None
        except (TimeoutError, OSError) as exc:
            raise SshError(f"cannot connect to {where}: {getattr(exc, 'strerror', None) or exc}",
                           hint="is the device on, reachable, and sshd running on that port?") from None
        self.client = client

    # --- plumbing -------------------------------------------------------------------------------
    def _acquire(self, sftp: bool):
        """An SFTP client (an idle one when there is one) or a new session channel for a command.

        A server refuses a session beyond its ``MaxSessions``; it also refuses one for a moment after
        one of ours closed (sshd frees a session only once its child has exited). So a refusal is
        retried shortly; refused again while some of ours are open, their number is taken as the
        server's limit, and later requests wait for one of ours to close.
        """
        refusals, delay, deadline = 0, 0.05, time.monotonic() + REFUSED_RETRY
        while True:
            surplus = None
            with self._sessions:
                while True:
                    if sftp and self._idle:
                        return self._idle.pop()
                    if self._cap is None or self._open < self._cap:
                        break
                    if self._idle:  # a command needs a session: give up an idle SFTP client for it
                        surplus = self._idle.pop(0)
                        self._open -= 1
                        break
                    self._sessions.wait(1.0)
                self._open += 1
            if surplus is not None:
                self._close_quietly(surplus)
            transport = self.client.get_transport()
            try:
                chan = transport.open_session(timeout=CHANNEL_OPEN_TIMEOUT)
            except self._paramiko.SSHException as exc:
                # A refusal is a ChannelException, or, when several are refused at once, a bare "Unable to
                # open channel." for all but one (paramiko keeps one failure per connection, not per channel).
                if not (isinstance(exc, self._paramiko.ChannelException)
                        or (transport.is_active() and "Unable to open channel" in str(exc))):
                    self._forget_session()
                    raise
                with self._sessions:
                    self._open -= 1
                    others = self._open
                    refusals += 1
                    if others and refusals >= 3 and (self._cap is None or others < self._cap):
                        self._cap, refusals = others, 0
                    self._sessions.notify_all()
                if not others and time.monotonic() > deadline:
                    raise SshError(f"{self._where} refused to open an SSH session ({getattr(exc, 'text', exc)})",
                                   hint="the device's sshd must allow at least one session per connection "
                                        "(MaxSessions in its sshd_config)") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            except BaseException:
                self._forget_session()
                raise
            if not sftp:
                return chan
            try:
                chan.invoke_subsystem("sftp")
                return self._paramiko.SFTPClient(chan)
            except BaseException:
                self._close_quietly(chan)
                self._forget_session()
                raise

    def _forget_session(self) -> None:
        with self._sessions:
            self._open -= 1
            self._sessions.notify_all()

    @staticmethod
    def _close_quietly(thing) -> None:
        try:
            thing.close()
        except Exception:  # noqa: BLE001 - the connection may be gone already
            pass

    @contextlib.contextmanager
    def _sftp(self):
        """An SFTP client for the calls in the block; given back for reuse unless the connection failed."""
        sftp = self._guard(self._acquire, "open SFTP", True)
        healthy = False
        try:
            yield sftp
            healthy = True
        except OSError as exc:  # an SFTP status (no such file, permission denied): the client is fine
            healthy = not isinstance(exc, (ConnectionError, TimeoutError))
            raise
        finally:
            if healthy and not sftp.sock.closed and self.client.get_transport().is_active():
                with self._sessions:
                    self._idle.append(sftp)
                    self._sessions.notify_all()
            else:
                self._close_quietly(sftp)
                self._forget_session()

    def _guard(self, func, what: str, *args):
        try:
            return func(*args)
        except (OSError, EOFError, self._paramiko.SSHException) as exc:
            if isinstance(exc, OSError) and exc.errno is not None and not isinstance(exc, ConnectionError):
                raise
            detail = f"{type(exc).__name__}: {exc}".rstrip(": ")
            raise SshError(f"the SSH connection was lost during {what} ({detail})",
                           hint="run the same flash again: it resumes where it stopped") from None

    def run(self, command: str, check: bool = True) -> str:
        def call() -> tuple[int, str, str]:
            # Not SSHClient.exec_command: the stdin file it returns sends the channel's EOF when it is
            # closed or collected, from this thread and outside the channel's lock (paramiko#1705). If
            # paramiko's transport thread answers the server's CLOSE in between, the EOF reaches sshd
            # after the channel is gone and sshd drops the whole connection ("ieof packet referred to
            # nonexistent channel"): every transfer on it fails. Channel.close() sends EOF and CLOSE in
            # order, once; the commands run here read no input.
            chan = self._acquire(sftp=False)
            try:
                chan.settimeout(COMMAND_TIMEOUT)
                chan.exec_command(command)
                out = chan.makefile("rb").read().decode(errors="replace")
                err = chan.makefile_stderr("rb").read().decode(errors="replace")
                status = chan.recv_exit_status()
            finally:
                self._close_quietly(chan)
                self._forget_session()
            if status == -1 and not self.client.get_transport().is_active():
                raise EOFError("the connection closed before the command's exit status arrived")
            return status, out, err

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
            with self._sftp() as sftp:
                return self._guard(sftp.stat, "stat", path).st_size
        except OSError:
            return None

    def makedirs(self, path: str) -> None:
        self.run(f"mkdir -p {shlex.quote(path)} && touch {shlex.quote(path)}/.edgeslm-write-test "
                 f"&& rm -f {shlex.quote(path)}/.edgeslm-write-test")

    def listdir(self, path: str) -> list[str]:
        try:
            with self._sftp() as sftp:
                return sorted(self._guard(sftp.listdir, "listdir", path))
        except OSError:
            return []

    def read_text(self, path: str) -> str | None:
        try:
            with self._sftp() as sftp, sftp.open(path, "r") as fh:
                return fh.read().decode("utf-8")
        except OSError:
            return None

    def write_text(self, path: str, text: str) -> None:
        tmp = f"{path}.tmp"
        try:
            with self._sftp() as sftp:
                with sftp.open(tmp, "w") as fh:
                    fh.write(text.encode("utf-8"))
                sftp.posix_rename(tmp, path)
        except OSError as exc:
            raise FlashIOError(f"{self.dest}: cannot write {path}: {exc}") from None

    def upload(self, local: Path, remote: str, offset: int, progress: Callable[[int], None]) -> int:
        sent = 0

        def copy() -> None:
            nonlocal sent
            with open(local, "rb") as src, self._sftp() as sftp, sftp.open(remote, "ab" if offset else "wb") as dst:
                dst.set_pipelined(True)
                sent = copy_blocks(src, dst, offset, CHUNK, self.rate_limiter, progress)

        try:
            self._guard(copy, f"the copy of {Path(remote).name}")
        except OSError as exc:
            raise FlashIOError(f"{self.dest}: writing {remote} failed: {exc}",
                               hint="is the device full or the folder read-only? nothing was switched") from None
        return sent

    def copy_within(self, src: str, dst: str) -> None:
        self.run(f"cp -l {shlex.quote(src)} {shlex.quote(dst)} 2>/dev/null || cp {shlex.quote(src)} {shlex.quote(dst)}")

    def rename(self, src: str, dst: str) -> None:
        with self._sftp() as sftp:
            self._guard(sftp.posix_rename, "rename", src, dst)

    def switch_link(self, link: str, target: str) -> None:
        tmp = f"{link}.new"
        self.run(f"rm -f {shlex.quote(tmp)} && ln -s {shlex.quote(target)} {shlex.quote(tmp)}")
        with self._sftp() as sftp:
            self._guard(sftp.posix_rename, "switch", tmp, link)

    def read_link(self, link: str) -> str | None:
        try:
            with self._sftp() as sftp:
                return self._guard(sftp.readlink, "readlink", link)
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

