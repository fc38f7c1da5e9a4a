"""Device side of the ONNX formats: onnxruntime-genai, with defaults chosen from the host.

The builder's genai_config runs the decoder with ONNX Runtime's default threading, which measured
6.35 tok/s on a 2-core host against 9.74 with ``intra_op_num_threads`` set to the core count: the
engine always sets it from the host probe.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import BackendMissingError, EngineLoadError
from ...runtime.generation import GenerationOptions

if TYPE_CHECKING:
    from ...bundle.manifest import Manifest
    from ...runtime.host_probe import HostProfile
    from ...runtime.selection import Candidate
    from ...vision.phi3v_processor import ProcessedImages


class OnnxGenaiEngine:
    def __init__(self, artifact_dir: Path, device: str, threads: int, vocab_size: int):
        try:
            import onnxruntime_genai as og
        except ImportError:
            raise BackendMissingError("onnxruntime-genai is not installed", hint="pip install 'edgeslm[ort]'") from None
        self._og = og
        self.vocab_size = vocab_size
        config = og.Config(str(artifact_dir))
        config.clear_providers()
        if device == "gpu":
            config.append_provider("cuda")
        config_text = (artifact_dir / "genai_config.json").read_text(encoding="utf-8") \
            if (artifact_dir / "genai_config.json").is_file() else "{}"
        self.takes_images = json.loads(config_text).get("model", {}).get("type") == "phi3v"
        # a phi3v artifact's vision and embedding parts run with the decoder's session options
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": max(1, threads), "inter_op_num_threads": 1}}}}))
        try:
            self.model = og.Model(config)
        except Exception as exc:  # onnxruntime raises plain RuntimeErrors
            raise EngineLoadError(f"onnxruntime-genai cannot load {artifact_dir}: {exc}") from None
        self.tokenizer = og.Tokenizer(self.model)

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def text_decoder(self) -> Callable[[int], str]:
        return self.tokenizer.create_stream().decode

    def generate(self, prompt_ids: list[int], options: GenerationOptions, max_total_tokens: int,
                 images: ProcessedImages | None = None) -> Iterator[int]:
        """``images``: preprocessed images for a ``phi3v`` artifact; ``prompt_ids`` then hold each image's
        placeholder ids (-N for image N), which the embedding part replaces with its features."""
        og = self._og
        params = og.GeneratorParams(self.model)
        search: dict = {"max_length": max_total_tokens, "do_sample": not options.greedy}
        if not options.greedy:
            search.update(temperature=options.temperature, top_p=options.top_p,
                          top_k=options.top_k or self.vocab_size)
            if options.seed is not None:
                search["random_seed"] = options.seed
        params.set_search_options(**search)
        generator = og.Generator(self.model, params)
        try:
            if self.takes_images:
                generator.set_inputs(self._named_inputs(prompt_ids, images))
            else:
                generator.append_tokens(prompt_ids)
            while not generator.is_done():
                generator.generate_next_token()
                yield int(generator.get_next_tokens()[0])
        finally:
            del generator  # frees the KV cache at once, also when the caller stops early

    def _named_inputs(self, prompt_ids: list[int], images: ProcessedImages | None):
        """What onnxruntime-genai's phi3v processor would hand the generator (its names and dtypes)."""
        import numpy as np

        named = self._og.NamedTensors()
        named["input_ids"] = np.asarray([prompt_ids], dtype=np.int32)
        if images is not None and images.count:
            named["pixel_values"] = np.ascontiguousarray(images.pixel_values, dtype=np.float32)
            named["image_sizes"] = np.ascontiguousarray(images.image_sizes, dtype=np.int64)
            named["num_image_tokens"] = np.asarray(images.num_img_tokens, dtype=np.int64)
        return named

    def close(self) -> None:
        self.tokenizer = None
        self.model = None


def open_engine(artifact_dir: Path, candidate: Candidate, host: HostProfile, manifest: Manifest,
                threads: int | None = None) -> OnnxGenaiEngine:
    return OnnxGenaiEngine(artifact_dir, candidate.device, threads or host.physical_cores, manifest.model.vocab_size)
