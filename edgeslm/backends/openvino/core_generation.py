"""Generation on a Phi-3.5-vision OpenVINO artifact's IRs with plain ``openvino.Core`` (device side).

For prompts that VLMPipeline would lay out wrongly (images with a non-square crop grid, see
``vision_features``): the prompt's ids embedded by the text embeddings IR, the image features written
at the negative ids in order, then the stateful language model (``inputs_embeds``, ``attention_mask``,
``position_ids``, ``beam_idx``) one token at a time. Greedy, or temperature / top-k / top-p sampling
with an optional seed. Compiled on first use, on the CPU or GPU (the NPU needs VLMPipeline's static
shapes; an NPU host runs these prompts on the CPU). Standard library, numpy and openvino only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import UsageError
from ...runtime.token_sampling import pick_token
from .vision_features import VisionFeatures

TEXT_EMBEDDINGS = "openvino_text_embeddings_model.xml"
LANGUAGE_MODEL = "openvino_language_model.xml"


def last_position_logits(model) -> bool:
    """Feed the lm_head only the last position (as VLMPipeline's slice-before-matmul does): a prefill of
    ~800 tokens otherwise computes 800 x vocab logits for one token. Returns whether the graph had the form."""
    from openvino import opset13 as op

    node = model.output("logits").get_node().input_value(0).get_node()
    while node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    if node.get_type_name() != "MatMul":
        return False

    def const(value: int):
        return op.constant(np.array([value], dtype=np.int64))

    last = op.slice(node.input_value(0), const(-1), const(np.iinfo(np.int64).max), const(1), const(1))
    node.input(0).replace_source_output(last.output(0))
    model.validate_nodes_and_infer_types()
    return True


class CoreGeneration:
    def __init__(self, artifact_dir: Path, device: str = "CPU", properties: dict | None = None):
        import openvino as ov

        core = ov.Core()
        props = properties or {}
        self.features = VisionFeatures(artifact_dir, device, core, props)
        self.embed = core.compile_model(str(Path(artifact_dir) / TEXT_EMBEDDINGS), device, props)
        model = core.read_model(str(Path(artifact_dir) / LANGUAGE_MODEL))
        last_position_logits(model)
        self.lm = core.compile_model(model, device, props)
        self.hidden = int(self.features.glb_gn.shape[-1])

    def embeddings(self, ids: list[int], images: Any) -> np.ndarray:
        """[1, len(ids), hidden]: token embeddings, image features at the negative ids."""
        array = np.asarray(ids, dtype=np.int64)
        embeds = np.array(self.embed(np.maximum(array, 0)[None])[0], dtype=np.float32)
        slots = np.flatnonzero(array < 0)
        if len(slots):
            if images is None:
                raise UsageError(f"the prompt has {len(slots)} image positions but no images")
            features = self.features(images.pixel_values, images.image_sizes)
            if features.shape[0] != len(slots):
                raise UsageError(f"the prompt has {len(slots)} image positions, the images give {features.shape[0]} "
                                 "features")
            embeds[0, slots] = features
        return embeds

    def generate(self, ids: list[int], images: Any, options: Any, max_new_tokens: int,
                 stop_ids: set[int]) -> Iterator[int]:
        request = self.lm.create_infer_request()
        request.reset_state()
        rng = np.random.default_rng(options.seed)
        embeds = self.embeddings(ids, images)
        total = len(ids)
        start = 0
        for _ in range(max_new_tokens):
            step = embeds.shape[1]
            request.infer({"inputs_embeds": embeds, "attention_mask": np.ones((1, total), dtype=np.int64),
                           "position_ids": np.arange(start, start + step, dtype=np.int64)[None],
                           "beam_idx": np.zeros((1,), dtype=np.int32)})
            logits = np.asarray(request.get_tensor("logits").data[0, -1], dtype=np.float32)
            token = pick_token(logits, options, rng)
            yield token
            if token in stop_ids:
                return
            start, total = total, total + 1
            embeds = np.array(self.embed(np.array([[token]], dtype=np.int64))[0], dtype=np.float32)
