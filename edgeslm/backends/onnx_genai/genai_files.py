"""``genai_config.json`` and the tokenizer files beside a streamed decoder (standard library only).

The config has the fields onnxruntime-genai 0.18's builder writes for Phi-3 (decoder file, shapes,
input/output names, special tokens from ``generation_config.json`` else ``config.json``), with the
past/present buffer shared and ``search.max_length`` set to the planned context rather than the
model's 131072 (which, with a shared KV buffer, allocates the whole context up front). The tokenizer
files are copied from the checkpoint: onnxruntime-genai reads ``tokenizer.json`` and
``tokenizer_config.json``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ...errors import BuildError
from ...model_shape import ModelShape

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def special_tokens(source_dir: Path, config: dict[str, Any]) -> tuple[int, list[int], int]:
    """(bos, eos ids, pad) as the builder resolves them."""
    generation: dict[str, Any] = {}
    path = source_dir / "generation_config.json"
    if path.is_file():
        try:
            generation = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            generation = {}
    eos = _as_list(generation.get("eos_token_id")) or _as_list(config.get("eos_token_id"))
    bos = generation.get("bos_token_id", config.get("bos_token_id", 1))
    pad = generation.get("pad_token_id", config.get("pad_token_id"))
    return int(bos), eos, int(pad if pad is not None else eos[0])


def genai_config(source_dir: Path, config: dict[str, Any], max_length: int, *, inputs_embeds: bool = False,
                 provider: str = "cpu", filename: str = "model.onnx") -> dict[str, Any]:
    shape = ModelShape.of(config)
    bos, eos, pad = special_tokens(source_dir, config)
    inputs: dict[str, str] = {"inputs_embeds": "inputs_embeds"} if inputs_embeds else {"input_ids": "input_ids"}
    inputs.update(attention_mask="attention_mask", past_key_names="past_key_values.%d.key",
                  past_value_names="past_key_values.%d.value")
    window = int(config.get("sliding_window") or 0) or int(config["max_position_embeddings"]) * 2
    provider_options = [{"cuda": {"enable_cuda_graph": "0"}}] if provider == "cuda" else []
    return {
        "model": {
            "bos_token_id": bos,
            "context_length": int(config["max_position_embeddings"]),
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": provider_options},
                "filename": filename,
                "head_size": shape.head_dim,
                "hidden_size": shape.hidden_size,
                "inputs": inputs,
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
                "num_attention_heads": shape.heads,
                "num_hidden_layers": shape.layers,
                "num_key_value_heads": shape.kv_heads,
                "sliding_window": {"window_size": window, "slide_key_value_cache": False, "slide_inputs": False,
                                   "layers": [], "cache_slack": 0},
            },
            "eos_token_id": eos if len(eos) > 1 else eos[0],
            "pad_token_id": pad,
            "type": "phi3",
            "vocab_size": shape.vocab_size,
        },
        "search": {
            "diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
            "max_length": int(max_length), "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
            "num_return_sequences": 1, "past_present_share_buffer": True, "repetition_penalty": 1.0,
            "temperature": 1.0, "top_k": 50, "top_p": 1.0,
        },
    }


def multimodal_parts(document: dict[str, Any], *, vision: str, embedding: str) -> None:
    """Turn a decoder's genai_config into a ``phi3v`` one: the vision and embedding parts beside it. They
    have no session options of their own, so they run with the decoder's (provider, threads, and what a
    runtime overlays on the decoder's)."""
    model = document["model"]
    model["type"] = "phi3v"
    model["vision"] = {"filename": vision, "config_filename": PROCESSOR_CONFIG,
                       "inputs": {"pixel_values": "pixel_values", "image_sizes": "image_sizes"},
                       "outputs": {"image_features": "image_features"}}
    model["embedding"] = {"filename": embedding,
                          "inputs": {"input_ids": "input_ids", "image_features": "image_features"},
                          "outputs": {"inputs_embeds": "inputs_embeds"}}


def processor_config(num_crops: int) -> dict[str, Any]:
    """onnxruntime-extensions' Phi-3-vision image pipeline, for users of onnxruntime-genai's own processor
    (edgeslm's runtime preprocesses with ``edgeslm.vision`` and feeds the tensors itself)."""
    return {"processor": {"name": "image_processing", "transforms": [
        {"operation": {"name": "decode_image", "domain": "com.microsoft.extensions", "type": "DecodeImage",
                       "attrs": {"color_space": "BGR"}}},
        {"operation": {"name": "convert_to_rgb", "domain": "com.microsoft.extensions", "type": "ConvertRGB"}},
        {"operation": {"name": "phi3_image_transform", "domain": "com.microsoft.extensions",
                       "type": "Phi3ImageTransform", "attrs": {"num_crops": num_crops, "num_img_tokens": 144}}}]}}


PROCESSOR_CONFIG = "processor_config.json"


def write_genai_files(source_dir: Path, out_dir: Path, config: dict[str, Any], max_length: int, *,
                      inputs_embeds: bool = False, provider: str = "cpu", filename: str = "model.onnx",
                      vision: tuple[str, str, int] | None = None) -> None:
    """``vision`` = (vision file, embedding file, num_crops) makes a ``phi3v`` config and processor config."""
    if not (source_dir / "tokenizer.json").is_file():
        raise BuildError(f"{source_dir} has no tokenizer.json, which onnxruntime-genai needs",
                         hint="save the tokenizer with a recent transformers (tokenizer.save_pretrained) first")
    for name in TOKENIZER_FILES:
        if (source_dir / name).is_file():
            shutil.copyfile(source_dir / name, out_dir / name)
    document = genai_config(source_dir, config, max_length, inputs_embeds=inputs_embeds or vision is not None,
                            provider=provider, filename=filename)
    if vision is not None:
        multimodal_parts(document, vision=vision[0], embedding=vision[1])
        (out_dir / PROCESSOR_CONFIG).write_text(json.dumps(processor_config(vision[2]), indent=4) + "\n",
                                                encoding="utf-8")
    (out_dir / "genai_config.json").write_text(json.dumps(document, indent=4) + "\n", encoding="utf-8")
