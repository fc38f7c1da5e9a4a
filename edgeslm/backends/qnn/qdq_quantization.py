"""QDQ quantization of the static graphs for the HTP: 16-bit activations, per-channel 4/8-bit weights.

Uses onnxruntime's QNN quantization config (``get_qnn_qdq_config``) with activation ranges from the
streamed calibration (``streamed_calibration.PartReader``, pulled one feed at a time: strided MinMax with
stride 1 merges the ranges after every feed). ``get_qnn_qdq_config`` keeps MatMul weights per-tensor
(its comment says QNN lacks per-channel MatMul, which the QNN EP now supports: MatMul with a constant
weight becomes FullyConnected); per-channel symmetric weights along the output axis are requested
through ``init_overrides``. The LM head (the MatMul that makes ``logits``) gets ``lm_head_bits``: w4a16
with an 8-bit head is the default, as AI Hub ships Phi-3.5 (measured on the docs model: docs/benchmarks.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .quantizer_speedups import fast_weight_quantization


def quantize_graph(float_model: Path, qdq_model: Path, reader: Any, weight_bits: int, lm_head_bits: int = 8,
                   other_weights: str = "int8") -> None:
    """``other_weights``: the type of the weights no override names (norms, Conv): ``int8`` symmetric (the
    decoder's), or ``uint8`` asymmetric, which the HTP's LayerNorm needs under 16-bit activations (the
    vision encoder's; a symmetric int8 gamma fails QNN's op validation)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    def kind(bits: int) -> Any:
        return QuantType.QInt4 if bits == 4 else QuantType.QInt8

    graph = onnx.load(str(float_model), load_external_data=False)
    initializers = {i.name for i in graph.graph.initializer}
    overrides = {node.input[1]: [{"quant_type": kind(lm_head_bits if node.output[0] == "logits" else weight_bits),
                                  "axis": 1, "symmetric": True}]
                 for node in graph.graph.node if node.op_type == "MatMul" and node.input[1] in initializers}
    del graph
    config = get_qnn_qdq_config(str(float_model), reader, calibrate_method=CalibrationMethod.MinMax,
                                activation_type=QuantType.QUInt16,
                                weight_type=QuantType.QInt8 if other_weights == "int8" else QuantType.QUInt8,
                                per_channel=False, init_overrides=overrides, stride=1)
    with fast_weight_quantization():
        quantize(str(float_model), str(qdq_model), config)
