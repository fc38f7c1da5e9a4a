"""edgeslm's own torch reference of Phi-3.5-vision, its config checks and the vision answer scoring.

The trained fixture ``examples/models/phi35v-shapes-tiny`` must give the answers its README lists
(greedy, fp32) and at least 97% on ``tests/fixtures/eval/vision-dev`` (slow). Tiny random checkpoints
made here (never committed) cover strict loading, sharded checkpoints, the HD token layout against a
transcription of the hub's ``Phi3ImageEmbedding`` and where the image features are written.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES, REPO, import_blocker
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Tokenizer

from edgeslm.builder.phi3v_config import CLIP_VIT_L_336, Phi3VisionConfig, load_config, parse_config, text_config
from edgeslm.builder.phi3v_reference import Phi3VisionReference, add_image_newline, reshape_hd_patches_2x2merge
from edgeslm.builder.vision_accuracy import (
    VisionQuestion,
    answer_words,
    is_right,
    load_questions,
    score_answers,
    vision_prompt,
)
from edgeslm.errors import ModelSourceError, UsageError
from edgeslm.vision.image_prompt import expand_image_prompt
from edgeslm.vision.phi3v_processor import preprocess

VISION_MODEL = REPO / "examples" / "models" / "phi35v-shapes-tiny"
REAL_CONFIG = FIXTURES / "phi-3.5-vision-instruct" / "config.json"
IMAGES = FIXTURES / "images"
DEV = FIXTURES / "eval" / "vision-dev"
END = 32007

# The README's prompt for "How many shapes are there?" on a 2x2-crop image (757 image tokens): 774 ids.
COUNT_PROMPT = [1, 32010, 29871, 13, *[-1] * 757, 1, 29871, 13, 5328, 1784, 25834, 526, 727, 29973, 32007, 29871, 13,
                32001]


def fixture_config() -> dict:
    return json.loads((VISION_MODEL / "config.json").read_text())


# ---- shared helpers --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_file(str(VISION_MODEL / "tokenizer.json"))


def encoder(tokenizer: Tokenizer):
    return lambda text: tokenizer.encode(text, add_special_tokens=True).ids


@pytest.fixture(scope="module")
def reference() -> Phi3VisionReference:
    return Phi3VisionReference.load(VISION_MODEL)


def ask(reference: Phi3VisionReference, tokenizer: Tokenizer, image: Path, question: str) -> tuple[str, list[int]]:
    """The greedy answer (special tokens dropped) and its ids, for one question about one image."""
    processed = preprocess([Image.open(image)])
    ids = expand_image_prompt(vision_prompt(question), encoder(tokenizer), processed.num_img_tokens)
    out = reference.generate(ids, processed.pixel_values, processed.image_sizes)
    return tokenizer.decode(out, skip_special_tokens=True), out


# ---- config ----------------------------------------------------------------------------------------------

def test_fixture_config_is_parsed():
    config = parse_config(fixture_config())
    assert isinstance(config, Phi3VisionConfig)
    vision = config.vision_config
    assert (vision["hidden_size"], vision["num_hidden_layers"], vision["num_attention_heads"],
            vision["intermediate_size"]) == (128, 4, 4, 256)
    assert (vision["image_size"], vision["patch_size"], vision["hidden_act"]) == (336, 14, "quick_gelu")
    assert (config.image_dim_out, config.merged_dim, config.num_img_tokens) == (128, 512, 144)
    assert (config.layer_idx, config.clip_layers_run, config.type_feature) == (-2, 3, "patch")
    assert (config.hd_transform_order, config.with_learnable_separator) == ("sub_glb", True)
    assert (config.projection_cls, config.embedding_cls) == ("mlp", "image")
    assert (config.hidden_size, config.vocab_size) == (256, 32064)
    assert config.raw == fixture_config()
    assert [config.image_tokens(h, w) for h, w in ((2, 2), (4, 1), (2, 1), (1, 2))] == [757, 781, 469, 457]


def test_real_config_defaults_to_clip_vit_l_336():
    config = load_config(REAL_CONFIG.parent)
    assert config.vision_config == CLIP_VIT_L_336
    assert CLIP_VIT_L_336 == {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                              "num_attention_heads": 16, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
                              "projection_dim": 768, "image_size": 336, "patch_size": 14, "num_channels": 3}
    assert (config.image_dim_out, config.layer_idx, config.clip_layers_run, config.hidden_size) == (1024, -2, 23, 3072)


def test_partial_vision_config_takes_the_remaining_fields_from_vit_l():
    raw = fixture_config()
    raw["img_processor"]["vision_config"] = {"hidden_size": 128, "num_attention_heads": 4}
    raw["img_processor"]["layer_idx"] = -1
    config = parse_config(raw)
    assert config.vision_config == {**CLIP_VIT_L_336, "hidden_size": 128, "num_attention_heads": 4}
    assert config.clip_layers_run == 24


def test_parsed_config_is_a_private_copy():
    raw = fixture_config()
    config = parse_config(raw)
    raw["img_processor"]["vision_config"]["hidden_size"] = 999
    raw["hidden_size"] = 999
    assert config.vision_config["hidden_size"] == 128 and config.raw["hidden_size"] == 256
    with pytest.raises(AttributeError):
        config.layer_idx = -1


def test_text_config_builds_a_phi3_config():
    from transformers import Phi3Config

    raw = fixture_config()
    text = text_config(raw)
    assert text["model_type"] == "phi3" and text["architectures"] == ["Phi3ForCausalLM"]
    assert "img_processor" not in text and "embd_layer" not in text
    assert raw["model_type"] == "phi3_v" and "img_processor" in raw  # the input is left alone
    parsed = parse_config(raw)
    assert text == parsed.text_config()
    phi3 = Phi3Config(**parsed.text_config())  # (Phi3Config edits the rope_scaling dict it is given)
    assert (phi3.model_type, phi3.hidden_size, phi3.num_hidden_layers, phi3.vocab_size) == ("phi3", 256, 3, 32064)
    assert phi3.tie_word_embeddings is False
    assert parsed.text_config() == text and parsed.raw == raw  # each call gives a fresh copy


def _set(path: str, value):
    def change(config: dict) -> None:
        *parents, last = path.split(".")
        block = config
        for key in parents:
            block = block[key]
        if value is _DELETE:
            del block[last]
        else:
            block[last] = value
    return change


_DELETE = object()

REFUSALS = [
    ("model_type", "phi3", "model_type = \"phi3\""),
    ("embd_layer.embedding_cls", "audio", "embd_layer.embedding_cls = \"audio\""),
    ("embd_layer.projection_cls", "linear", "embd_layer.projection_cls = \"linear\""),
    ("embd_layer.projection_cls", _DELETE, "embd_layer.projection_cls = \"linear\""),  # the hub's default
    ("embd_layer.use_hd_transform", False, "embd_layer.use_hd_transform = false"),
    ("embd_layer.use_hd_transform", _DELETE, "embd_layer.use_hd_transform = false"),
    ("embd_layer.hd_transform_order", "glb_sub", "embd_layer.hd_transform_order = \"glb_sub\""),
    ("embd_layer.with_learnable_separator", False, "embd_layer.with_learnable_separator = false"),
    ("embd_layer", _DELETE, "embd_layer = None"),
    ("img_processor", _DELETE, "img_processor = None"),
    ("img_processor.name", "siglip_vision_model", "img_processor.name = \"siglip_vision_model\""),
    ("img_processor.image_dim_out", 1024, "img_processor.image_dim_out = 1024"),
    ("img_processor.num_img_tokens", 256, "img_processor.num_img_tokens = 256"),
    ("img_processor.type_feature", "cls_patch", "img_processor.type_feature = \"cls_patch\""),
    ("img_processor.layer_idx", 5, "img_processor.layer_idx = 5"),
    ("img_processor.vision_config", "clip", "img_processor.vision_config = 'clip'"),
    ("img_processor.vision_config.image_size", 224, "img_processor.vision_config.image_size = 224"),
    ("img_processor.vision_config.patch_size", 16, "img_processor.vision_config.patch_size = 16"),
    ("img_processor.vision_config.num_attention_heads", 3, "num_attention_heads = 3"),
    ("img_processor.vision_config.num_hidden_layers", 0, "img_processor.vision_config.num_hidden_layers = 0"),
    ("hidden_size", "256", "hidden_size = \"256\""),
]


@pytest.mark.parametrize(("path", "value", "fragment"), REFUSALS, ids=[f"{p}={v!r}" for p, v, _ in REFUSALS])
def test_unsupported_configs_are_refused(tmp_path, path, value, fragment):
    config = fixture_config()
    _set(path, value)(config)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelSourceError) as caught:
        load_config(tmp_path)
    message = caught.value.one_line()
    assert fragment in message and "\n" not in message, message
    assert path.split(".")[-1] in message


def test_reference_refuses_an_unsupported_config_before_reading_weights(tmp_path):
    config = fixture_config()
    config["embd_layer"]["hd_transform_order"] = "glb_sub"
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").symlink_to(VISION_MODEL / "model.safetensors")
    with pytest.raises(ModelSourceError, match="hd_transform_order"):
        Phi3VisionReference.load(tmp_path)


def test_missing_or_broken_config_json(tmp_path):
    with pytest.raises(ModelSourceError, match="no config.json"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelSourceError, match="cannot read"):
        load_config(tmp_path)


def test_config_and_scoring_modules_need_only_the_standard_library(tmp_path):
    code = ("import edgeslm.builder.phi3v_config as c, edgeslm.builder.vision_accuracy as v, json, pathlib;"
            f"cfg = c.load_config(pathlib.Path({str(VISION_MODEL)!r}));"
            f"qs = v.load_questions(pathlib.Path({str(DEV)!r}));"
            "print(cfg.vision_config['hidden_size'], len(qs))")
    env = {**os.environ, **import_blocker(tmp_path, "torch", "numpy", "transformers", "PIL", "safetensors", "tokenizers")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["128", "118"]


# ---- tiny random checkpoints -----------------------------------------------------------------------------

def tiny_config() -> dict:
    """The fixture's config scaled further down (random weights): text 128 wide, CLIP 32 wide."""
    config = fixture_config()
    config.update(hidden_size=128, intermediate_size=96, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=2, vocab_size=1000, pad_token_id=0)  # head_dim 64: the LongRoPE factors fit
    config["img_processor"]["image_dim_out"] = 32
    config["img_processor"]["vision_config"].update(hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                                    num_attention_heads=2, projection_dim=32)
    return config


def random_tensors(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Checkpoint tensors (names as in the real checkpoint) of random weights for ``config``."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, Phi3Config, Phi3ForCausalLM

    parsed = parse_config(config)
    torch.manual_seed(seed)
    clip = CLIPVisionModel(CLIPVisionConfig(**parsed.vision_config))
    text = Phi3ForCausalLM(Phi3Config(**text_config(config)))
    c4, hidden = parsed.merged_dim, parsed.hidden_size
    tensors = {f"model.vision_embed_tokens.img_processor.{k}": v for k, v in clip.state_dict().items()}
    tensors.update(text.state_dict())
    tensors.update({
        "model.vision_embed_tokens.img_projection.0.weight": torch.randn(hidden, c4) * 0.05,
        "model.vision_embed_tokens.img_projection.0.bias": torch.randn(hidden) * 0.05,
        "model.vision_embed_tokens.img_projection.2.weight": torch.randn(hidden, hidden) * 0.05,
        "model.vision_embed_tokens.img_projection.2.bias": torch.randn(hidden) * 0.05,
        "model.vision_embed_tokens.glb_GN": torch.randn(1, 1, c4),
        "model.vision_embed_tokens.sub_GN": torch.randn(1, 1, 1, c4),
    })
    return {k: v.detach().clone().contiguous() for k, v in tensors.items()}


def write_checkpoint(folder: Path, config: dict, tensors: dict[str, torch.Tensor], shards: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    if shards == 1:
        save_file(tensors, str(folder / "model.safetensors"))
        return folder
    names = sorted(tensors)
    weight_map = {}
    for i in range(shards):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[i::shards]}
        save_file(part, str(folder / fname))
        weight_map.update(dict.fromkeys(part, fname))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[dict, dict[str, torch.Tensor]]:
    config = tiny_config()
    return config, random_tensors(config)


@pytest.fixture(scope="module")
def tiny_reference(tiny, tmp_path_factory) -> Phi3VisionReference:
    config, tensors = tiny
    return Phi3VisionReference.load(write_checkpoint(tmp_path_factory.mktemp("tiny"), config, tensors))


def random_pixels(images: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((images, 5, 3, 336, 336)).astype(np.float32)


def hub_image_embedding(reference: Phi3VisionReference, pixel_values: np.ndarray, image_sizes) -> torch.Tensor:
    """A transcription of the HD branch of the hub's ``Phi3ImageEmbedding.forward`` (sub_glb), on the
    reference's own CLIP features and projection: an independent check of the token layout."""
    img_features = torch.from_numpy(reference.crop_features(pixel_values))  # [bs, crops, 576, C]
    bs, C, H = img_features.shape[0], img_features.shape[-1], 24
    glb_GN, sub_GN = reference.glb_gn, reference.sub_gn  # noqa: N806 - the hub's names
    output_imgs = []
    for _bs in range(bs):
        h, w = image_sizes[_bs]
        h, w = int(h) // 336, int(w) // 336
        B_ = h * w  # noqa: N806
        global_img_feature = img_features[_bs, :1]
        glb_img = global_img_feature.reshape(1, H, H, C).reshape(1, H // 2, 2, H // 2, 2, C).contiguous() \
            .permute(0, 1, 3, 2, 4, 5).reshape(1, H // 2 * H // 2, 4 * C).contiguous()
        temp_glb_GN = sub_GN.repeat(1, H // 2, 1, 1)  # noqa: N806
        glb_img = torch.cat([glb_img.reshape(1, H // 2, H // 2, 4 * C), temp_glb_GN], dim=2).reshape(1, -1, 4 * C)
        sub_img = img_features[_bs, 1:][:B_]
        sub_img = sub_img.reshape(B_, H, H, C).reshape(B_, H // 2, 2, H // 2, 2, C).contiguous() \
            .permute(0, 1, 3, 2, 4, 5).reshape(B_, -1, 4 * C).contiguous()
        sub_img = sub_img.reshape(1, h, w, 12, 12, -1).permute(0, 1, 3, 2, 4, 5).reshape(1, h * 12, w * 12, 4 * C)
        temp_sub_GN = sub_GN.repeat(1, h * 12, 1, 1)  # noqa: N806
        sub_img = torch.cat([sub_img, temp_sub_GN], dim=2).reshape(1, -1, 4 * C)
        output_imgs.append(torch.cat([sub_img, glb_GN, glb_img], dim=1))
    with torch.inference_mode():
        return torch.cat([reference.projection(img)[0] for img in output_imgs])


def test_image_features_follow_the_hub_layout(tiny_reference):
    pixels = random_pixels(3)
    sizes = np.array([[672, 672], [336, 1344], [1008, 336]], dtype=np.int64)  # 2x2, 1x4, 3x1 crops
    features = tiny_reference.image_features(pixels, sizes)
    assert features.shape == (757 + 745 + 625, 128) and features.dtype == np.float32
    assert tiny_reference.image_token_counts(sizes) == [757, 745, 625]
    np.testing.assert_allclose(features, hub_image_embedding(tiny_reference, pixels, sizes).numpy(), rtol=0, atol=1e-5)
    # one image alone gives its own slice; the unused (padding) crops are never read
    pixels[2, 4:] = 1e3  # the 3x1 image's fifth crop
    alone = tiny_reference.image_features(pixels[2:], sizes[2:])
    np.testing.assert_allclose(alone, features[757 + 745:], rtol=0, atol=1e-5)


def test_crop_features_are_the_penultimate_layer_without_post_layernorm(tiny, tiny_reference):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config, tensors = tiny
    vision = parse_config(config).vision_config
    prefix = "model.vision_embed_tokens.img_processor."
    truncated = CLIPVisionModel(CLIPVisionConfig(**{**vision, "num_hidden_layers": vision["num_hidden_layers"] - 1}))
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing, unexpected = truncated.load_state_dict(state, strict=False)
    assert not missing and all(".layers.2." in k for k in unexpected)
    pixels = random_pixels(1)[0, :2]
    with torch.inference_mode():
        expected = truncated(torch.from_numpy(pixels)).last_hidden_state[:, 1:].numpy()
    got = tiny_reference.crop_features(pixels)
    assert got.shape == (2, 576, 32)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_the_last_clip_layer_and_post_layernorm_are_never_read(tiny, tmp_path):
    config, tensors = tiny
    reference = Phi3VisionReference.load(write_checkpoint(tmp_path / "ckpt", config, tensors))
    pixels, sizes = random_pixels(1), np.array([[336, 672]])
    before = reference.image_features(pixels, sizes)
    with torch.no_grad():
        for name, param in reference.clip.named_parameters():
            if ".layers.2." in name or "post_layernorm" in name:
                param.mul_(-50).add_(3)
    np.testing.assert_array_equal(reference.image_features(pixels, sizes), before)


def test_hd_helpers_on_a_numbered_grid():
    # 2 crops (1x2 grid) whose feature at patch (r, c) is (crop, r, c): the merge and layout are readable
    crop, r, c = torch.meshgrid(torch.arange(2.0), torch.arange(24.0), torch.arange(24.0), indexing="ij")
    feats = torch.stack([crop, r, c], dim=-1).reshape(2, 576, 3)
    grid = reshape_hd_patches_2x2merge(feats, 1, 2)
    assert grid.shape == (1, 12, 24, 12)
    # token (row 1, col 13): crop 1, merged block (1, 1): patches (2,2) (2,3) (3,2) (3,3)
    assert grid[0, 1, 13].reshape(4, 3).tolist() == [[1, 2, 2], [1, 2, 3], [1, 3, 2], [1, 3, 3]]
    newline = torch.full((1, 1, 1, 12), -7.0)
    rows = add_image_newline(grid, newline)
    assert rows.shape == (1, 12 * 25, 12)
    assert bool((rows[0, 24::25] == -7).all()) and not bool((rows[0, :24] == -7).any())


def test_image_features_are_written_at_the_negative_ids_in_order(tiny_reference):
    pixels, sizes = random_pixels(2), np.array([[672, 336], [336, 672]])  # 2x1 and 1x2 crops: 469 and 457 tokens
    features = tiny_reference.image_features(pixels, sizes)
    assert features.shape == (469 + 457, 128)
    ids = [1, 5, *[-1] * 469, 7, 8, *[-2] * 457, 9]
    embeds = tiny_reference.input_embeds(ids, pixels, sizes)
    table = tiny_reference.text.get_input_embeddings().weight.detach().numpy()
    np.testing.assert_array_equal(embeds[2:471], features[:469])
    np.testing.assert_array_equal(embeds[473:930], features[469:])
    np.testing.assert_array_equal(embeds[[0, 1, 471, 472, 930]], table[[1, 5, 7, 8, 9]])
    np.testing.assert_array_equal(tiny_reference.input_embeds(ids, image_features=features), embeds)
    np.testing.assert_allclose(tiny_reference.logits(ids, image_features=features),
                               tiny_reference.logits(ids, pixels, sizes), rtol=0, atol=1e-5)


def test_prompt_and_images_must_agree(tiny_reference):
    pixels, sizes = random_pixels(1), np.array([[672, 336]])
    with pytest.raises(UsageError, match="469 image tokens|features \\[469"):
        tiny_reference.logits([1, *[-1] * 468, 2], pixels, sizes)
    with pytest.raises(UsageError, match="no images"):
        tiny_reference.logits([1, -1, 2])
    with pytest.raises(UsageError, match="not a grid of 336"):
        tiny_reference.image_features(pixels, np.array([[672, 300]]))
    with pytest.raises(UsageError, match="needs 7 crops"):
        tiny_reference.image_features(pixels, np.array([[672, 1008]]))
    with pytest.raises(UsageError, match="pixel_values has shape"):
        tiny_reference.image_features(pixels[:, :, :, :224], sizes)
    with pytest.raises(UsageError, match="outside the vocabulary"):
        tiny_reference.logits([1, 1000])


def test_text_part_equals_transformers_phi3(tiny, tiny_reference):
    from transformers import Phi3Config, Phi3ForCausalLM

    config, tensors = tiny
    phi3 = Phi3ForCausalLM(Phi3Config(**text_config(config))).eval()
    phi3.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("model.vision_embed_tokens.")})
    ids = [1, 17, 400, 3, 999, 12]
    with torch.inference_mode():
        expected = phi3(input_ids=torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(tiny_reference.logits(ids), expected, rtol=0, atol=1e-5)


def test_sharded_checkpoint_loads_the_same(tiny, tiny_reference, tmp_path):
    config, tensors = tiny
    sharded = Phi3VisionReference.load(write_checkpoint(tmp_path / "sharded", config, tensors, shards=3))
    pixels, sizes = random_pixels(1), np.array([[672, 672]])
    np.testing.assert_array_equal(sharded.image_features(pixels, sizes), tiny_reference.image_features(pixels, sizes))
    ids = [1, *[-1] * 757, 42]
    np.testing.assert_array_equal(sharded.logits(ids, pixels, sizes), tiny_reference.logits(ids, pixels, sizes))


def _without(tensors: dict, *names: str) -> dict:
    return {k: v for k, v in tensors.items() if k not in names}


STRICT_CASES = [
    ("missing text tensor", lambda t: _without(t, "model.layers.0.mlp.down_proj.weight"),
     ["missing model.layers.0.mlp.down_proj.weight"]),
    ("missing lm_head", lambda t: _without(t, "lm_head.weight"), ["missing lm_head.weight"]),
    ("missing clip tensor", lambda t: _without(t, "model.vision_embed_tokens.img_processor.vision_model."
                                                  "encoder.layers.2.mlp.fc2.bias"),
     ["missing model.vision_embed_tokens.img_processor.vision_model.encoder.layers.2.mlp.fc2.bias"]),
    ("missing post_layernorm", lambda t: _without(t, "model.vision_embed_tokens.img_processor.vision_model."
                                                     "post_layernorm.weight"), ["post_layernorm.weight"]),
    ("missing separator", lambda t: _without(t, "model.vision_embed_tokens.sub_GN"),
     ["missing model.vision_embed_tokens.sub_GN"]),
    ("missing projection", lambda t: _without(t, "model.vision_embed_tokens.img_projection.2.bias"),
     ["missing model.vision_embed_tokens.img_projection.2.bias"]),
    ("unexpected tensors", lambda t: {**t, "model.vision_embed_tokens.img_projection.4.weight": torch.zeros(2),
                                      "model.layers.1.mlp.down_proj.weight": torch.zeros(2)},
     ["unexpected model.vision_embed_tokens.img_projection.4.weight", "unexpected model.layers.1.mlp.down_proj.weight"]),
    ("wrong shape", lambda t: {**t, "model.vision_embed_tokens.glb_GN": torch.zeros(1, 1, 64)},
     ["model.vision_embed_tokens.glb_GN has shape (1, 1, 64), expected (1, 1, 128)"]),
]


@pytest.mark.parametrize(("change", "fragments"), [c[1:] for c in STRICT_CASES], ids=[c[0] for c in STRICT_CASES])
def test_loading_is_strict(tiny, tmp_path, change, fragments):
    config, tensors = tiny
    folder = write_checkpoint(tmp_path / "ckpt", config, change(dict(tensors)))
    with pytest.raises(ModelSourceError) as caught:
        Phi3VisionReference.load(folder)
    message = caught.value.one_line()
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_a_checkpoint_narrower_than_its_config_is_refused_by_shape(tiny, tmp_path):
    """A config whose CLIP is wider than the checkpoint's: the first shape mismatches are named, the rest counted."""
    config, tensors = tiny
    wider = copy.deepcopy(config)
    wider["img_processor"]["vision_config"]["hidden_size"] = 64
    wider["img_processor"]["image_dim_out"] = 64
    with pytest.raises(ModelSourceError, match=r"has shape .*expected .*and \d+ more"):
        Phi3VisionReference.load(write_checkpoint(tmp_path / "ckpt", wider, tensors))


def test_no_or_broken_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(tiny_config()))
    with pytest.raises(ModelSourceError, match="no model.safetensors or model.safetensors.index.json"):
        Phi3VisionReference.load(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}..")
    with pytest.raises(ModelSourceError, match="cannot read"):
        Phi3VisionReference.load(tmp_path)


def test_bf16_reference_loads_bf16_weights(tiny, tmp_path):
    config, tensors = tiny
    reference = Phi3VisionReference.load(write_checkpoint(tmp_path / "ckpt", config, tensors), dtype=torch.bfloat16)
    assert {p.dtype for p in reference.text.parameters()} == {torch.bfloat16}
    assert reference.text.model.rotary_emb.inv_freq.dtype == torch.float32  # buffers stay as transformers made them
    features = reference.image_features(random_pixels(1), np.array([[672, 672]]))
    assert features.dtype == np.float32 and features.shape == (757, 128)


# ---- the trained fixture ---------------------------------------------------------------------------------

def test_the_readme_prompt_is_774_ids(tokenizer):
    assert tokenizer.encode("<|user|>\n", add_special_tokens=True).ids[0] == 1  # the encoder adds BOS
    processed = preprocess([Image.open(IMAGES / "shapes-336.png")])
    assert processed.num_img_tokens == (757,)
    ids = expand_image_prompt(vision_prompt("How many shapes are there?"), encoder(tokenizer), processed.num_img_tokens)
    assert ids == COUNT_PROMPT and len(ids) == 774


FIXTURE_ANSWERS = [
    ("shapes-336.png", "How many shapes are there?", "Two."),
    ("shapes-336.png", "What shapes are in the image?", "A red square and a blue circle."),
    ("shapes-336.png", "Where is the square?", "At the top left."),
    ("gradient-1280x720.jpg", "How many shapes are there?", "None."),
]


@pytest.mark.parametrize(("image", "question", "answer"), FIXTURE_ANSWERS)
def test_fixture_answers(reference, tokenizer, image, question, answer):
    text, ids = ask(reference, tokenizer, IMAGES / image, question)
    assert text == answer and ids[-1] == END, (text, ids)


def test_two_is_7803_29889_end(reference, tokenizer):
    assert ask(reference, tokenizer, IMAGES / "shapes-336.png", "How many shapes are there?")[1] == [7803, 29889, END]


def test_generate_with_cache_equals_argmax_of_full_logits(reference, tokenizer):
    processed = preprocess([Image.open(IMAGES / "shapes-336.png")])
    features = reference.image_features(processed.pixel_values, processed.image_sizes)
    assert features.shape == (757, 256)
    ids = expand_image_prompt(vision_prompt("Where is the circle?"), encoder(tokenizer), processed.num_img_tokens)
    generated = reference.generate(ids, image_features=features)
    assert tokenizer.decode(generated, skip_special_tokens=True) == "At the bottom right."
    sequence, uncached = list(ids), []
    while not uncached or uncached[-1] != END:
        uncached.append(int(reference.logits(sequence, image_features=features)[-1].argmax()))
        sequence.append(uncached[-1])
    assert generated == uncached


def test_fixture_features_depend_on_the_right_clip_layer(reference):
    processed = preprocess([Image.open(IMAGES / "shapes-336.png")])
    with torch.inference_mode():
        last = reference.clip(torch.from_numpy(processed.pixel_values[0, :1])).last_hidden_state[:, 1:].numpy()
    penultimate = reference.crop_features(processed.pixel_values[0, :1])
    assert penultimate.shape == last.shape == (1, 576, 128)
    assert np.abs(penultimate - last).mean() > 0.5 * np.abs(penultimate).mean()  # the loud last layer is skipped


@pytest.mark.slow
def test_vision_dev_accuracy(reference, tokenizer):
    cache: dict[Path, tuple] = {}  # image -> (num_img_tokens, features): each image's features computed once

    def answer(question: VisionQuestion) -> str:
        if question.image not in cache:
            processed = preprocess([Image.open(question.image)])
            cache[question.image] = (processed.num_img_tokens,
                                     reference.image_features(processed.pixel_values, processed.image_sizes))
        counts, features = cache[question.image]
        ids = expand_image_prompt(vision_prompt(question.question), encoder(tokenizer), counts)
        return tokenizer.decode(reference.generate(ids, image_features=features), skip_special_tokens=True)

    questions = load_questions(DEV)
    score = score_answers(questions, answer)
    wrong = [(q.image.name, q.question, a) for q, a in zip(questions, score.answers) if not is_right(a, q)]
    print(f"vision-dev: {score.right}/{score.total} = {score.accuracy:.3f} by type {score.by_type}; wrong: {wrong}")
    assert score.total == 118
    assert score.accuracy >= 0.97, wrong


# ---- scoring ---------------------------------------------------------------------------------------------

def q(key: str, qtype: str, answer: str = "") -> VisionQuestion:
    return VisionQuestion(image=Path("x.png"), question="?", answer=answer, key=key, type=qtype)


@pytest.mark.parametrize(("answer", "qtype", "words"), [
    ("A red square and a blue circle.", "shape", "square circle"),
    ("An orange star.", "shape", "star"),
    ("There is no shape.", "shape", "no"),
    ("Red.", "colour", "red"),
    ("Gray.", "colour", "grey"),
    ("A red square.", "colour", "red"),
    ("Purple.", "color", "purple"),
    ("None.", "count", "none"),
    ("Two.", "count", "two"),
    ("At the top left.", "position", "top left"),
    ("In the middle.", "position", "middle"),
    ("At the bottom right.", "position", "bottom right"),
    ("", "shape", ""),
    ("Blue.", "shape", ""),
])
def test_answer_words(answer, qtype, words):
    assert answer_words(answer, qtype) == words


def test_answer_words_refuses_an_unknown_type():
    with pytest.raises(UsageError, match="unknown question type 'size'"):
        answer_words("Big.", "size")


def test_is_right():
    assert is_right("Two.", q("two", "count"))
    assert is_right("two", q("two", "count"))
    assert not is_right("One.", q("two", "count"))
    assert is_right("A green cross and an orange circle.", q("cross circle", "shape"))
    assert not is_right("A green circle and an orange cross.", q("cross circle", "shape"))  # order counts
    assert not is_right("A green cross.", q("cross circle", "shape"))
    assert is_right("At the top left.", q("top left", "position"))
    assert not is_right("At the top.", q("top left", "position"))
    assert not is_right("On the left.", q("top left", "position"))
    assert is_right("Grey.", q("gray", "color"))
    assert is_right("Orange.", q("orange", "colour"))
    assert not is_right("A red square and a blue circle.", q("red", "colour"))  # two colours is not "red"
    assert not is_right("There is no image.", q("none", "count"))


def test_score_answers_counts_per_type():
    questions = [q("two", "count"), q("red", "colour"), q("top", "position"), q("none", "count")]
    given = iter(["Two.", "Blue.", "At the top.", "Two."])
    score = score_answers(questions, lambda question: next(given))
    assert (score.right, score.total, score.accuracy) == (2, 4, 0.5)
    assert score.by_type == {"count": (1, 2), "colour": (0, 1), "position": (1, 1)}
    assert score.answers == ("Two.", "Blue.", "At the top.", "Two.")
    assert score_answers([], lambda question: "").accuracy == 0.0


def test_vision_prompt():
    assert vision_prompt("Where is the star?") == "<|user|>\n<|image_1|>\nWhere is the star?<|end|>\n<|assistant|>\n"


def test_load_questions_of_vision_dev():
    questions = load_questions(DEV)
    assert len(questions) == 118 and len({question.image for question in questions}) == 30
    assert {question.type for question in questions} == {"shape", "colour", "count", "position"}
    assert all(question.image.is_file() and is_right(question.answer, question) for question in questions)
    first = questions[0]
    assert (first.image, first.question, first.answer, first.key, first.type) == (
        DEV / "dev-000.png", "How many shapes are there?", "Two.", "two", "count")


BAD_LINES = [
    ("{not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"image": "a.png", "question": "?", "answer": "Two.", "type": "count"}', "field 'key'"),
    ('{"image": "a.png", "question": "?", "answer": "Two.", "key": "two", "type": "size"}', "unknown question type"),
    ('{"image": "a.png", "question": "?", "answer": "Big.", "key": "big", "type": "count"}', "outside the count vocabulary"),
    ('{"image": "a.png", "question": "?", "answer": "One.", "key": "two", "type": "count"}', "does not match its key"),
    ('{"image": "b.png", "question": "?", "answer": "Two.", "key": "two", "type": "count"}', "no image 'b.png'"),
    ('{"image": "../a.png", "question": "?", "answer": "Two.", "key": "two", "type": "count"}', "inside the eval folder"),
]


@pytest.mark.parametrize(("line", "fragment"), BAD_LINES)
def test_load_questions_refuses_bad_lines(tmp_path, line, fragment):
    (tmp_path / "a.png").write_bytes(b"")
    good = '{"image": "a.png", "question": "?", "answer": "Two.", "key": "two", "type": "count"}'
    (tmp_path / "questions.jsonl").write_text(good + "\n\n" + line + "\n")
    with pytest.raises(ModelSourceError) as caught:
        load_questions(tmp_path)
    assert "questions.jsonl:3: " in caught.value.message and fragment in caught.value.message, caught.value.message


def test_load_questions_of_a_missing_folder_or_file(tmp_path):
    with pytest.raises(UsageError, match="no eval folder"):
        load_questions(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="no questions.jsonl"):
        load_questions(tmp_path)
    (tmp_path / "questions.jsonl").write_text("\n")
    with pytest.raises(ModelSourceError, match="holds no questions"):
        load_questions(tmp_path)
