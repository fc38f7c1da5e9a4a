"""The low-memory OpenVINO route: streamed int4 ONNX -> ``openvino.convert_model`` -> stateful IR.

optimum-intel loads the whole model in torch and traces it (~10.8 GB at 3.8B). Here edgeslm's
streaming ONNX exporter writes the quantized decoder one tensor at a time (~1 GB), OpenVINO's ONNX
frontend converts it with the weights memory-mapped, and a few graph passes give the same artifact
optimum-intel + NNCF make: public attention ops with the optimum interface (``onnx_attention``),
NNCF's i4 / int8_sym weight forms (``onnx_weights``), and a stateful KV cache (``make_stateful``).
Peak memory is about the ONNX weights once plus a weight in flight (2.9 GiB at 3.8B): see ``read_onnx``
and ``trim_heap``.

Quantization is round-to-nearest from onnxruntime's MLAS kernel (what NNCF's data-free int4_sym
does too, up to rounding of the scale), groups of ``group_size`` along the input dimension.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BuildError

ONNX_MODULES = ("onnx_ir", "onnxruntime", "openvino", "openvino_tokenizers", "transformers")
ONNX_BLOCK_SIZES = (16, 32, 64, 128, 256)  # what MatMulNBits / the MLAS kernel quantize


@dataclass(frozen=True)
class ConvertedIR:
    model_xml: Path
    attention_replaced: int
    int4_weights: int
    int8_weights: int
    kv_states: int


def route_problems(settings: Any) -> list[str]:
    """Settings the onnx-streaming route cannot make (say them before any work)."""
    found = []
    if settings.mode != "int4_sym":
        found.append(f"exporter=onnx-streaming makes int4_sym weights only, not {settings.mode}")
    if settings.group_size not in ONNX_BLOCK_SIZES:
        found.append(f"exporter=onnx-streaming quantizes groups of {'/'.join(map(str, ONNX_BLOCK_SIZES))} "
                     f"(MatMulNBits blocks), not group_size={settings.group_size} (channel-wise needs "
                     "exporter=optimum-intel)")
    if settings.ratio != 1.0 or settings.backup_precision != "int8_sym":
        found.append("exporter=onnx-streaming puts every layer in int4 and the embedding/lm_head in int8_sym "
                     "(ratio = 1.0, backup_precision = int8_sym)")
    if settings.data_aware:
        found.append("exporter=onnx-streaming is data-free round-to-nearest: awq/scale_estimation/gptq need "
                     "exporter=optimum-intel")
    return found


def stream_onnx(source: Path, work_dir: Path, config: dict[str, Any], group_size: int,
                on_tensor: Callable[[str, int, int], None] | None = None) -> Path:
    """The int4 decoder as ONNX in ``work_dir``: symmetric groups of ``group_size``, accuracy level 0
    (no int8 activation hint: OpenVINO ignores it), float32 embedding table and lm_head (quantized to
    int8 after conversion)."""
    from ..onnx_genai.streaming_export import check_checkpoint, decoder_plan, stream_decoder

    check_checkpoint(source, config)
    plan = decoder_plan(config, io_dtype="float32", bits=4, block_size=group_size, symmetric=True,
                        accuracy_level=0, quantize_lm_head=False, embedding="float32")
    path = stream_decoder(source, work_dir, plan, on_tensor=on_tensor).model_path
    trim_heap()
    return path


def make_stateful(model, batch_input: str = "input_ids") -> int:
    """KV cache as state, as optimum-intel does: a ``beam_idx`` input reorders the past KV (Gather),
    ``apply_make_stateful_transformation`` turns past/present pairs into ReadValue/Assign, and each
    state starts as zeros [batch, kv_heads, 0, head_dim], the batch read from ``batch_input``
    (``inputs_embeds`` for a decoder on embeddings). Returns the number of states."""
    import openvino as ov
    from openvino import opset13 as op
    from openvino._offline_transformations import apply_make_stateful_transformation

    ids = model.input(batch_input)
    beam_idx = op.parameter(ov.PartialShape([ids.get_partial_shape()[0]]), ov.Type.i32, name="beam_idx")
    beam_idx.output(0).get_tensor().set_names({"beam_idx"})
    model.add_parameters([beam_idx])
    pairs = {}
    for port in list(model.inputs):
        name = port.get_any_name()
        if not name.startswith("past_key_values."):
            continue
        consumers = list(port.get_target_inputs())
        reordered = op.gather(port, beam_idx, op.constant(np.int64(0)))
        for target in consumers:
            target.replace_source_output(reordered.output(0))
        pairs[name] = name.replace("past_key_values.", "present.")
    if not pairs:
        raise BuildError("the ONNX graph has no past_key_values inputs to make stateful")
    model.validate_nodes_and_infer_types()
    apply_make_stateful_transformation(model, pairs)
    batch = op.gather(op.shape_of(ids, "i64"), op.constant(np.array([0], dtype=np.int64)), op.constant(np.int64(0)))
    states = [o for o in model.get_ops() if o.get_type_name() == "ReadValue"]
    for read in states:
        dims = [d.min_length for d in read.get_output_partial_shape(0)]
        shape = op.concat([batch] + [op.constant(np.array([d], dtype=np.int64)) for d in dims[1:]], 0)
        read.set_arguments([op.broadcast(op.constant(np.float32(0)), shape)])
    model.validate_nodes_and_infer_types()
    return len(states)


def trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``; elsewhere nothing).

    The streaming writer threads and the passes free many 5-50 MB buffers; glibc keeps them in its
    arenas, where they still count in the RSS (~0.8 GB after the streaming export at 3.8B)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def read_onnx(onnx_path: Path):
    """``openvino.convert_model`` of the ONNX file, reading the external data instead of mapping it.

    The frontend copies every MatMulNBits weight into a new u4 constant. With the data memory-mapped
    (``share_weights=True``, the default) the mapped pages it read stay resident next to the copies,
    so the conversion peaks at twice the weights (5.6 GB at 3.8B); read directly, it holds them once
    (measured on a 544 MB probe: 1.12 GB peak mapped, 0.61 GB read)."""
    import openvino as ov

    return ov.convert_model(str(onnx_path), share_weights=False)


def convert_in_child(onnx_path: Path, out_dir: Path, compress_to_fp16: bool) -> ConvertedIR:
    """``convert_to_ir`` in a spawned child process: the build process has freed the streaming
    exporter's buffers only as far as its allocator lets go (~0.6-1 GB more at its peak when measured
    in-process at 3.8B); the child's memory all goes back when it ends."""
    import multiprocessing

    from ...errors import EdgeslmError

    with multiprocessing.get_context("spawn").Pool(1) as pool:  # leaving the block terminates the child
        try:
            return pool.apply(convert_to_ir, (Path(onnx_path), Path(out_dir), compress_to_fp16))
        except EdgeslmError:
            raise
        except Exception as exc:  # the child's RuntimeError/MemoryError, re-raised here
            raise BuildError(f"openvino.convert_model of the streamed ONNX failed: {type(exc).__name__}: {exc}",
                             hint="use [[set]] openvino-int4.exporter=optimum-intel") from None


def convert_to_ir(onnx_path: Path, out_dir: Path, compress_to_fp16: bool) -> ConvertedIR:
    """Convert the streamed ONNX to ``out_dir``/openvino_model.xml with the passes above."""
    import openvino as ov

    from .onnx_attention import replace_group_query_attention
    from .onnx_weights import int8_embedding_and_lm_head, symmetric_u4_to_i4

    model = read_onnx(onnx_path)
    attention = replace_group_query_attention(model)
    # the float tables first: they are the largest constants (2 x 394 MB at 3.8B) and shrink 4x
    int8 = int8_embedding_and_lm_head(model, half=compress_to_fp16)
    trim_heap()
    int4 = symmetric_u4_to_i4(model, half=compress_to_fp16)
    trim_heap()
    if int8 != 2:
        raise BuildError(f"the OpenVINO route found {int8} of the 2 float tables (embedding, lm_head) to put in int8")
    states = make_stateful(model)
    left = sorted({o.get_type_name() for o in model.get_ops()} & {"GroupQueryAttention", "MatMulNBits", "If"})
    if left:
        raise BuildError(f"the converted IR still holds {', '.join(left)}",
                         hint="use [[set]] openvino-int4.exporter=optimum-intel")
    xml = out_dir / "openvino_model.xml"
    ov.save_model(model, str(xml), compress_to_fp16=compress_to_fp16)
    del model
    return ConvertedIR(xml, attention, int4, int8, states)
