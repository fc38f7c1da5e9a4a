"""The source model's fp32 logits without torch: an unquantized export, run one decoder layer at a time.

When the build environment has no torch (``pip install 'edgeslm[build-onnx]'``), measured quality
needs another reference than ``builder.reference_logits``. This one is the streaming exporter's own
graph with fp32 MatMuls (no quantization), exported one layer at a time into the work folder, run with
onnxruntime on every window, then deleted before the next: peak memory is one layer in fp32 (~0.45 GB
at 3.8B, twice while onnxruntime prepacks it) plus the activations, never the 15 GB fp32 model. The
embedding rows are gathered from the mapped checkpoint; the last segment ends with the final norm and
lm_head. Standard library, numpy, onnx_ir and onnxruntime.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint_tensors import CheckpointTensors
from .streaming_export import decoder_plan, stream_decoder

NAME = "onnx-fp32-layerwise"  # what the manifest's quality.reference says


def reference_logits(model_dir: Path, config: dict[str, Any], windows: list[list[int]], work_dir: Path,
                     threads: int | None = None) -> Iterator[np.ndarray]:
    """Per window, the source's fp32 logits [n, vocab] (positions 0..n-1)."""
    import onnxruntime as ort

    tensors = CheckpointTensors(model_dir)
    try:
        hidden = [tensors.fp32_rows("model.embed_tokens.weight", window)[None] for window in windows]
    finally:
        tensors.close()
    plan = decoder_plan(config, bits=None, inputs_embeds=True)
    layers, shape = plan.shape.layers, plan.shape
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    for layer in range(layers):
        last = layer == layers - 1
        folder = work_dir / f"reference-layer-{layer}"
        segment = decoder_plan(config, bits=None, inputs_embeds=True, first_layer=layer, end_layer=layer + 1,
                               hidden_output=not last)
        stream_decoder(model_dir, folder, segment)
        session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        empty = np.zeros((1, shape.kv_heads, 0, shape.head_dim), dtype=np.float32)
        output = "logits" if last else "hidden_states"
        for index, states in enumerate(hidden):
            feeds = {"inputs_embeds": states, "attention_mask": np.ones((1, states.shape[1]), dtype=np.int64),
                     f"past_key_values.{layer}.key": empty, f"past_key_values.{layer}.value": empty}
            hidden[index] = session.run([output], feeds)[0]
        del session
        shutil.rmtree(folder, ignore_errors=True)
    for logits in hidden:
        yield logits[0]
