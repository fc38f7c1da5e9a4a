"""A real OCI registry for the tests: Debian's docker-registry (the CNCF distribution server, v2.8) on
127.0.0.1, storage in a temporary folder, optionally with htpasswd (bcrypt) authentication."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

BINARY = shutil.which("docker-registry") or "/usr/bin/docker-registry"


def registry_available() -> str | None:
    return None if Path(BINARY).is_file() else "docker-registry is not installed (apt-get install docker-registry)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    def __init__(self, user: str | None = None, password: str | None = None):
        self.user, self.password = user, password
        self.folder = Path(tempfile.mkdtemp(prefix="edgeslm-registry-"))
        self.storage = self.folder / "storage"
        self.port = _free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Registry:
        auth = ""
        if self.user:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                import crypt as _crypt
                hashed = _crypt.crypt(self.password, _crypt.mksalt(_crypt.METHOD_BLOWFISH))
            (self.folder / "htpasswd").write_text(f"{self.user}:{hashed}\n")
            auth = f"auth:\n  htpasswd:\n    realm: edgeslm-test\n    path: {self.folder / 'htpasswd'}\n"
        config = self.folder / "config.yml"
        config.write_text(f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n"
                          f"  filesystem:\n    rootdirectory: {self.storage}\n  delete:\n    enabled: true\n"
                          f"http:\n  addr: {self.host}\n{auth}")
        self.log = (self.folder / "registry.log").open("w")
        self.proc = subprocess.Popen([BINARY, "serve", str(config)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1)
                return self
            except urllib.error.HTTPError:  # 401 with auth: it is up
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"docker-registry did not start: {(self.folder / 'registry.log').read_text()[-2000:]}")

    def blob_file(self, digest: str) -> Path:
        hexdigest = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)
