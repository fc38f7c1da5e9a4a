"""Put the converted ONNX graph's weights in the form NNCF gives them (and the NPU compiler expects).

* int4 layers: the ONNX frontend turns symmetric ``MatMulNBits`` into u4 weights minus a u4 zero point
  of 8. NNCF's ``int4_sym`` is signed i4 without a zero point: (u - 8) as a signed nibble is u XOR 8,
  so each packed byte is XORed with 0x88, no unpacking. Scales are kept as they are.
* embedding table and lm_head: the streamed ONNX holds them in float32 (MatMulNBits and
  GatherBlockQuantized have no channel-wise int8 form); they are quantized here to NNCF's
  ``int8_sym`` backup: one scale per output row, max|w| / 127, rows rounded to nearest.

Every weight ends as NNCF's decompression chain: i4/i8 constant -> Convert(f16) -> Multiply(f16
scale) [-> Reshape] -> Convert(f32) (f32 throughout when the IR keeps f32). The original constants are
dropped as they are replaced (no Python reference is kept), so memory stays at about one copy of the
weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import BuildError

ROW_CHUNK = 4096  # rows quantized at a time: ~50 MB of f32 for a 3072-wide table


def _decompressed(op, ov, weights, scales: np.ndarray, reshape_to, half: bool):
    """NNCF's chain from integer weights and float scales to an f32 weight."""
    dtype = ov.Type.f16 if half else ov.Type.f32
    scale = op.constant(scales.astype(np.float16 if half else np.float32))
    value = op.multiply(op.convert(op.constant(weights, shared_memory=False), dtype), scale)
    if reshape_to is not None:
        value = op.reshape(value, reshape_to, False)
    return op.convert(value, ov.Type.f32) if half else value


def _u4_constant(node, ov):
    """The Constant under ``Convert(Constant u4)``, or None."""
    if node.get_type_name() != "Convert":
        return None
    const = node.input_value(0).get_node()
    if const.get_type_name() != "Constant" or const.get_output_element_type(0) != ov.Type.u4:
        return None
    return const


def symmetric_u4_to_i4(model, half: bool) -> int:
    """Rewrite every u4-minus-8 weight of ``model`` to NNCF's i4 chain; returns how many."""
    import openvino as ov
    from openvino import opset13 as op

    subtracts = [o for o in model.get_ops() if o.get_type_name() == "Subtract"]
    done = 0
    while subtracts:  # pop, so that no Python reference keeps a replaced constant alive
        sub = subtracts.pop()
        weight, zero = _u4_constant(sub.input_value(0).get_node(), ov), _u4_constant(sub.input_value(1).get_node(), ov)
        if weight is None or zero is None:
            continue
        if set(np.unique(zero.get_data()).tolist()) != {8}:  # u4 get_data unpacks to one value per byte
            raise BuildError("the ONNX graph has an asymmetric int4 weight; the onnx-streaming route makes int4_sym")
        (mul_in,) = sub.output(0).get_target_inputs()
        mul = mul_in.get_node()
        scale_node = mul.input_value(1 - mul_in.get_index()).get_node()
        if mul.get_type_name() != "Multiply" or scale_node.get_type_name() != "Constant":
            raise BuildError(f"unexpected int4 decompression after {sub.get_friendly_name()}: "
                             f"{mul.get_type_name()}({scale_node.get_type_name()})")
        tail, reshape_to = mul, None
        consumers = list(mul.output(0).get_target_inputs())
        if len(consumers) == 1 and consumers[0].get_node().get_type_name() == "Reshape":
            tail = consumers[0].get_node()
            reshape_to = tail.input_value(1)
        source = weight.get_tensor_view().data
        packed = np.array(source, copy=True).view(np.uint8) ^ np.uint8(0x88)
        signed = ov.Tensor(ov.Type.i4, weight.get_output_shape(0))
        signed.data.view(np.uint8)[...] = packed.reshape(signed.data.view(np.uint8).shape)
        scales = np.array(scale_node.get_data(), dtype=np.float32)
        tail.output(0).replace(_decompressed(op, ov, signed, scales, reshape_to, half).output(0))
        del sub, weight, zero, mul, mul_in, scale_node, tail, consumers, packed, signed, source
        done += 1
    model.validate_nodes_and_infer_types()
    return done


def int8_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per row (NNCF int8_sym): (int8 rows, scales [rows, 1])."""
    scales = np.abs(rows).max(axis=1, keepdims=True) / 127.0
    scales[scales == 0] = 1.0
    return np.clip(np.rint(rows / scales), -128, 127).astype(np.int8), scales.astype(np.float32)


def _int8_table(ov, table: np.ndarray) -> tuple[Any, np.ndarray]:
    """``table`` [rows, cols] (any float view) -> i8 tensor and scales [rows, 1], a chunk of rows at a time."""
    out = ov.Tensor(ov.Type.i8, list(table.shape))
    data = out.data
    scales = np.empty((table.shape[0], 1), dtype=np.float32)
    for start in range(0, table.shape[0], ROW_CHUNK):
        chunk = np.ascontiguousarray(table[start:start + ROW_CHUNK], dtype=np.float32)
        data[start:start + ROW_CHUNK], scales[start:start + ROW_CHUNK] = int8_rows(chunk)
    return out, scales


def _float_constant(node):
    if node.get_type_name() == "Constant" and node.get_output_element_type(0).get_type_name() in ("f32", "f16"):
        return node
    return None


def int8_embedding_and_lm_head(model, half: bool) -> int:
    """Quantize the float embedding table (Gather on ``input_ids``) and the float lm_head (MatMul feeding
    ``logits``) to NNCF's channel-wise int8_sym; returns how many were quantized (2 for a Phi-3 graph)."""
    import openvino as ov
    from openvino import opset13 as op

    done = 0
    logits = model.output("logits").get_node().input_value(0).get_node()
    if logits.get_type_name() == "MatMul":
        const = _float_constant(logits.input_value(1).get_node())
        if const is not None and not logits.get_attributes()["transpose_a"]:
            table = const.get_tensor_view().data  # [N, K] with transpose_b (the frontend's form), else [K, N]
            weights, scales = _int8_table(ov, table if logits.get_attributes()["transpose_b"] else table.T)
            new = op.matmul(logits.input_value(0), _decompressed(op, ov, weights, scales, None, half), False, True)
            new.set_friendly_name(logits.get_friendly_name())
            logits.output(0).replace(new.output(0))
            del const, table, weights, new
            done += 1
    del logits
    ids = next((port for port in model.inputs if "input_ids" in port.get_names()), None)
    for target in ids.get_target_inputs() if ids is not None else ():  # no table in a decoder on inputs_embeds
        gather = target.get_node()
        while gather.get_type_name() == "Convert":  # the frontend may cast the ids to i32 first
            gather = next(iter(gather.output(0).get_target_inputs())).get_node()
        const = _float_constant(gather.input_value(0).get_node()) if gather.get_type_name() == "Gather" else None
        if const is None:
            continue
        table = const.get_tensor_view().data
        weights, scales = _int8_table(ov, table)
        gather.input(0).replace_source_output(_decompressed(op, ov, weights, scales, None, half).output(0))
        del const, weights, table
        done += 1
    model.validate_nodes_and_infer_types()
    return done
