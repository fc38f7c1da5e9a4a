"""Device side of the QNN format: the compiled context binaries on the Hexagon NPU through the QNN EP.

onnxruntime-genai's QNN pipeline expects its own graph split and cache layout, so the engine drives
the EPContext graphs itself (kv_cache_loop.py): each decoder part's prefill and decode graph in
sequence, the prompt in fixed chunks, then one token per decode call, the KV cache in host buffers of
the compiled context length. The runtime's selection has
already checked the SoC and the onnxruntime-qnn version against the manifest; the context is refused
before generation when the prompt does not fit. On x86_64 (only with ``--artifact``) the same graphs
run on the HTP simulator of onnxruntime-qnn, slowly.

An artifact built from Phi-3.5-vision also has the vision encoder's context binary: the runtime hands over
the preprocessed images with the prompt's ``-N`` placeholder ids; the encoder runs on the NPU (one call per
image at the compiled crop count), the HD layout and the embedding lookup on the CPU (``vision_layout``),
and the first decoder part takes the prompt's embeddings with the image features in place.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...errors import BundleError, EngineLoadError, UsageError
from ...runtime.generation import GenerationOptions
from ...runtime.token_sampling import pick_token
from ...runtime.tokenizer_json import TokenizerJson
from . import ep_sessions
from .artifact_files import QnnArtifact
from .host_support import compiled_soc
from .vision_layout import prompt_rows

if TYPE_CHECKING:
    from ...bundle.manifest import Manifest
    from ...runtime.host_probe import HostProfile
    from ...runtime.selection import Candidate
    from ...vision.phi3v_processor import ProcessedImages


class QnnEngine:
    def __init__(self, artifact: QnnArtifact, soc: str, threads: int = 1):
        self.artifact = artifact
        artifact_dir = artifact.folder
        entry = self.artifact.config["socs"].get(soc)
        if entry is None:
            raise BundleError(f"{artifact_dir} has no context binaries for {soc}")
        self.soc = soc
        try:
            self.loop = self.artifact.loop(lambda p: ep_sessions.runner(ep_sessions.htp_session(
                p, entry["soc_model"], entry["htp_arch"], threads=threads)), soc)
        except BundleError:
            raise
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph errors
            raise EngineLoadError(f"the QNN HTP backend cannot load the {soc} context binaries: {exc}",
                              hint="the binaries must match the device's SoC and onnxruntime-qnn version; "
                                   "'edgeslm doctor' shows both") from None
        self.tokenizer = TokenizerJson(artifact_dir / "tokenizer.json")
        self.text_decoder = self.tokenizer.text_decoder
        self.takes_images = artifact.takes_images
        self.vision = None
        if self.takes_images:
            try:
                self.vision = ep_sessions.runner(ep_sessions.htp_session(
                    artifact.vision_file(soc), entry["soc_model"], entry["htp_arch"], threads=threads,
                    **artifact.vision_options()))
            except BundleError:
                raise
            except Exception as exc:
                raise EngineLoadError(f"the QNN HTP backend cannot load the {soc} vision encoder: {exc}",
                                      hint="the binaries must match the device's SoC and onnxruntime-qnn version") from None

    def encode(self, text: str) -> list[int]:
        if self.takes_images:  # each chunk with BOS, as Phi3VProcessor tokenizes (vision.image_prompt)
            return list(self.tokenizer.tokenizer.encode(text, add_special_tokens=True).ids)
        return self.tokenizer.encode(text)

    def image_features(self, images: ProcessedImages) -> np.ndarray:
        if self.vision is None:
            raise UsageError("this qnn-context artifact was built from a text-only model: it takes no images")
        return self.artifact.image_features(self.vision, images.pixel_values, images.image_sizes)

    def generate(self, prompt_ids: list[int], options: GenerationOptions, max_total_tokens: int,
                 images: ProcessedImages | None = None) -> Iterator[int]:
        """``images``: preprocessed images for an artifact that takes them; ``prompt_ids`` then hold each
        image's placeholder ids (-N for image N), whose embeddings are the encoder's image features."""
        rng = np.random.default_rng(options.seed)
        limit = min(max_total_tokens, self.loop.context)
        features = self.image_features(images) if images is not None and images.count else None
        rows = prompt_rows(self.artifact.embeddings, list(prompt_ids), features)
        self.loop.reset()
        logits = self.loop.prefill(list(prompt_ids), rows)[-1]
        produced = len(prompt_ids)
        while produced < limit:
            token = pick_token(logits, options, rng)
            yield token
            produced += 1
            if produced >= limit:
                break
            logits = self.loop.decode(token)

    def close(self) -> None:
        self.loop = self.vision = None


def open_engine(artifact_dir: Path, candidate: Candidate, host: HostProfile, manifest: Manifest,
                threads: int | None = None) -> QnnEngine:
    artifact = QnnArtifact.open(artifact_dir)
    socs = artifact.config["socs"]
    soc = compiled_soc(socs, host.soc) or next(iter(socs))  # x86_64: the simulator accepts any SoC's binaries
    return QnnEngine(artifact, soc, threads or 1)
