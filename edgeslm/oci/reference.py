"""``oci://HOST[:PORT]/REPO[:TAG][@sha256:HEX]``: where a bundle lives in a registry."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UsageError

_REPO = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_HOST = re.compile(r"^(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:]+\])(?::[0-9]{1,5})?$")


@dataclass(frozen=True)
class Reference:
    registry: str  # host[:port]
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def ref(self) -> str:
        """What the manifest endpoint takes: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.registry, self.repository, tag, None)

    def __str__(self) -> str:
        tail = (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")
        return f"oci://{self.registry}/{self.repository}{tail}"


def is_oci(text: str | object) -> bool:
    return isinstance(text, str) and text.startswith("oci://")


def parse_reference(text: str) -> Reference:
    if not is_oci(text):
        raise UsageError(f"'{text}' is not an oci:// reference", hint="e.g. oci://registry.example.com/models/phi35:v1")
    rest = text[len("oci://"):]
    host, _, path = rest.partition("/")
    if not host or not _HOST.match(host) or not path:
        raise UsageError(f"'{text}' needs a registry host and a repository", hint="oci://HOST[:PORT]/REPO[:TAG]")
    digest = None
    if "@" in path:
        path, _, digest = path.partition("@")
        if not _DIGEST.match(digest):
            raise UsageError(f"'{text}': the digest must be sha256:<64 hex digits>")
    tag = None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, _, tag = path.rpartition(":")
        if not _TAG.match(tag):
            raise UsageError(f"'{text}': '{tag}' is not a valid tag")
    if not _REPO.match(path):
        raise UsageError(f"'{text}': '{path}' is not a valid repository name (lowercase, digits, . _ - and /)")
    return Reference(host, path, tag if tag or digest else "latest", digest)
