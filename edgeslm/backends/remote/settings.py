"""``remote.toml``: which cloud service (if any) may answer when no local artifact can, and how.

The file is found, first hit wins: the path passed as ``remote_config`` (CLI ``--remote-config``, or
``EDGESLM_REMOTE_CONFIG``), then ``remote.toml`` beside the bundle (the folder holding the bundle
folder or ``.tar``: on a flashed device ``DEST/remote.toml`` beside ``DEST/current``, so it outlives
version switches and never changes the bundle's checksums), then the user config folder
(``$XDG_CONFIG_HOME/edgeslm/remote.toml``, ``~/.config/edgeslm/remote.toml``, ``%APPDATA%`` on
Windows). It is read with the same strict checker as the targets: an unknown key is an error naming the
file and the key. It never holds the API key: ``api_key_env`` names the environment variable that does.

    preset = "github-models"        # github-models | azure-ai-inference | nvidia-nim | openai-compatible
    allow = false                   # true: use it without --allow-remote (still only when nothing local fits)
    # base_url, resource (Azure), model, vision_model, api_key_env, auth, api_version: the preset's by default
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ...config.strict import parse, read_toml
from ...errors import ConfigError

FILE_NAME = "remote.toml"
SECRET_KEYS = ("api_key", "key", "token", "password", "secret")


@dataclass(frozen=True)
class RemoteSettings:
    preset: Literal["github-models", "azure-ai-inference", "nvidia-nim", "openai-compatible"]
    allow: bool = False  # use it without --allow-remote (never when a local artifact can answer)
    base_url: str = ""  # instead of the preset's (a proxy, a self-hosted NIM, a test stand-in)
    resource: str = ""  # azure-ai-inference: NAME of https://NAME.services.ai.azure.com/models
    api_key_env: str | None = None  # the environment variable holding the key; "" sends none
    auth: Literal["", "bearer", "api-key"] = ""  # where the key goes: Authorization: Bearer, or api-key
    api_version: str = ""  # the api-version query parameter (Azure: 2024-05-01-preview)
    model: str = ""  # the text model id there
    vision_model: str = ""  # the model for prompts with images
    images: bool = True  # false: never send images
    stream_usage: bool | None = None  # ask for token counts at the end of a stream (stream_options)
    insecure_http: bool = False  # allow plain http:// to a host other than this one
    timeout_s: float = 60.0  # longest wait for the next bytes of an answer
    connect_timeout_s: float = 10.0
    max_retries: int = 3  # on 429, 5xx, timeouts and connection failures, before any text arrived
    backoff_s: float = 1.0  # first wait between retries; doubles each time (a Retry-After header wins)
    max_backoff_s: float = 30.0
    context_tokens: int = 131072  # prompt + answer the remote model takes (Phi-3.5: 128K)

    def __post_init__(self) -> None:
        if not (0 < self.timeout_s <= 3600 and 0 < self.connect_timeout_s <= 600):
            raise ValueError("timeout_s must be in (0, 3600] and connect_timeout_s in (0, 600]")
        if not 0 <= self.max_retries <= 10:
            raise ValueError("max_retries must be between 0 and 10")
        if self.backoff_s < 0 or self.max_backoff_s < self.backoff_s:
            raise ValueError("backoff_s must be >= 0 and max_backoff_s >= backoff_s")
        if self.context_tokens < 256:
            raise ValueError("context_tokens must be at least 256")
        if self.api_key_env and not self.api_key_env.replace("_", "").isalnum():
            raise ValueError(f"api_key_env must be an environment variable name, not '{self.api_key_env}'")


@dataclass(frozen=True)
class RemoteConfig:
    settings: RemoteSettings
    path: Path  # the file it came from


def user_config_file() -> Path:
    if sys.platform == "win32" and os.environ.get("APPDATA"):
        return Path(os.environ["APPDATA"]) / "edgeslm" / FILE_NAME
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgeslm" / FILE_NAME


def find_remote_config(bundle: Path | None, explicit: str | Path | None = None) -> RemoteConfig | None:
    """The remote fallback configured for ``bundle`` on this device, or None when no file names one."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"remote config {path} does not exist", hint="pass the path of a remote.toml")
        return load_remote_config(path)
    places = [Path(os.path.abspath(bundle)).parent / FILE_NAME] if bundle is not None else []
    for path in [*places, user_config_file()]:
        if path.is_file():
            return load_remote_config(path)
    return None


def load_remote_config(path: Path) -> RemoteConfig:
    table = read_toml(path)
    for key in SECRET_KEYS:
        if key in table:  # the value is never echoed
            raise ConfigError(f"{path}: key '{key}': remote.toml never holds the API key",
                              hint="keep the key in an environment variable and name it with api_key_env = 'NAME'")
    settings = parse(RemoteSettings, table, str(path))
    from .presets import resolve_endpoint

    resolve_endpoint(settings, str(path))  # a missing base_url/model/resource is reported now, not at the first prompt
    return RemoteConfig(settings, path)
