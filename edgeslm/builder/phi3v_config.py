"""Phi-3(.5)-vision checkpoint configuration: parsed, checked against what edgeslm implements, frozen.

A ``Phi3VForCausalLM`` checkpoint (``model_type`` ``phi3_v``) is a Phi-3 text decoder plus the
``embd_layer`` / ``img_processor`` blocks of the hub's ``Phi3ImageEmbedding``: a CLIP ViT image tower,
its ``hidden_states[layer_idx]`` patch features (class token dropped), the HD transform (2×2 merge of
24×24 patches into 144 tokens of 4·C features per 336×336 crop, sub-crops then ``glb_GN`` then the
global crop, a ``sub_GN`` newline after each row) and an MLP projection to the text hidden size.

``img_processor.vision_config`` (edgeslm's convention for scaled-down test checkpoints) holds
``CLIPVisionConfig`` fields; missing fields -- or no ``vision_config`` at all, as in the real
checkpoint -- mean CLIP ViT-L/14-336 (:data:`CLIP_VIT_L_336`).

Only one variant is implemented (the one Phi-3.5-vision-instruct uses): image embedding, MLP
projection, HD transform in ``sub_glb`` order with learnable separators, CLIP at 336 px / patch 14.
Anything else is refused with a one-line :class:`~edgeslm.errors.ModelSourceError` naming the key
and its value, rather than computed wrongly. The hub's defaults apply to missing ``embd_layer`` keys
(``use_hd_transform`` false, ``hd_transform_order`` ``glb_sub``, ``projection_cls`` ``linear``, no
learnable separator), so a config that leaves them out is refused too.

Standard library only: the torch-free ONNX exporter uses it as well.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelSourceError

MODEL_TYPE = "phi3_v"
CROP_SIZE = 336
PATCH_SIZE = 14
TOKENS_PER_CROP = ((CROP_SIZE // PATCH_SIZE) // 2) ** 2  # 24x24 patches merged 2x2: 144

# CLIPVisionConfig fields of openai/clip-vit-large-patch14-336, the real checkpoint's image tower.
CLIP_VIT_L_336: dict[str, Any] = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 768,
    "image_size": CROP_SIZE,
    "patch_size": PATCH_SIZE,
    "num_channels": 3,
}

# Keys of the vision model that a text-only Phi3 config must not carry.
VISION_KEYS = ("embd_layer", "img_processor", "auto_map", "vision_config")

_INT_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "projection_dim",
               "image_size", "patch_size", "num_channels")


@dataclass(frozen=True)
class Phi3VisionConfig:
    """What edgeslm needs of a Phi-3(.5)-vision config (see the module docstring)."""

    raw: dict[str, Any] = field(repr=False, compare=False)  # the whole checkpoint config (a private copy)
    vision_config: dict[str, Any]  # CLIPVisionConfig(**vision_config) builds the image tower
    image_dim_out: int  # CLIP hidden size C; merged tokens have 4·C features
    num_img_tokens: int  # tokens per crop after the 2x2 merge (144)
    layer_idx: int  # index into CLIP's hidden_states (embeddings output first): -2 = penultimate layer
    type_feature: str  # "patch": class token dropped
    hd_transform_order: str  # "sub_glb"
    with_learnable_separator: bool
    projection_cls: str  # "mlp"
    embedding_cls: str  # "image"
    hidden_size: int  # text decoder width: img_projection's output
    vocab_size: int

    @property
    def clip_layers(self) -> int:
        return int(self.vision_config["num_hidden_layers"])

    @property
    def clip_layers_run(self) -> int:
        """Encoder layers the feature layer needs: its non-negative index in ``hidden_states``."""
        return self.layer_idx % (self.clip_layers + 1)

    @property
    def merged_dim(self) -> int:
        return 4 * self.image_dim_out

    def text_config(self) -> dict[str, Any]:
        return text_config(self.raw)

    @staticmethod
    def image_tokens(h_crops: int, w_crops: int) -> int:
        """Image tokens of an image of h×w sub-crops: the crops, the global one, ``glb_GN``, the newlines."""
        return (h_crops * w_crops + 1) * TOKENS_PER_CROP + 1 + (h_crops + 1) * (CROP_SIZE // PATCH_SIZE // 2)


def is_vision_checkpoint(config: dict[str, Any]) -> bool:
    """Whether a checkpoint config is a Phi-3(.5)-vision one (by architecture or model type)."""
    return "Phi3VForCausalLM" in (config.get("architectures") or []) or config.get("model_type") == MODEL_TYPE


def load_config(checkpoint: Path) -> Phi3VisionConfig:
    """Read and check ``checkpoint/config.json``."""
    path = Path(checkpoint) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelSourceError(f"no config.json in {checkpoint}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelSourceError(f"cannot read {path}: {exc}") from None
    if not isinstance(config, dict):
        raise ModelSourceError(f"{path} is not a JSON object")
    return parse_config(config)


def parse_config(config: dict[str, Any]) -> Phi3VisionConfig:
    """Check a Phi-3(.5)-vision config dict and return its frozen, parsed form."""
    if not isinstance(config, dict):
        raise ModelSourceError(f"a Phi-3.5-vision config must be a JSON object, not {type(config).__name__}")
    _expect(config.get("model_type"), MODEL_TYPE, "model_type")
    hidden_size = _positive_int(config, "hidden_size", "")
    vocab_size = _positive_int(config, "vocab_size", "")

    embd = _block(config, "embd_layer")
    embedding_cls = embd.get("embedding_cls")
    _expect(embedding_cls, "image", "embd_layer.embedding_cls")
    _expect(embd.get("projection_cls", "linear"), "mlp", "embd_layer.projection_cls")
    _expect(embd.get("use_hd_transform", False), True, "embd_layer.use_hd_transform")
    _expect(embd.get("hd_transform_order", "glb_sub"), "sub_glb", "embd_layer.hd_transform_order")
    _expect(embd.get("with_learnable_separator", False), True, "embd_layer.with_learnable_separator")

    img = _block(config, "img_processor")
    _expect(img.get("name"), "clip_vision_model", "img_processor.name")
    given = img.get("vision_config", {})
    if not isinstance(given, dict):
        raise ModelSourceError(f"img_processor.vision_config = {given!r} is not a JSON object of CLIPVisionConfig fields")
    vision = {**CLIP_VIT_L_336, **copy.deepcopy(given)}
    for name in _INT_FIELDS:
        _positive_int(vision, name, "img_processor.vision_config.")
    _expect(vision["image_size"], CROP_SIZE, "img_processor.vision_config.image_size")
    _expect(vision["patch_size"], PATCH_SIZE, "img_processor.vision_config.patch_size")
    _expect(vision["num_channels"], 3, "img_processor.vision_config.num_channels")
    if vision["hidden_size"] % vision["num_attention_heads"]:
        raise ModelSourceError(f"img_processor.vision_config.hidden_size = {vision['hidden_size']} is not a multiple of "
                               f"num_attention_heads = {vision['num_attention_heads']}")
    if not isinstance(vision.get("hidden_act"), str):
        raise ModelSourceError(f"img_processor.vision_config.hidden_act = {vision.get('hidden_act')!r} is not a name")
    eps = vision.get("layer_norm_eps")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ModelSourceError(f"img_processor.vision_config.layer_norm_eps = {eps!r} is not a positive number")

    image_dim_out = img.get("image_dim_out")
    if image_dim_out != vision["hidden_size"] or isinstance(image_dim_out, bool):
        raise ModelSourceError(f"img_processor.image_dim_out = {image_dim_out!r} must equal the CLIP hidden size "
                               f"{vision['hidden_size']} (img_processor.vision_config.hidden_size)")
    num_img_tokens = img.get("num_img_tokens", TOKENS_PER_CROP)
    _expect(num_img_tokens, TOKENS_PER_CROP, "img_processor.num_img_tokens")
    type_feature = img.get("type_feature", "patch")
    _expect(type_feature, "patch", "img_processor.type_feature")
    layer_idx = img.get("layer_idx", -2)
    layers = vision["num_hidden_layers"]
    if isinstance(layer_idx, bool) or not isinstance(layer_idx, int) or not -(layers + 1) <= layer_idx <= layers:
        raise ModelSourceError(f"img_processor.layer_idx = {layer_idx!r} is not an index into CLIP's {layers + 1} "
                               f"hidden states")
    return Phi3VisionConfig(
        raw=copy.deepcopy(config), vision_config=vision, image_dim_out=int(image_dim_out),
        num_img_tokens=int(num_img_tokens), layer_idx=layer_idx, type_feature=type_feature,
        hd_transform_order="sub_glb", with_learnable_separator=True, projection_cls="mlp",
        embedding_cls=embedding_cls, hidden_size=hidden_size, vocab_size=vocab_size)


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The text decoder's config: a ``phi3`` / ``Phi3ForCausalLM`` dict for ``transformers.Phi3Config(**...)``."""
    text = {k: copy.deepcopy(v) for k, v in config.items() if k not in VISION_KEYS}
    text["model_type"] = "phi3"
    text["architectures"] = ["Phi3ForCausalLM"]
    return text


def _block(config: dict[str, Any], key: str) -> dict[str, Any]:
    block = config.get(key)
    if not isinstance(block, dict):
        raise ModelSourceError(f"{key} = {block!r}: a Phi-3.5-vision config needs the {key} object")
    return block


def _expect(value: Any, wanted: Any, key: str) -> None:
    if value != wanted or type(value) is not type(wanted):
        raise ModelSourceError(f"unsupported Phi-3.5-vision config: {key} = {_show(value)} "
                               f"(edgeslm implements {_show(wanted)} only)")


def _positive_int(block: dict[str, Any], key: str, where: str) -> int:
    value = block.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelSourceError(f"{where}{key} = {_show(value)} is not a positive integer")
    return value


def _show(value: Any) -> str:
    return json.dumps(value, default=repr)
