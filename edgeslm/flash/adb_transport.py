"""Flashing to an Android device with the platform's ``adb`` (push + a few toybox shell commands).

adb push cannot append, so an interrupted flash resumes per file: files already complete in the
staging folder are kept, the interrupted one is sent again.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from ..errors import AdbError, DiskSpaceError, FlashIOError
from .destination import Destination


class AdbTransport:
    resumable_bytes = False

    def __init__(self, dest: Destination, rate_limiter=None):
        self.adb = shutil.which("adb")
        if self.adb is None:
            raise AdbError("adb is not installed or not on PATH",
                           hint="install Android platform-tools (apt install adb) and enable USB debugging")
        self.dest, self.rate_limiter = dest, rate_limiter
        devices = [line.split("\t")[0] for line in self._adb("devices").splitlines()[1:] if "\tdevice" in line]
        if dest.serial and dest.serial not in devices:
            raise AdbError(f"no Android device with serial '{dest.serial}' (attached: {', '.join(devices) or 'none'})")
        if not dest.serial and len(devices) != 1:
            raise AdbError(f"{len(devices)} Android devices attached: name one as adb://SERIAL/path"
                           if devices else "no Android device attached", hint="check 'adb devices'")

    def _adb(self, *args: str, check: bool = True) -> str:
        cmd = [self.adb, *(["-s", self.dest.serial] if self.dest.serial else []), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if check and proc.returncode != 0:
            err = (proc.stderr or proc.stdout).strip()
            if "Read-only file system" in err or "Permission denied" in err:
                raise FlashIOError(f"{self.dest}: not writable ({err})", hint="use /data/local/tmp or /sdcard")
            if "No space left" in err:
                raise DiskSpaceError(f"{self.dest}: the device is full ({err})")
            raise AdbError(f"adb {args[0]} failed: {err or proc.returncode}")
        return proc.stdout

    def shell(self, command: str, check: bool = True) -> str:
        return self._adb("shell", command, check=check)

    def size(self, path: str) -> int | None:
        out = self.shell(f"stat -c %s {shlex.quote(path)} 2>/dev/null", check=False).strip()
        return int(out) if out.isdigit() else None

    def makedirs(self, path: str) -> None:
        q = shlex.quote(path)
        self.shell(f"mkdir -p {q} && touch {q}/.edgeslm-write-test && rm -f {q}/.edgeslm-write-test")

    def listdir(self, path: str) -> list[str]:
        return sorted(x for x in self.shell(f"ls -1 {shlex.quote(path)} 2>/dev/null", check=False).split("\n") if x)

    def read_text(self, path: str) -> str | None:
        if self.size(path) is None:
            return None
        return self.shell(f"cat {shlex.quote(path)}")

    def write_text(self, path: str, text: str) -> None:
        import tempfile

        with tempfile.NamedTemporaryFile("w", delete=False, suffix=".json") as fh:
            fh.write(text)
        try:
            self._adb("push", fh.name, f"{path}.tmp")
            self.shell(f"mv -f {shlex.quote(path + '.tmp')} {shlex.quote(path)}")
        finally:
            Path(fh.name).unlink(missing_ok=True)

    def upload(self, local: Path, remote: str, offset: int, progress: Callable[[int], None]) -> int:
        size = local.stat().st_size
        if self.rate_limiter:
            self.rate_limiter.wait(size)
        self._adb("push", str(local), remote)
        progress(size - offset)
        return size

    def copy_within(self, src: str, dst: str) -> None:
        self.shell(f"cp {shlex.quote(src)} {shlex.quote(dst)}")

    def rename(self, src: str, dst: str) -> None:
        self.shell(f"mv {shlex.quote(src)} {shlex.quote(dst)}")

    def switch_link(self, link: str, target: str) -> None:
        tmp = shlex.quote(f"{link}.new")
        self.shell(f"rm -f {tmp} && ln -s {shlex.quote(target)} {tmp} && mv -f {tmp} {shlex.quote(link)}")

    def read_link(self, link: str) -> str | None:
        out = self.shell(f"readlink {shlex.quote(link)} 2>/dev/null", check=False).strip()
        return out or None

    def remove(self, path: str) -> None:
        self.shell(f"rm -rf {shlex.quote(path)}")

    def sha256(self, paths: list[str]) -> dict[str, str]:
        found = {}
        for i in range(0, len(paths), 32):
            out = self.shell("sha256sum " + " ".join(shlex.quote(p) for p in paths[i:i + 32]) + " 2>/dev/null",
                             check=False)
            for line in out.splitlines():
                digest, _, name = line.partition("  ")
                if len(digest) == 64:
                    found[name.strip()] = digest
        return found

    def free_bytes(self, path: str) -> int | None:
        out = self.shell(f"df -k {shlex.quote(path)} 2>/dev/null | tail -1", check=False).split()
        return int(out[3]) * 1024 if len(out) >= 4 and out[3].isdigit() else None

    def remote_doctor(self, bundle_path: str) -> str | None:
        return None  # edgeslm does not run inside adb shell; the app embeds the runtime

    def close(self) -> None:
        return None
