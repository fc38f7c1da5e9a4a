"""Device side of the MLX format: mlx-lm's ``generate_step`` (what ``stream_generate`` runs) on Metal.

The runtime renders the chat template and hands over token ids; tokens stream back one at a time
and the runtime stops on the manifest's stop ids. Tokenization uses the artifact's tokenizer.json
with the ``tokenizers`` package. On Linux, ``mlx[cpu]`` runs the same code on the CPU (slowly):
the runtime's selection only picks this engine there when asked with ``--artifact``.

An artifact built from Phi-3.5-vision (``vision_config.json`` beside the text model) also takes
images: the runtime hands over the preprocessed images (``vision.phi3v_processor``) with the
prompt's ``-N`` placeholder ids; ``vision_tower`` turns the pixels into image features,
``embedded_prompt`` writes them at the placeholders, and ``generate_step`` prefills on those input
embeddings. Such an artifact's ``encode`` adds BOS to every text chunk, as the hub's Phi3VProcessor does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import BackendMissingError, UsageError
from ...runtime.generation import GenerationOptions
from ...runtime.tokenizer_json import TokenizerJson
from .model_loading import load_mlx_model

if TYPE_CHECKING:
    from ...bundle.manifest import Manifest
    from ...runtime.host_probe import HostProfile
    from ...runtime.selection import Candidate
    from ...vision.phi3v_processor import ProcessedImages

PREFILL_STEP = 512  # prompt tokens per forward pass while filling the KV cache


class MlxEngine:
    def __init__(self, artifact_dir: Path):
        try:
            import mlx.core as mx
            from mlx_lm.generate import generate_step
            from mlx_lm.sample_utils import make_sampler
        except ImportError:
            raise BackendMissingError("mlx-lm is not installed", hint="pip install 'edgeslm[mlx]'") from None
        self._mx, self._generate_step, self._make_sampler = mx, generate_step, make_sampler
        from .vision_tower import VisionTower, has_vision

        self.model = load_mlx_model(artifact_dir)
        self.tokenizer = TokenizerJson(artifact_dir / "tokenizer.json")
        self.text_decoder = self.tokenizer.text_decoder
        self.takes_images = has_vision(artifact_dir)
        self.vision = VisionTower.load(artifact_dir) if self.takes_images else None
        self._features: tuple[object, object] | None = None  # (images, their features): the last ones

    def encode(self, text: str) -> list[int]:
        if self.takes_images:  # each chunk with BOS, as Phi3VProcessor tokenizes (vision.image_prompt)
            return list(self.tokenizer.tokenizer.encode(text, add_special_tokens=True).ids)
        return self.tokenizer.encode(text)

    def image_features(self, images: ProcessedImages):
        """The images' features (an mx array), kept for the same ``ProcessedImages`` object."""
        if self.vision is None:
            raise UsageError("this MLX artifact was built from a text-only model: it takes no images")
        if self._features is None or self._features[0] is not images:
            self._features = (images, self.vision.image_features(images.pixel_values, images.image_sizes))
        return self._features[1]

    def generate(self, prompt_ids: list[int], options: GenerationOptions, max_total_tokens: int,
                 images: ProcessedImages | None = None) -> Iterator[int]:
        """``images``: preprocessed images for an artifact that takes them; ``prompt_ids`` then hold each
        image's placeholder ids (-N for image N), replaced by its features before the prefill."""
        mx = self._mx
        if options.greedy:
            sampler = self._make_sampler(temp=0.0)
        else:
            if options.seed is not None:
                mx.random.seed(options.seed)
            sampler = self._make_sampler(temp=options.temperature, top_p=options.top_p if options.top_p < 1 else 0.0,
                                         top_k=options.top_k)
        budget = max(1, max_total_tokens - len(prompt_ids))
        if (images is not None and images.count) or any(t < 0 for t in prompt_ids):
            from .embedded_prompt import on_embeddings, prompt_embeddings

            features = self.image_features(images) if images is not None and images.count else None
            embeds = prompt_embeddings(self.model, prompt_ids, features)
            steps = self._generate_step(mx.array([max(t, 0) for t in prompt_ids]), on_embeddings(self.model),
                                        max_tokens=budget, sampler=sampler, prefill_step_size=PREFILL_STEP,
                                        input_embeddings=embeds)
        else:
            steps = self._generate_step(mx.array(prompt_ids), self.model, max_tokens=budget, sampler=sampler,
                                        prefill_step_size=PREFILL_STEP)
        try:
            for token, _logprobs in steps:
                yield int(token)
        finally:
            steps.close()  # drops the KV cache at once, also when the caller stops early

    def close(self) -> None:
        self.model = self.vision = self._features = None


def open_engine(artifact_dir: Path, candidate: Candidate, host: HostProfile, manifest: Manifest,
                threads: int | None = None) -> MlxEngine:
    return MlxEngine(artifact_dir)
