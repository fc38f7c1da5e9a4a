"""Registry credentials, found the way docker and oras find them, and the challenge they answer.

Order: ``EDGESLM_REGISTRY_TOKEN`` (a bearer token, used as is), ``EDGESLM_REGISTRY_USERNAME`` +
``EDGESLM_REGISTRY_PASSWORD``, then the Docker config (``$DOCKER_CONFIG/config.json``, else
``~/.docker/config.json``): ``credHelpers[host]`` or ``credsStore`` (``docker-credential-<name> get``),
else ``auths[host]`` (``auth`` = base64 of user:password, or ``identitytoken``). Secrets are never put in
an error message or a log.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RegistryAuthError


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)  # a bearer token (or a refresh/identity token)
    source: str = ""  # where they came from, for messages: "environment", "docker config", "helper desktop"

    def basic(self) -> str | None:
        if self.username is None or self.password is None:
            return None
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


def find_credentials(registry: str) -> Credentials | None:
    env = os.environ
    if env.get("EDGESLM_REGISTRY_TOKEN"):
        return Credentials(token=env["EDGESLM_REGISTRY_TOKEN"], source="EDGESLM_REGISTRY_TOKEN")
    if env.get("EDGESLM_REGISTRY_USERNAME"):
        return Credentials(env["EDGESLM_REGISTRY_USERNAME"], env.get("EDGESLM_REGISTRY_PASSWORD", ""),
                           source="EDGESLM_REGISTRY_USERNAME/PASSWORD")
    config = _docker_config()
    if not config:
        return None
    helper = (config.get("credHelpers") or {}).get(registry) or config.get("credsStore")
    if helper:
        found = _from_helper(str(helper), registry)
        if found:
            return found
    auths = config.get("auths") or {}
    entry = next((auths[k] for k in (registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v2/")
                  if isinstance(auths.get(k), dict)), None)
    if not entry:
        return None
    if entry.get("identitytoken"):
        return Credentials(token=entry["identitytoken"], source="docker config identitytoken")
    if entry.get("auth"):
        try:
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise RegistryAuthError(f"the Docker config's auth entry for {registry} does not decode",
                                    hint="run docker login / oras login again") from None
        return Credentials(user, password, source="docker config")
    return None


def _docker_config() -> dict:
    folder = Path(os.environ["DOCKER_CONFIG"]) if os.environ.get("DOCKER_CONFIG") else Path.home() / ".docker"
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _from_helper(helper: str, registry: str) -> Credentials | None:
    if not re.match(r"^[A-Za-z0-9_.-]+$", helper):
        return None
    try:
        proc = subprocess.run([f"docker-credential-{helper}", "get"], input=registry, capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None  # helper not installed: fall back to the config's auths
    if proc.returncode != 0:
        return None
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        return None
    user, secret = data.get("Username"), data.get("Secret")
    if user == "<token>":
        return Credentials(token=secret, source=f"credential helper {helper}")
    return Credentials(user, secret, source=f"credential helper {helper}") if user and secret else None


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="…",service="…",scope="…"`` → ("bearer", {realm, service, scope})."""
    scheme, _, rest = header.strip().partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return scheme.lower(), params
