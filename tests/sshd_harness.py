"""A real OpenSSH server for tests: ``SshServer`` starts ``/usr/sbin/sshd`` on 127.0.0.1.

Everything lives in a temporary directory: a fresh ed25519 host key, a client key pair that is
authorized, an unrelated "wrong" key pair, a known_hosts file naming the real host key and one
naming a wrong host key. The server runs in the foreground (``sshd -D -e -f CONFIG``) as the
current user (root here and in CI), allowing public-key login only.

Its limits are OpenSSH's defaults unless a test asks otherwise (``SshServer(max_sessions=2)``):
a device's sshd allows 10 sessions (channels) per connection, and tests should meet the same limit.
sshd logs at VERBOSE to ``server.log`` (a file that lives as long as the server): sessions opened
and refused ("no more sessions") and why sshd dropped a connection ("Disconnecting user ...: ...").
``log_tail()`` gives its last lines for an assertion message.

    with SshServer() as server:
        client = paramiko.SSHClient()
        client.load_host_keys(str(server.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(server.host, port=server.port, username=server.user,
                       key_filename=str(server.identity), look_for_keys=False, allow_agent=False)

``kill_sessions()`` kills the per-connection sshd processes (a cut connection) and leaves the
listener running, so a new connection still works.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = "ssh-keygen"
PRIVSEP_DIR = Path("/run/sshd")


def sshd_available() -> str | None:
    """None when a real sshd can be started here, else the reason it cannot (for pytest.skip)."""
    if not SSHD.is_file() or not os.access(SSHD, os.X_OK):
        return f"{SSHD} is not installed (apt-get install -y openssh-server)"
    if shutil.which(SSH_KEYGEN) is None:
        return "ssh-keygen is not installed (apt-get install -y openssh-client)"
    if os.geteuid() != 0 and not PRIVSEP_DIR.is_dir():
        return f"sshd needs its privilege separation directory {PRIVSEP_DIR}, which a non-root user cannot create"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _keygen(path: Path, comment: str) -> str:
    """Make an ed25519 key pair at path / path.pub; return the public line 'ssh-ed25519 AAAA...'."""
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True, text=True)
    path.chmod(0o600)
    kind, blob = path.with_name(path.name + ".pub").read_text().split()[:2]
    return f"{kind} {blob}"


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) for every process, read from /proc/*/stat."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read().decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state ppid ...
        if len(fields) >= 2:
            table[int(entry)] = (int(fields[1]), fields[0])
    return table


def _descendants(pid: int) -> list[int]:
    """Live (non-zombie) descendants of pid, parents before children."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for child, (parent, _state) in table.items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    queue = list(children.get(pid, []))
    while queue:
        child = queue.pop(0)
        if table[child][1] != "Z":
            found.append(child)
        queue.extend(children.get(child, []))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode(errors="replace")
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] != "Z"


class SshServer:
    """A real sshd on 127.0.0.1:port with key-only login for the current user; a context manager."""

    host = "127.0.0.1"

    def __init__(self, start_timeout: float = 10.0, max_sessions: int = 10, log_level: str = "VERBOSE"):
        self.start_timeout = start_timeout
        self.max_sessions = max_sessions  # sshd's MaxSessions: session channels per connection
        self.log_level = log_level
        self.user = pwd.getpwuid(os.geteuid()).pw_name  # "root" here and in CI
        self.port: int = 0
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None

    # Paths inside the temporary directory, valid after start().
    @property
    def identity(self) -> Path:
        """Private key the server accepts."""
        return self._path("client_key")

    @property
    def wrong_identity(self) -> Path:
        """Private key of an unrelated pair the server does not accept."""
        return self._path("wrong_key")

    @property
    def known_hosts(self) -> Path:
        """known_hosts naming this server's real host key as [127.0.0.1]:PORT."""
        return self._path("known_hosts")

    @property
    def wrong_known_hosts(self) -> Path:
        """known_hosts naming [127.0.0.1]:PORT with a different host key."""
        return self._path("wrong_known_hosts")

    @property
    def host_key_public(self) -> str:
        """'ssh-ed25519 AAAA...' of the server's host key."""
        return " ".join(self._path("host_key.pub").read_text().split()[:2])

    @property
    def log(self) -> Path:
        """sshd's stderr (-e), at ``log_level`` (VERBOSE: connections, sessions, and why sshd dropped one)."""
        return self._path("sshd.log")

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of sshd's log, for an assertion message ('' once the server is stopped)."""
        try:
            text = self.log.read_text(errors="replace")
        except (OSError, RuntimeError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _path(self, name: str) -> Path:
        if self.dir is None:
            raise RuntimeError("SshServer is not started")
        return self.dir / name

    def __enter__(self) -> SshServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<SshServer {self.user}@{self.host}:{self.port} pid={self.proc and self.proc.pid}>"

    def start(self) -> SshServer:
        reason = sshd_available()
        if reason:
            raise RuntimeError(f"cannot start sshd: {reason}")
        if self.proc is not None:
            raise RuntimeError("SshServer is already started")
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="edgeslm-sshd-"))
        self.dir.chmod(0o700)
        try:
            host_pub = _keygen(self.dir / "host_key", "edgeslm-test-host")
            wrong_host_pub = _keygen(self.dir / "wrong_host_key", "edgeslm-test-wrong-host")
            client_pub = _keygen(self.dir / "client_key", "edgeslm-test-client")
            _keygen(self.dir / "wrong_key", "edgeslm-test-wrong-client")
            authorized = self.dir / "authorized_keys"
            authorized.write_text(client_pub + "\n")
            authorized.chmod(0o600)
            last_error = ""
            for _attempt in range(3):  # the free port can be taken between probing and binding
                self.port = _free_port()
                self.known_hosts.write_text(f"[{self.host}]:{self.port} {host_pub}\n")
                self.wrong_known_hosts.write_text(f"[{self.host}]:{self.port} {wrong_host_pub}\n")
                config = self._write_config()
                self.log.write_bytes(b"")
                with open(self.log, "wb") as log:
                    self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)],
                                                 stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                                 start_new_session=True)
                last_error = self._wait_ready()
                if not last_error:
                    return self
                self._terminate()
                if "bind" not in last_error.lower() and "address already in use" not in last_error.lower():
                    break
            raise RuntimeError(f"sshd did not start on {self.host}:{self.port}: {last_error}")
        except BaseException:
            self.stop()
            raise

    def _write_config(self) -> Path:
        assert self.dir is not None
        config = self.dir / "sshd_config"
        config.write_text("\n".join([
            f"ListenAddress {self.host}",
            f"Port {self.port}",
            f"HostKey {self.dir / 'host_key'}",
            f"PidFile {self.dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "MaxStartups 100",  # unauthenticated connections at once: tests may open several together
            f"MaxSessions {self.max_sessions}",
            "Subsystem sftp internal-sftp",
            f"LogLevel {self.log_level}",
            "",
        ]))
        return config

    def _wait_ready(self) -> str:
        """'' once the port answers with an SSH banner, else what went wrong (with sshd's stderr)."""
        assert self.proc is not None
        pid_file = self._path("sshd.pid")
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"sshd exited with status {self.proc.returncode}: {self._log_text()}"
            # sshd writes its pid file only once it listens: a banner before that could come from
            # another process that took the port.
            try:
                listening = pid_file.read_text().strip() == str(self.proc.pid)
            except OSError:
                listening = False
            if listening:
                try:
                    with socket.create_connection((self.host, self.port), timeout=1) as sock:
                        sock.settimeout(2)
                        banner = sock.recv(256)
                        # Answer with an identification string: a silent hang-up makes sshd log
                        # "kex_exchange_identification: Connection closed by remote host" (ERROR).
                        sock.sendall(b"SSH-2.0-edgeslm-readiness-probe\r\n")
                    if banner.startswith(b"SSH-"):
                        return ""
                except OSError:
                    pass
            time.sleep(0.02)
        return f"sshd did not accept connections within {self.start_timeout:g} s: {self._log_text()}"

    def _log_text(self) -> str:
        try:
            text = self.log.read_text(errors="replace").strip()
        except OSError:
            text = ""
        return text or "(no output on stderr)"

    def session_pids(self) -> list[int]:
        """The per-connection sshd processes (children of the listener) and what they started."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        return _descendants(self.proc.pid)

    def kill_sessions(self, timeout: float = 5.0) -> int:
        """SIGKILL every per-connection sshd process (and its shells): clients see a cut connection.

        The listener keeps running, so new connections work. Returns how many processes were killed.
        """
        pids = self.session_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        return len(pids)

    def _terminate(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            children = _descendants(self.proc.pid)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
            for pid in children:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc = None

    def stop(self) -> None:
        """Stop the listener and every session, and remove the temporary directory."""
        self._terminate()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
