"""Device side of a Phi-3.5-vision OpenVINO artifact: openvino-genai's ``VLMPipeline`` (model type phi3_v).

``VLMPipeline`` takes a prompt string and raw images, and does the rest itself: it splits the prompt at
``<|image_N|>`` tags and tokenizes each chunk with BOS (as edgeslm's ``image_prompt`` does), preprocesses
each image inside the vision IR (HD transform, normalisation, crops), runs CLIP, its HD merge and the
projection, and the language model on the merged embeddings. The runtime has already rendered the
manifest's chat template, counted each image's tokens by the same HD rule and checked the whole prompt
against the context envelope (the NPU's static ``MAX_PROMPT_LEN`` included); so the pipeline gets
``apply_chat_template = False`` and the manifest's stop ids, and the engine gives it back exactly the
text it tokenized: ``encode`` remembers the ids of the chunks it made (the runtime calls it once per
chunk right before ``generate``), and ``generate`` rebuilds the prompt from them, tags where the
negative image ids are. The raw images come with the preprocessed ones (``ProcessedImages.sources``).

Images whose crop grid is not square, and images cut at another ``num_crops`` than the artifact's
(``edgeslm.load(..., num_crops=N)``; the pipeline reads its own from preprocessor_config.json), go
through the same IRs under plain ``openvino.Core`` instead (``core_generation``): openvino-genai
2026.x swaps height and width of the HD image in its phi3_v encoder, which lays such grids out
transposed (``vision_features`` has the details).

On an NPU host the language model is compiled for the NPU (static shapes from the manifest) and the
pipeline runs the vision and embedding parts on ``AUTO`` (the CPU); on a GPU host everything runs on
the GPU; else the CPU. Standard library, numpy and openvino/openvino-genai only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BackendMissingError, EngineLoadError, UsageError
from ...runtime import byte_fallback_detokenizer
from ...runtime.generation import GenerationOptions
from ...vision.image_files import ImageInputError
from .core_generation import CoreGeneration
from .genai_streaming import generation_config, streamed_tokens
from .vision_features import square_grids

DEVICE_NAMES = {"npu": "NPU", "gpu": "GPU", "cpu": "CPU"}
_REMEMBERED = 64  # text chunks kept for rebuilding prompts


def vlm_properties(device: str, details: dict[str, Any], threads: int) -> dict[str, Any]:
    """VLMPipeline properties: the NPU's static shapes go to the language model only."""
    if device == "npu":
        npu = {key: int(value) for key, value in details.get("npu_properties", {}).items()}
        return {"MODEL_PROPERTIES": {"language_model": npu}} if npu else {}
    if device == "cpu":
        return {"INFERENCE_NUM_THREADS": max(1, threads)}
    return {}


def rebuild_prompt(ids: list[int], chunk_text: Callable[[list[int]], str]) -> tuple[str, int]:
    """The prompt string for ``ids``: text runs through ``chunk_text``, each run of ``-N`` as ``<|image_N|>``.
    Returns (prompt, images)."""
    parts: list[str] = []
    run: list[int] = []
    images = 0
    i = 0
    while i < len(ids):
        if ids[i] >= 0:
            run.append(ids[i])
            i += 1
            continue
        if run:
            parts.append(chunk_text(run))
            run = []
        number = -ids[i]
        while i < len(ids) and ids[i] == -number:
            i += 1
        images += 1
        if number != images:
            raise ImageInputError(f"image placeholders out of order: <|image_{number}|> where <|image_{images}|> "
                                  "was expected")
        parts.append(f"<|image_{number}|>")
    if run:
        parts.append(chunk_text(run))
    return "".join(parts), images


def image_tensors(images: Any, ov) -> list[Any]:
    """The raw RGB images as ov.Tensor u8 [1, H, W, 3] (what VLMPipeline preprocesses)."""
    sources = tuple(getattr(images, "sources", ()) or ())
    if len(sources) != images.count:
        raise UsageError("the OpenVINO vision pipeline needs the original images (ProcessedImages.sources); "
                         "prepare prompts with edgeslm.vision.phi3v_processor.preprocess")
    return [ov.Tensor(np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8)[None])) for image in sources]


class OpenVinoVisionEngine:
    takes_images = True

    def __init__(self, artifact_dir: Path, device: str, properties: dict[str, Any], num_crops: int,
                 stop_ids: tuple[int, ...] = ()):
        try:
            import openvino as ov
            import openvino_genai as ov_genai
        except ImportError:
            raise BackendMissingError("openvino-genai is not installed", hint="pip install 'edgeslm[openvino]'") from None
        self._ov, self._genai = ov, ov_genai
        self.device_name = DEVICE_NAMES[device]
        self.properties = properties
        self.num_crops = num_crops
        self.stop_ids = {int(t) for t in stop_ids}
        self.artifact_dir = Path(artifact_dir)
        self._core: CoreGeneration | None = None
        try:
            self.pipeline = ov_genai.VLMPipeline(str(artifact_dir), self.device_name, **properties)
        except Exception as exc:  # driver, plugin and file errors arrive as RuntimeError
            raise EngineLoadError(f"openvino-genai's VLMPipeline cannot load {artifact_dir} on {self.device_name}: "
                                  f"{' '.join(str(exc).split())[:400]}") from None
        self.tokenizer = self.pipeline.get_tokenizer()
        self.fast_detokenizer = byte_fallback_detokenizer.load(artifact_dir / "tokenizer.json")
        self._chunks: OrderedDict[tuple[int, ...], str] = OrderedDict()
        self.last_metrics: Any = None  # VLMPerfMetrics of the last generation (benchmarks read it)

    def encode(self, text: str) -> list[int]:
        """One chunk's ids with BOS, as VLMPipeline tokenizes each chunk between image tags."""
        ids = [int(t) for t in self.tokenizer.encode(text, add_special_tokens=True).input_ids.data[0]]
        self._chunks[tuple(ids)] = text
        self._chunks.move_to_end(tuple(ids))
        while len(self._chunks) > _REMEMBERED:
            self._chunks.popitem(last=False)
        return ids

    def _chunk_text(self, ids: list[int]) -> str:
        text = self._chunks.get(tuple(ids))
        if text is not None:
            return text
        # ids this engine did not make (a caller's own tokenization): the closest text there is
        body = ids[1:] if ids and ids[0] == self.tokenizer.get_bos_token_id() else ids
        return self.tokenizer.decode(body, skip_special_tokens=False)

    def text_decoder(self, window: int = 16) -> Callable[[int], str]:
        if self.fast_detokenizer is not None:
            return self.fast_detokenizer.stream()
        from .engine import OpenVinoEngine

        return OpenVinoEngine._model_text_decoder(self, window)  # type: ignore[arg-type]

    def generate(self, prompt_ids: list[int], options: GenerationOptions, max_total_tokens: int,
                 images: Any = None) -> Iterator[int]:
        genai, ov = self._genai, self._ov
        prompt, tags = rebuild_prompt(list(prompt_ids), self._chunk_text)
        count = images.count if images is not None else 0
        if tags != count:
            raise ImageInputError(f"the prompt has {tags} image placeholder runs for {count} images")
        # VLMPipeline would transpose a non-square grid, and it cuts at its preprocessor_config's num_crops only
        if count and (not square_grids(images.image_sizes) or images.pixel_values.shape[1] != self.num_crops + 1):
            yield from self._core_path().generate(list(prompt_ids), images, options,
                                                  max(1, max_total_tokens - len(prompt_ids)), self.stop_ids)
            return
        tensors = image_tensors(images, ov) if count else []
        config = generation_config(genai, options, max_total_tokens - len(prompt_ids), self.stop_ids)

        def generate(streamer: Any) -> None:
            result = self.pipeline.generate(prompt, images=tensors, generation_config=config, streamer=streamer)
            self.last_metrics = getattr(result, "perf_metrics", None)

        yield from streamed_tokens(genai, generate, f"openvino-genai VLMPipeline generation failed on {self.device_name}",
                                   "openvino-vlm-generate")

    def _core_path(self) -> CoreGeneration:
        """The same IRs under plain openvino.Core, compiled on first use (the CPU on an NPU host)."""
        if self._core is None:
            device = "CPU" if self.device_name == "NPU" else self.device_name
            threads = self.properties.get("INFERENCE_NUM_THREADS")
            self._core = CoreGeneration(self.artifact_dir, device,
                                        {"INFERENCE_NUM_THREADS": threads} if threads else None)
        return self._core

    def close(self) -> None:
        self._core = None
        self.pipeline = None
        self.tokenizer = None
