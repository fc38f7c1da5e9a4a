"""Build a full-size random-weight Hugging Face checkpoint of Phi-3.5-mini-instruct (or Phi-3.5-vision).

The fixture folder ``tests/fixtures/phi-3.5-mini-instruct`` holds the real config and tokenizer
files but no weights. This script writes safetensors shards (~2 GB each) plus
``model.safetensors.index.json`` next to copies of those files, so that build time, peak memory,
artifact size and decode speed can be measured at the real scale. Random weights say nothing about
quality; they are only numerically sane (matrices ~ N(0, initializer_range), norm weights = 1).

Tensors are generated and streamed to disk one at a time (the safetensors header is computed up
front from the shapes), so peak RSS stays at roughly one tensor plus the torch/transformers imports.
Before writing, the tensor names and shapes are checked against transformers' ``Phi3ForCausalLM``
instantiated on the ``meta`` device. A ``.edgeslm-random-checkpoint.json`` marker, written last,
lets a re-run skip regeneration when the output is already complete.

Phi-3.5-vision: a config with ``architectures == ["Phi3VForCausalLM"]`` (or ``model_type`` ``phi3_v``),
e.g. ``--config-dir tests/fixtures/phi-3.5-vision-instruct``, is detected (``--vision`` only asserts it).
The checkpoint then holds the same Phi-3 text tensors plus the vision tensors under the real
checkpoint's names: ``model.vision_embed_tokens.img_processor.vision_model.*`` (the state dict of
``transformers.CLIPVisionModel`` for the config's CLIP shape, as ``edgeslm.builder.phi3v_config`` parses
it: ViT-L/14-336 for the real config; all 24 layers and ``post_layernorm``, as in the real checkpoint,
though the model uses ``hidden_states[-2]``), ``img_projection.{0,2}.{weight,bias}``, ``glb_GN`` and
``sub_GN``. The text names are checked against ``Phi3ForCausalLM`` on the text part of the config, the
CLIP names against ``CLIPVisionModel`` (both on the ``meta`` device), and all vision names against what
edgeslm's vision exporter reads. Random vision weights: matrices ~ N(0, initializer_range), LayerNorm
weights 1, biases 0, the class embedding ~ N(0, hidden**-0.5) (CLIP's init).

Usage: python benchmarks/make_random_checkpoint.py OUT_DIR [--config-dir DIR]
           [--dtype bfloat16|float16|float32] [--layers N] [--seed S] [--vision]
           [--vision-layers N]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
import zlib
from pathlib import Path

import torch

DEFAULT_CONFIG_DIR = Path(__file__).resolve().parents[1] / "tests/fixtures/phi-3.5-mini-instruct"
MARKER = ".edgeslm-random-checkpoint.json"
INDEX = "model.safetensors.index.json"
DTYPES = {"bfloat16": (torch.bfloat16, "BF16"), "float16": (torch.float16, "F16"), "float32": (torch.float32, "F32")}
VISION_PREFIX = "model.vision_embed_tokens."
CLIP_PREFIX = VISION_PREFIX + "img_processor."  # + CLIPVisionModel's state dict names ("vision_model.*")


def _use_checkout() -> None:
    """Import edgeslm (the vision config parser) from this checkout where it is not installed."""
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)


def is_vision_config(cfg: dict) -> bool:
    """A Phi-3(.5)-vision config (``Phi3VForCausalLM``), as edgeslm's exporter detects it."""
    return "Phi3VForCausalLM" in (cfg.get("architectures") or []) or cfg.get("model_type") == "phi3_v"


def expected_tensors(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every weight of Phi3ForCausalLM for this config (fused qkv and gate_up)."""
    h, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    n_heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or h // n_heads
    n_kv = cfg.get("num_key_value_heads") or n_heads
    shapes = {"model.embed_tokens.weight": (vocab, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes[p + "self_attn.qkv_proj.weight"] = ((n_heads + 2 * n_kv) * head_dim, h)
        shapes[p + "self_attn.o_proj.weight"] = (h, n_heads * head_dim)
        shapes[p + "mlp.gate_up_proj.weight"] = (2 * inter, h)
        shapes[p + "mlp.down_proj.weight"] = (h, inter)
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
    shapes["model.norm.weight"] = (h,)
    shapes["lm_head.weight"] = (vocab, h)
    return shapes


def check_against_transformers(cfg: dict, shapes: dict[str, tuple[int, ...]]) -> None:
    """Fail unless a meta-device Phi3ForCausalLM has exactly these state_dict names and shapes."""
    from transformers import Phi3Config, Phi3ForCausalLM

    with torch.device("meta"):
        model = Phi3ForCausalLM(Phi3Config(**cfg))
    actual = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if actual != shapes:
        missing, extra = sorted(shapes.keys() - actual.keys()), sorted(actual.keys() - shapes.keys())
        wrong = sorted(k for k in shapes.keys() & actual.keys() if shapes[k] != actual[k])
        raise RuntimeError(f"layout mismatch vs transformers: missing={missing[:5]} extra={extra[:5]} shape={wrong[:5]}")


def expected_vision_tensors(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every vision tensor of a Phi3VForCausalLM checkpoint for this config."""
    _use_checkout()
    from edgeslm.builder.phi3v_config import CROP_SIZE, PATCH_SIZE, parse_config

    vision = parse_config(cfg)
    clip = vision.vision_config
    c, f, h = int(clip["hidden_size"]), int(clip["intermediate_size"]), vision.hidden_size
    grid = CROP_SIZE // PATCH_SIZE
    p = CLIP_PREFIX + "vision_model."
    shapes = {p + "embeddings.class_embedding": (c,),
              p + "embeddings.patch_embedding.weight": (c, int(clip["num_channels"]), PATCH_SIZE, PATCH_SIZE),
              p + "embeddings.position_embedding.weight": (grid * grid + 1, c),
              p + "pre_layrnorm.weight": (c,), p + "pre_layrnorm.bias": (c,)}
    for i in range(vision.clip_layers):
        layer = f"{p}encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            shapes[f"{layer}self_attn.{proj}.weight"] = (c, c)
            shapes[f"{layer}self_attn.{proj}.bias"] = (c,)
        shapes[layer + "layer_norm1.weight"], shapes[layer + "layer_norm1.bias"] = (c,), (c,)
        shapes[layer + "mlp.fc1.weight"], shapes[layer + "mlp.fc1.bias"] = (f, c), (f,)
        shapes[layer + "mlp.fc2.weight"], shapes[layer + "mlp.fc2.bias"] = (c, f), (c,)
        shapes[layer + "layer_norm2.weight"], shapes[layer + "layer_norm2.bias"] = (c,), (c,)
    shapes[p + "post_layernorm.weight"], shapes[p + "post_layernorm.bias"] = (c,), (c,)
    merged = vision.merged_dim  # 4·C: the 2x2-merged patch features
    shapes.update({VISION_PREFIX + "img_projection.0.weight": (h, merged), VISION_PREFIX + "img_projection.0.bias": (h,),
                   VISION_PREFIX + "img_projection.2.weight": (h, h), VISION_PREFIX + "img_projection.2.bias": (h,),
                   VISION_PREFIX + "glb_GN": (1, 1, merged), VISION_PREFIX + "sub_GN": (1, 1, 1, merged)})
    return shapes


def check_vision_against_transformers(cfg: dict, shapes: dict[str, tuple[int, ...]]) -> None:
    """Fail unless the CLIP names/shapes equal a meta-device CLIPVisionModel's state dict (no position_ids
    buffer) and every tensor edgeslm's vision exporter reads is there with its shape."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from edgeslm.backends.onnx_genai.phi3v_export import vision_plan
    from edgeslm.builder.phi3v_config import parse_config

    vision = parse_config(cfg)
    with torch.device("meta"):
        model = CLIPVisionModel(CLIPVisionConfig(**vision.vision_config))
    actual = {CLIP_PREFIX + k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    clip = {k: v for k, v in shapes.items() if k.startswith(CLIP_PREFIX)}
    _compare(clip, actual, "CLIPVisionModel")
    needed = vision_plan(vision, "int8", "float32").needed_tensors()
    wrong = sorted(k for k, v in needed.items() if shapes.get(k) != tuple(v))
    if wrong:
        raise RuntimeError(f"vision tensors missing or of another shape than edgeslm's exporter reads: {wrong[:5]}")


def _compare(shapes: dict, actual: dict, what: str) -> None:
    if actual != shapes:
        missing, extra = sorted(shapes.keys() - actual.keys()), sorted(actual.keys() - shapes.keys())
        wrong = sorted(k for k in shapes.keys() & actual.keys() if shapes[k] != actual[k])
        raise RuntimeError(f"layout mismatch vs transformers {what}: missing={missing[:5]} extra={extra[:5]} "
                           f"shape={wrong[:5]}")


def make_tensor(name: str, shape: tuple[int, ...], dtype: torch.dtype, seed: int, std: float) -> torch.Tensor:
    if name.startswith(VISION_PREFIX):
        return make_vision_tensor(name, shape, dtype, seed, std)
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=dtype)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))  # order-independent
    return torch.empty(shape, dtype=dtype).normal_(0.0, std, generator=gen)


def make_vision_tensor(name: str, shape: tuple[int, ...], dtype: torch.dtype, seed: int, std: float) -> torch.Tensor:
    """CLIP's init, roughly: LayerNorm weights 1, biases 0, class embedding ~ N(0, C**-0.5), the rest ~ N(0, std)."""
    module = name.rsplit(".", 2)[-2]  # layer_norm1, pre_layrnorm, post_layernorm, fc1, ...
    if name.endswith(".weight") and "norm" in module:
        return torch.ones(shape, dtype=dtype)
    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=dtype)
    if name.endswith("class_embedding"):
        std = shape[-1] ** -0.5
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    return torch.empty(shape, dtype=dtype).normal_(0.0, std, generator=gen)


def plan_shards(shapes: dict, itemsize: int, shard_bytes: int) -> list[list[str]]:
    shards, size = [[]], 0
    for name, shape in shapes.items():
        nbytes = itemsize * _numel(shape)
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _is_complete(out_dir: Path, marker: dict) -> bool:
    try:
        if json.loads((out_dir / MARKER).read_text()) != marker:
            return False
        index = json.loads((out_dir / INDEX).read_text())
        return all((out_dir / f).is_file() for f in set(index["weight_map"].values()))
    except (OSError, ValueError, KeyError):
        return False


def make_random_checkpoint(config_dir: Path, out_dir: Path, dtype: str = "bfloat16", seed: int = 0,
                          shard_bytes: int = 2 * 1024**3, num_layers: int | None = None,
                          vision: bool | None = None, vision_layers: int | None = None) -> Path:
    """Write a random-weight Phi-3 (``vision``: Phi-3.5-vision; None = from the config) checkpoint to
    ``out_dir`` (skipped if already complete); return it."""
    start, config_dir, out_dir = time.perf_counter(), Path(config_dir), Path(out_dir)
    torch_dtype, st_dtype = DTYPES[dtype]
    raw_config = (config_dir / "config.json").read_bytes()
    cfg = json.loads(raw_config)
    if vision is not None and vision != is_vision_config(cfg):
        raise SystemExit(f"vision={vision} does not match {config_dir / 'config.json'}: architectures="
                         f"{cfg.get('architectures')} (a Phi3VForCausalLM config is written with its vision tensors)")
    vision = is_vision_config(cfg)
    if vision_layers is not None and not vision:
        raise SystemExit("--vision-layers applies to a Phi-3.5-vision checkpoint only")
    if num_layers is not None:
        cfg["num_hidden_layers"] = num_layers
    if vision_layers is not None:  # edgeslm's convention for scaled-down checkpoints: img_processor.vision_config
        cfg["img_processor"].setdefault("vision_config", {})["num_hidden_layers"] = vision_layers
    marker = {"config_sha256": hashlib.sha256(raw_config).hexdigest(), "dtype": dtype, "seed": seed,
              "layers": cfg["num_hidden_layers"]}
    if vision:  # only here, so that a text-only marker written before this option still matches
        marker.update(vision=True, vision_layers=vision_layers)
    if _is_complete(out_dir, marker):
        print(f"{out_dir}: complete random checkpoint already present, skipping")
        return out_dir

    if vision:
        _use_checkout()
        from edgeslm.builder.phi3v_config import text_config

        shapes = expected_tensors(cfg)
        check_against_transformers(text_config(cfg), shapes)
        vision_shapes = expected_vision_tensors(cfg)
        check_vision_against_transformers(cfg, vision_shapes)
        shapes.update(vision_shapes)
    else:
        shapes = expected_tensors(cfg)
        check_against_transformers(cfg, shapes)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).unlink(missing_ok=True)
    for stale in out_dir.glob("model*.safetensors*"):
        stale.unlink()
    for src in config_dir.iterdir():  # config, generation config, tokenizer files
        if src.is_file():
            (out_dir / src.name).unlink(missing_ok=True)  # sources may be read-only: copy content only
            shutil.copyfile(src, out_dir / src.name)
    if num_layers is not None or vision_layers is not None or cfg.get("torch_dtype") != dtype:
        cfg["torch_dtype"] = dtype
        (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")

    itemsize = torch.empty((), dtype=torch_dtype).element_size()
    std = float(cfg.get("initializer_range", 0.02))
    shards = plan_shards(shapes, itemsize, shard_bytes)
    weight_map, total = {}, 0
    for i, names in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name in names:
            nbytes = itemsize * _numel(shapes[name])
            header[name] = {"dtype": st_dtype, "shape": list(shapes[name]), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # safetensors pads the header to 8 bytes
        with open(out_dir / fname, "wb") as f:
            f.write(len(blob).to_bytes(8, "little") + blob)
            for name in names:
                t = make_tensor(name, shapes[name], torch_dtype, seed, std)
                f.write(t.view(torch.uint8).numpy().data)
                weight_map[name] = fname
                del t
        total += offset

    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    (out_dir / MARKER).write_text(json.dumps(marker, indent=2) + "\n")  # last: marks completion
    n_params = sum(_numel(s) for s in shapes.values())
    n_vision = sum(_numel(s) for k, s in shapes.items() if k.startswith(VISION_PREFIX))
    kind = f" ({n_vision:,} of them vision)" if vision else ""
    print(f"wrote {out_dir}: {n_params:,} params{kind}, {total:,} bytes ({total / 1e9:.2f} GB) in "
          f"{len(shards)} shards, {dtype}, {time.perf_counter() - start:.1f} s")
    return out_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    ap.add_argument("--layers", type=int, default=None, help="override num_hidden_layers (quick tests)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vision", action="store_true", default=None,
                    help="require a Phi-3.5-vision config (Phi3VForCausalLM); it is detected without this flag")
    ap.add_argument("--vision-layers", type=int, default=None,
                    help="override the CLIP tower's num_hidden_layers (quick tests; vision only)")
    args = ap.parse_args()
    make_random_checkpoint(args.config_dir, args.out_dir, args.dtype, args.seed, num_layers=args.layers,
                           vision=args.vision, vision_layers=args.vision_layers)


if __name__ == "__main__":
    main()
