"""The Python API, the same for every backend::

    llm = edgeslm.load("demo.bundle")
    result = llm.chat([{"role": "user", "content": "What does os.path.join do?"}], max_new_tokens=128)
    # a bundle built from Phi-3.5-vision also takes images, as OpenAI-style content parts:
    llm.chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "photo.png"}},
                                            {"type": "text", "text": "What is in the image?"}]}])
    for piece in llm.stream(messages):
        print(piece, end="")
    llm.close()
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..bundle.manifest import Manifest, read_manifest
from ..bundle.pack import OpenedBundle
from ..bundle.trust_policy import TrustStatus, enforce
from ..errors import UsageError
from ..registry import backend_of
from .chat_template import ChatTemplate
from .generation import GenerationOptions, GenerationResult, Usage
from .host_probe import HostProfile, probe_host
from .prompt_inputs import PreparedPrompt, check_length, prepare_prompt
from .remote_fallback import choose_remote
from .selection import Candidate, Selection, rank_artifacts
from .stop_text import StopScanner
from .verified_files import verify_before_load


class Stream:
    """Iterate for text pieces; ``result`` holds the GenerationResult once the iteration ends."""

    def __init__(self, pieces: Iterator[str]):
        self._pieces = pieces
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def close(self) -> None:
        self._pieces.close()  # type: ignore[attr-defined]


class LLM:
    def __init__(self, opened: OpenedBundle, manifest: Manifest, selection: Selection, engine: Any):
        self._opened = opened
        self.manifest = manifest
        self.selection = selection
        self.candidate: Candidate = selection.chosen
        self.engine = engine
        self.template = ChatTemplate(manifest.chat)
        self.stop_ids = frozenset(manifest.chat.stop_token_ids)
        self._lock = threading.Lock()  # one generation at a time per engine
        self.allow_remote_images = False  # http(s) image URLs (the server enables them with a flag)
        self.allow_image_files = True  # local paths / file:// URLs (the server turns them off)
        self.num_crops: int | None = None  # crops per image instead of the artifact's (vision bundles)
        self.trust: TrustStatus | None = None  # who signed the bundle, under which policy (load sets it)

    @property
    def context_tokens(self) -> int:
        return self.candidate.context.total_tokens

    @property
    def max_prompt_tokens(self) -> int:
        return self.candidate.context.max_prompt_tokens

    @property
    def takes_images(self) -> bool:
        return self.candidate.artifact.vision is not None

    def prepare(self, messages: list[dict[str, Any]], system: str | None = None) -> PreparedPrompt:
        """Token ids (and preprocessed images) of a conversation, checked against the context envelope.
        Message content is text or OpenAI-style parts (``text``, ``image_url`` with a ``data:`` URL, a
        ``file://`` URL or a path, ``image`` with a path or bytes)."""
        prepared = prepare_prompt(messages, system, self.template, self.engine.encode,
                                  self.candidate.artifact.vision, model_name=self.manifest.model.name,
                                  allow_remote_images=self.allow_remote_images, allow_files=self.allow_image_files,
                                  num_crops=self.num_crops)
        check_length(prepared, self.max_prompt_tokens, self.context_tokens, self.candidate.artifact.id)
        return prepared

    def prompt_ids(self, messages: list[dict[str, Any]], system: str | None = None) -> list[int]:
        return self.prepare(messages, system).ids

    def stream(self, messages: list[dict[str, Any]], system: str | None = None,
               prepared: PreparedPrompt | None = None, **options: Any) -> Stream:
        opts = GenerationOptions(**{**options, "stop": tuple(options.get("stop") or ())})
        prepared = prepared or self.prepare(messages, system)
        stream = Stream(iter(()))
        stream._pieces = self._pieces(prepared, opts, stream)
        return stream

    def chat(self, messages: list[dict[str, str]], system: str | None = None, **options: Any) -> GenerationResult:
        stream = self.stream(messages, system, **options)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def _pieces(self, prepared: PreparedPrompt, opts: GenerationOptions, stream: Stream) -> Iterator[str]:
        ids = prepared.ids
        max_total = min(len(ids) + opts.max_new_tokens, self.context_tokens)
        scanner, decode = StopScanner(opts.stop), self.engine.text_decoder()
        texts: list[str] = []
        count, finish, started = 0, "length", False
        start = time.perf_counter()
        first = last = start
        with self._lock:
            tokens = (self.engine.generate(ids, opts, max_total, images=prepared.images) if prepared.images is not None
                      else self.engine.generate(ids, opts, max_total))
            try:
                for token in tokens:
                    now = time.perf_counter()
                    if count == 0:
                        first = now
                    last = now
                    if token in self.stop_ids:
                        finish = "stop"
                        break
                    count += 1
                    text = decode(token)
                    if not started:
                        text = text.lstrip(" ")  # SentencePiece's word-start space before the first word
                        started = bool(text)
                    piece = scanner.feed(text)
                    if piece:
                        texts.append(piece)
                        yield piece
                    if scanner.stopped:
                        finish = "stop"
                        break
                    if count >= opts.max_new_tokens:
                        break
                else:
                    if count < opts.max_new_tokens and len(ids) + count < max_total:
                        finish = "stop"  # the engine ended on its own end-of-sequence token
                tail = scanner.flush()
                if tail:
                    texts.append(tail)
                    yield tail
            except GeneratorExit:
                finish = "cancelled"
                raise
            finally:
                tokens.close()
                decode_s = last - first
                stream.result = GenerationResult(
                    text="".join(texts), finish_reason=finish, usage=Usage(len(ids), count),
                    time_to_first_token_s=first - start,
                    decode_tokens_per_s=(count - 1) / decode_s if count > 1 and decode_s > 0 else 0.0,
                    total_s=time.perf_counter() - start, artifact_id=self.candidate.artifact.id,
                    device=self.candidate.device)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        self._opened.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load(bundle: str | Path, artifact: str | None = None, device: str | None = None, context: int | None = None,
         verify: str = "fast", host: HostProfile | None = None, threads: int | None = None,
         num_crops: int | None = None, trust_dir: str | Path | None = None, allow_remote: bool = False,
         remote_config: str | Path | None = None) -> LLM:
    """Open a bundle (folder or .tar), pick the artifact for this host, verify it and load its engine.
    ``num_crops`` (vision bundles): at most this many 336-px crops per image instead of the artifact's.
    Under a trust policy (``trust_dir``, $EDGESLM_TRUST_DIR, the flash layout's ``trust/`` or
    /etc/edgeslm/trust: ``bundle/trust_policy.py``) a bundle no trusted key signed is refused before
    anything is loaded; ``llm.trust`` says who signed it, or holds the notice for an unsigned bundle.
    A cloud fallback named by a ``remote.toml`` answers only when no artifact can run here (or, for a
    text-only artifact, prompts with images), and only with ``allow_remote`` or its ``allow = true``
    (``runtime/remote_fallback.py``); it returns an object with this API whose answers say ``remote``."""
    if num_crops is not None:
        from ..vision.phi3v_processor import check_num_crops

        check_num_crops(num_crops)
    opened = OpenedBundle(Path(bundle))
    try:
        manifest = read_manifest(opened.folder)
        trust = enforce(opened.folder, opened.source, Path(trust_dir) if trust_dir is not None else None)
        if trust.policy is not None and verify == "off":
            raise UsageError("verify='off' is refused under a trust policy: the signature covers the checksums",
                             hint=f"the policy is {trust.policy}")
        host = host or probe_host()
        selection = rank_artifacts(manifest, host, artifact_id=artifact, device=device, context=context)
        remote = choose_remote(Path(bundle), selection, allow_remote, remote_config)
        if remote.serves_everything:
            fallback = remote.open(manifest, selection, host)
            fallback.trust = trust
            opened.close()
            return fallback
        chosen = remote.local_choice(selection)
        verify_before_load(opened.folder, manifest, chosen.artifact.id, verify)
        open_engine = backend_of(chosen.spec).open_engine()
        engine = open_engine(opened.folder / chosen.artifact.path, chosen, host, manifest, threads=threads)
        llm = LLM(opened, manifest, selection, engine)
        llm.num_crops = num_crops
        llm.trust = trust
        return remote.wrap(llm)
    except BaseException:
        opened.close()
        raise
