"""The language model of a Phi-3-vision OpenVINO artifact: the streamed int4 decoder on ``inputs_embeds``.

The same low-memory route as the text artifact (``onnx_route``): edgeslm's streaming exporter writes
the int4 decoder as ONNX, here taking ``inputs_embeds`` instead of ``input_ids`` (the token table lives
in ``openvino_text_embeddings_model``), and ``openvino.convert_model`` + the same passes give the
stateful IR openvino-genai's ``VLMPipeline`` loads as ``openvino_language_model.xml``: inputs
``inputs_embeds``, ``attention_mask``, ``position_ids``, ``beam_idx``; output ``logits``; int4_sym
groups (NPU-suitable) and an int8_sym lm_head.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...errors import BuildError
from .onnx_route import ConvertedIR, trim_heap

LANGUAGE_MODEL = "openvino_language_model.xml"


def stream_onnx_on_embeds(source: Path, work_dir: Path, config: dict[str, Any], group_size: int,
                          on_tensor: Callable[[str, int, int], None] | None = None) -> Path:
    from ..onnx_genai.streaming_export import check_checkpoint, decoder_plan, stream_decoder

    check_checkpoint(source, config)
    plan = decoder_plan(config, io_dtype="float32", bits=4, block_size=group_size, symmetric=True,
                        accuracy_level=0, quantize_lm_head=False, embedding="float32", inputs_embeds=True)
    path = stream_decoder(source, work_dir, plan, on_tensor=on_tensor).model_path
    trim_heap()
    return path


def convert_language_model(onnx_path: Path, out_dir: Path, compress_to_fp16: bool = True) -> ConvertedIR:
    """``out_dir``/openvino_language_model.xml from the streamed ONNX (run it in a child: ``in_child``)."""
    import openvino as ov

    from .onnx_attention import replace_group_query_attention
    from .onnx_route import make_stateful, read_onnx
    from .onnx_weights import int8_embedding_and_lm_head, symmetric_u4_to_i4

    model = read_onnx(onnx_path)
    if "inputs_embeds" not in {name for port in model.inputs for name in port.get_names()}:
        raise BuildError("the streamed ONNX decoder does not take inputs_embeds")
    attention = replace_group_query_attention(model)
    int8 = int8_embedding_and_lm_head(model, half=compress_to_fp16)
    trim_heap()
    int4 = symmetric_u4_to_i4(model, half=compress_to_fp16)
    trim_heap()
    if int8 != 1:
        raise BuildError(f"the OpenVINO route found {int8} float lm_head tables to put in int8, expected 1")
    states = make_stateful(model, batch_input="inputs_embeds")
    left = sorted({o.get_type_name() for o in model.get_ops()} & {"GroupQueryAttention", "MatMulNBits", "If"})
    if left:
        raise BuildError(f"the converted language model still holds {', '.join(left)}")
    xml = out_dir / LANGUAGE_MODEL
    ov.save_model(model, str(xml), compress_to_fp16=compress_to_fp16)
    del model
    return ConvertedIR(xml, attention, int4, int8, states)


def in_child(function, *args):
    """``function(*args)`` in a spawned child process (its memory all goes back when it ends); errors
    come back as BuildError unless they already are edgeslm errors."""
    import multiprocessing

    from ...errors import EdgeslmError

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        try:
            return pool.apply(function, args)
        except EdgeslmError:
            raise
        except Exception as exc:
            raise BuildError(f"{getattr(function, '__name__', 'the conversion')} failed: {type(exc).__name__}: {exc}") \
                from None
