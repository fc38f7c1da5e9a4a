"""Flash destinations: ``ssh://user@host[:port]/path``, ``adb://[serial]/path`` or a local/mounted folder."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..errors import UsageError


@dataclass(frozen=True)
class Destination:
    kind: str  # ssh | adb | local
    path: str  # absolute path on the device (POSIX), or the local folder
    host: str = ""
    port: int = 22
    user: str = ""
    serial: str = ""

    def __str__(self) -> str:
        if self.kind == "ssh":
            return f"ssh://{self.user + '@' if self.user else ''}{self.host}:{self.port}{self.path}"
        if self.kind == "adb":
            return f"adb://{self.serial}{self.path}"
        return self.path


_HOST = re.compile(r"^[A-Za-z0-9.\-]+$|^\[[0-9A-Fa-f:.]+\]$")


def parse_destination(text: str) -> Destination:
    if not text or not text.strip():
        raise UsageError("the destination is empty", hint="use ssh://user@host/path, adb://SERIAL/path or a folder")
    if "://" not in text:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", text) and not re.match(r"^[A-Za-z]:[\\/]", text):
            raise UsageError(f"destination '{text}' looks like a URI without '//'",
                             hint="use ssh://user@host/path or adb://SERIAL/path")
        return Destination("local", str(Path(text).expanduser().absolute()))
    parts = urlsplit(text)
    if parts.scheme == "ssh":
        if not parts.hostname or not _HOST.match(parts.netloc.rpartition("@")[2].rsplit(":", 1)[0] or "x"):
            raise UsageError(f"destination '{text}' has no valid host", hint="e.g. ssh://pi@raspberrypi.local/opt/edgeslm")
        try:
            port = parts.port or 22
        except ValueError:
            raise UsageError(f"destination '{text}' has an invalid port") from None
        path = unquote(parts.path)
        if not path.startswith("/") or path == "/":
            raise UsageError(f"destination '{text}' needs an absolute folder path after the host",
                             hint="e.g. ssh://pi@raspberrypi.local/opt/edgeslm")
        return Destination("ssh", path.rstrip("/"), host=parts.hostname, port=port, user=unquote(parts.username or ""))
    if parts.scheme == "adb":
        path = unquote(parts.path)
        if not path.startswith("/") or path == "/":
            raise UsageError(f"destination '{text}' needs an absolute folder path on the device",
                             hint="e.g. adb://emulator-5554/data/local/tmp/edgeslm or adb:///sdcard/edgeslm")
        if parts.netloc and not re.match(r"^[A-Za-z0-9._:-]+$", parts.netloc):
            raise UsageError(f"destination '{text}' has an invalid device serial")
        return Destination("adb", path.rstrip("/"), serial=parts.netloc)
    raise UsageError(f"unsupported destination scheme '{parts.scheme}://'", hint="use ssh://, adb:// or a folder path")
