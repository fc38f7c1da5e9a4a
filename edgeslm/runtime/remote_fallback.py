"""When the remote fallback answers: only when no local artifact can, and only when the device allows it.

The rule, in one place (``load``, ``edgeslm doctor``):

- a ``remote.toml`` must name a service (``backends.remote.settings.find_remote_config``);
- it must be allowed: ``allow_remote=True`` (CLI ``--allow-remote``) or ``allow = true`` in that file;
- when an artifact of the bundle can run here it answers, never the remote; the one exception is a
  prompt with images for a text-only local artifact, which goes to the remote's vision model (when allowed);
- when none can, the remote answers everything (when allowed); when not allowed the error says how.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backends.remote.settings import RemoteConfig, find_remote_config
from ..errors import NoArtifactError
from .selection import Candidate, Selection


@dataclass(frozen=True)
class RemoteChoice:
    config: RemoteConfig | None  # None: no remote.toml names a fallback
    allowed: bool
    local: Candidate | None  # the local artifact that runs here, if any

    @property
    def endpoint(self) -> Any:
        from ..backends.remote.presets import resolve_endpoint

        return resolve_endpoint(self.config.settings, str(self.config.path)) if self.config else None

    @property
    def serves_everything(self) -> bool:
        return self.config is not None and self.allowed and self.local is None

    @property
    def serves_images(self) -> bool:
        """Image prompts go to the remote: a text-only local artifact, and a remote vision model, allowed."""
        return (self.config is not None and self.allowed and self.local is not None
                and self.local.artifact.vision is None and bool(self.endpoint.vision_model))

    @property
    def reason(self) -> str:
        if self.config is None:
            return "no remote.toml beside the bundle or in the user config folder"
        how = f"[[allow_remote]] or allow = true in {self.config.path}"
        if self.local is None:
            if self.allowed:
                return "no local artifact can run here; the remote is allowed"
            return f"no local artifact can run here, but the remote is not allowed (it would be with {how})"
        if self.serves_images:
            return f"{self.local.artifact.id} runs here and is text-only: only prompts with images go to the remote"
        if not self.allowed and self.local.artifact.vision is None and self.endpoint.vision_model:
            return (f"{self.local.artifact.id} runs here and is text-only: prompts with images would go to the "
                    f"remote with {how}")
        rule = "" if self.allowed else f" (and only with {how})"
        return f"{self.local.artifact.id} runs here: the remote answers only when no local artifact can{rule}"

    def local_choice(self, selection: Selection) -> Candidate:
        """``selection.chosen``, with the way to the remote fallback in the error when nothing fits."""
        try:
            return selection.chosen
        except NoArtifactError as exc:
            if self.config is not None and not self.allowed:
                exc.hint = (f"a remote fallback is configured ({self.config.settings.preset} in {self.config.path}); "
                            "pass [[allow_remote]] or set allow = true there to use it; " + (exc.hint or ""))
            raise

    def candidate(self) -> Any:
        from .remote_model import RemoteCandidate

        why = ("no local artifact can run here" if self.local is None
               else f"{self.local.artifact.id} does not take images")
        return RemoteCandidate(self.config, self.endpoint, why)

    def open(self, manifest: Any, selection: Selection, host: Any) -> Any:
        """The remote engine, through the registry, behind the API of a loaded bundle."""
        from ..registry import backends
        from .remote_model import RemoteLLM

        candidate = self.candidate()
        engine = backends()["remote"].open_engine()(None, candidate, host, manifest, threads=None)
        return RemoteLLM(engine, manifest, selection, candidate)

    def wrap(self, llm: Any) -> Any:
        """The loaded local artifact, routed with the remote for image prompts when that is allowed (the remote
        is opened at the first image prompt)."""
        if not self.serves_images:
            return llm
        from .remote_model import RoutedLLM

        return RoutedLLM(llm, self.candidate(), lambda: self.open(llm.manifest, llm.selection, llm.selection.host))

    def describe(self) -> dict[str, Any] | None:
        """What ``edgeslm doctor`` shows: the service, whether the key is set (never the key), the verdict."""
        if self.config is None:
            return None
        endpoint = self.endpoint
        status = "used" if self.serves_everything else "images" if self.serves_images else (
            "candidate" if self.local is None else "not used")
        return {"config": str(self.config.path), "preset": endpoint.preset, "url": endpoint.chat_url,
                "model": endpoint.model, "vision_model": endpoint.vision_model or None,
                "api_key_env": endpoint.api_key_env or None,
                "api_key_set": bool(endpoint.api_key_env and os.environ.get(endpoint.api_key_env, "").strip()),
                "allowed": self.allowed, "status": status, "reason": self.reason}


def choose_remote(bundle: Path | None, selection: Selection | None, allow_remote: bool = False,
                  remote_config: str | Path | None = None) -> RemoteChoice:
    config = find_remote_config(bundle, remote_config)
    allowed = bool(allow_remote or (config is not None and config.settings.allow))
    local = selection.ranked[0] if selection is not None and selection.ranked else None
    return RemoteChoice(config, allowed, local)


def remote_report(bundle: Path | None, selection: Selection | None, allow_remote: bool = False,
                  remote_config: str | Path | None = None) -> dict[str, Any] | None:
    """``edgeslm doctor``'s remote entry (None: no remote.toml); without a bundle, only what is configured."""
    info = choose_remote(bundle, selection, allow_remote, remote_config).describe()
    if info is not None and bundle is None:
        info.update(status="configured", reason="answers for a bundle none of whose artifacts can run here, "
                                                "when allowed")
    return info


def remote_lines(info: dict[str, Any] | None) -> list[str]:
    if not info:
        return []
    key = (f"key in ${info['api_key_env']}: {'set' if info['api_key_set'] else 'NOT SET'}" if info["api_key_env"]
           else "no key")
    vision = f", images to {info['vision_model']}" if info["vision_model"] else ", no images"
    mark = {"used": "✓", "images": "✓", "candidate": "·", "configured": "·"}.get(info["status"], "✗")
    return [f"remote    {info['preset']}: {info['model']}{vision} at {info['url']} ({key}; {info['config']})",
            f"  {mark} remote: {info['status']}: {info['reason']}"]
