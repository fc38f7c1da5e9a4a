"""The services that serve the Phi-3.5 family through an OpenAI-compatible chat-completions API.

A preset is what its documentation gives: the base URL, where the key goes (``Authorization: Bearer``
or Azure's ``api-key`` header), the environment variable the key is usually kept in, query parameters
(Azure's ``api-version``), and the model ids of Phi-3.5-mini-instruct and Phi-3.5-vision-instruct there.
``remote.toml`` picks one and may override any of it (``base_url`` for a proxy or a test stand-in);
``openai-compatible`` is any other server (vLLM, Ollama, another ``edgeslm serve``) and names its own.
``resolve_endpoint`` turns the settings into the one ``Endpoint`` the client uses (standard library only).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from ...errors import ConfigError


@dataclass(frozen=True)
class Preset:
    name: str
    base_url: str  # "{resource}" is filled from remote.toml's resource (Azure)
    api_key_env: str
    auth: str  # bearer | api-key
    model: str  # Phi-3.5-mini-instruct's id there
    vision_model: str  # Phi-3.5-vision-instruct's id there
    api_version: str = ""  # the api-version query parameter, where the service wants one
    headers: tuple[tuple[str, str], ...] = ()
    stream_usage: bool = False  # send stream_options.include_usage (token counts at the end of a stream)


PRESETS = {
    "github-models": Preset(
        "github-models", "https://models.github.ai/inference", "GITHUB_TOKEN", "bearer",
        "microsoft/Phi-3.5-mini-instruct", "microsoft/Phi-3.5-vision-instruct",
        headers=(("X-GitHub-Api-Version", "2022-11-28"),)),
    "azure-ai-inference": Preset(
        "azure-ai-inference", "https://{resource}.services.ai.azure.com/models", "AZURE_INFERENCE_CREDENTIAL",
        "api-key", "Phi-3.5-mini-instruct", "Phi-3.5-vision-instruct", api_version="2024-05-01-preview"),
    "nvidia-nim": Preset(
        "nvidia-nim", "https://integrate.api.nvidia.com/v1", "NVIDIA_API_KEY", "bearer",
        "microsoft/phi-3.5-mini-instruct", "microsoft/phi-3.5-vision-instruct", stream_usage=True),
    "openai-compatible": Preset("openai-compatible", "", "", "bearer", "", "", stream_usage=True),
}

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Endpoint:
    """Where and how one chat request goes; holds the key's variable name, never the key."""

    preset: str
    chat_url: str
    params: tuple[tuple[str, str], ...]
    auth: str  # bearer | api-key
    api_key_env: str  # "" = send no key (an openai-compatible server without one)
    model: str
    vision_model: str  # "" = image prompts are refused
    headers: tuple[tuple[str, str], ...]
    stream_usage: bool

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.chat_url).netloc


def resolve_endpoint(settings, where: str) -> Endpoint:
    """The endpoint of ``settings`` (a ``RemoteSettings``), with the preset's values where it sets none."""
    preset = PRESETS[settings.preset]
    base = settings.base_url or preset.base_url
    if "{resource}" in base:
        if not settings.resource:
            raise ConfigError(f"{where}: preset '{preset.name}' needs key 'resource' (the NAME of "
                              "https://NAME.services.ai.azure.com) or key 'base_url'")
        base = base.replace("{resource}", settings.resource)
    if not base:
        raise ConfigError(f"{where}: preset '{preset.name}' needs key 'base_url' (e.g. http://127.0.0.1:8080/v1)")
    _check_base_url(base, settings.insecure_http, where)
    model = settings.model or preset.model
    if not model:
        raise ConfigError(f"{where}: preset '{preset.name}' needs key 'model' (the model id the server knows)")
    vision = (settings.vision_model or preset.vision_model) if settings.images else ""
    api_version = settings.api_version or preset.api_version
    key_env = preset.api_key_env if settings.api_key_env is None else settings.api_key_env
    return Endpoint(
        preset=preset.name, chat_url=base.rstrip("/") + "/chat/completions",
        params=(("api-version", api_version),) if api_version else (), auth=settings.auth or preset.auth,
        api_key_env=key_env, model=model, vision_model=vision, headers=preset.headers,
        stream_usage=preset.stream_usage if settings.stream_usage is None else settings.stream_usage)


def _check_base_url(base: str, insecure_http: bool, where: str) -> None:
    parts = urllib.parse.urlsplit(base)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ConfigError(f"{where}: key 'base_url' must be an https:// URL, got '{base}'")
    if parts.username or parts.password:
        raise ConfigError(f"{where}: key 'base_url' must not hold credentials",
                          hint="put the key in an environment variable and name it in api_key_env")
    if parts.query:
        raise ConfigError(f"{where}: key 'base_url' must not have a query string (use api_version for Azure)")
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS and not insecure_http:
        raise ConfigError(f"{where}: key 'base_url' is plain http:// to {parts.hostname}: the API key would cross "
                          "the network unencrypted", hint="use https://, or set insecure_http = true for a trusted "
                                                          "network")
