"""Device side of the OpenVINO format: openvino-genai's LLMPipeline on NPU, GPU or CPU.

The runtime renders the chat template and hands the pipeline token ids (never a string, so nothing
is templated twice). Tokens come back through a ``StreamerBase`` subclass on the pipeline's thread
and are passed to the caller through a queue; closing the generator tells the streamer to stop.
On the NPU the pipeline is compiled for static shapes from the manifest (``MAX_PROMPT_LEN``,
``MIN_RESPONSE_LEN``); the runtime refuses longer prompts before they reach it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import BackendMissingError, EngineLoadError
from ...runtime import byte_fallback_detokenizer
from ...runtime.generation import GenerationOptions
from .genai_streaming import generation_config, streamed_tokens

if TYPE_CHECKING:
    from ...bundle.manifest import Manifest
    from ...runtime.host_probe import HostProfile
    from ...runtime.selection import Candidate

DEVICE_NAMES = {"npu": "NPU", "gpu": "GPU", "cpu": "CPU"}


def pipeline_properties(device: str, details: dict[str, Any], threads: int) -> dict[str, Any]:
    """The properties passed to LLMPipeline for a device, from the manifest's artifact details."""
    if device == "npu":
        return {key: int(value) for key, value in details.get("npu_properties", {}).items()}
    if device == "cpu":
        return {"INFERENCE_NUM_THREADS": max(1, threads)}
    return {}


class OpenVinoEngine:
    def __init__(self, artifact_dir: Path, device: str, properties: dict[str, Any]):
        try:
            import openvino as ov
            import openvino_genai as ov_genai
        except ImportError:
            raise BackendMissingError("openvino-genai is not installed", hint="pip install 'edgeslm[openvino]'") from None
        self._ov, self._genai = ov, ov_genai
        self.device_name = DEVICE_NAMES[device]
        self.properties = properties
        try:
            self.pipeline = ov_genai.LLMPipeline(str(artifact_dir), self.device_name, **properties)
        except Exception as exc:  # driver or plugin errors arrive as RuntimeError
            raise EngineLoadError(f"openvino-genai cannot load {artifact_dir} on {self.device_name}: {exc}") from None
        self.tokenizer = self.pipeline.get_tokenizer()
        self.fast_detokenizer = byte_fallback_detokenizer.load(artifact_dir / "tokenizer.json")

    def encode(self, text: str) -> list[int]:
        encoded = self.tokenizer.encode(text, add_special_tokens=False)
        return [int(t) for t in encoded.input_ids.data[0]]

    def text_decoder(self, window: int = 16) -> Callable[[int], str]:
        if self.fast_detokenizer is not None:  # a table lookup instead of a detokenizer model call per token
            return self.fast_detokenizer.stream()
        return self._model_text_decoder(window)

    def _model_text_decoder(self, window: int) -> Callable[[int], str]:
        """Incremental detokenization with one decode call per token: decode the ids since a recent
        start point and emit what was added; every ``window`` tokens the start point moves up (keeping
        one token of context, so SentencePiece's word-start spaces survive)."""
        ids: list[int] = []
        state = {"start": 0, "text": ""}

        def decode(token: int) -> str:
            ids.append(token)
            text = self.tokenizer.decode(ids[state["start"]:], skip_special_tokens=True)
            if text.endswith("\ufffd"):
                return ""  # an incomplete UTF-8 sequence: wait for the next token
            piece = text[len(state["text"]):]
            state["text"] = text
            if len(ids) - state["start"] >= window:
                state["start"] = len(ids) - 1
                state["text"] = self.tokenizer.decode(ids[state["start"]:], skip_special_tokens=True)
            return piece

        return decode

    def generate(self, prompt_ids: list[int], options: GenerationOptions, max_total_tokens: int) -> Iterator[int]:
        config = generation_config(self._genai, options, max_total_tokens - len(prompt_ids))
        inputs = self._ov.Tensor(np.array([prompt_ids], dtype=np.int64))
        yield from streamed_tokens(self._genai, lambda streamer: self.pipeline.generate(inputs, config, streamer),
                                   f"openvino-genai generation failed on {self.device_name}", "openvino-generate")

    def close(self) -> None:
        self.pipeline = None
        self.tokenizer = None


def open_engine(artifact_dir: Path, candidate: Candidate, host: HostProfile, manifest: Manifest,
                threads: int | None = None) -> OpenVinoEngine:
    if candidate.artifact.vision is not None:  # Phi-3.5-vision: VLMPipeline (vision_engine)
        from .vision_engine import OpenVinoVisionEngine, vlm_properties

        return OpenVinoVisionEngine(artifact_dir, candidate.device,  # type: ignore[return-value]
                                    vlm_properties(candidate.device, dict(candidate.artifact.details),
                                                   threads or host.physical_cores),
                                    candidate.artifact.vision.num_crops, tuple(manifest.chat.stop_token_ids))
    properties = pipeline_properties(candidate.device, dict(candidate.artifact.details),
                                     threads or host.physical_cores)
    return OpenVinoEngine(artifact_dir, candidate.device, properties)
