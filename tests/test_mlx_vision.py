"""Phi-3.5-vision on MLX (the ``mlx`` artifact with images), run here with Linux ``mlx[cpu]``: the recipe's
wiring for apple-silicon, the artifact's layout (4-bit text, float16 vision part, no checkpoint code), the
MLX vision forward against the fp32 torch reference, real answers through ``edgeslm run --artifact mlx``,
the bad-input cases of the ONNX vision engine, and (slow) the measured build's accuracy and feature cosine
in the manifest. All on the trained fixture ``examples/models/phi35v-shapes-tiny``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import EVAL, REPO, assert_clean_error, import_blocker, run_cli, vision_eval_subset
from test_vision_e2e import (
    ANSWERS,
    BAD_IMAGE_IDS,
    BAD_IMAGES,
    FIRST_IMAGE,
    HOW_MANY,
    IMAGES,
    SHAPES,
    VISION_MODEL,
    write_bad_images,
)

from edgeslm.errors import BundleError, ContextLengthError, UsageError
from edgeslm.safetensors_header import read_header

MLX = ("--artifact", "mlx")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mlx-vision") / "shapes.bundle"
    result = run_cli("build", "--target", "apple-silicon", "--model", str(VISION_MODEL), "--out", str(out), "--no-eval")
    assert result.returncode == 0, result
    return out


@pytest.fixture(scope="module")
def artifact(bundle) -> Path:
    return bundle / "artifacts" / "mlx"


def _processed(name: str, num_crops: int = 4):
    from edgeslm.vision.image_files import open_image
    from edgeslm.vision.phi3v_processor import preprocess

    return preprocess([open_image(IMAGES / name, label=name)], num_crops=num_crops)


# ---- the build: recipe wiring and the artifact's layout -------------------------------------------------

def test_apple_silicon_builds_mlx_with_images(bundle, artifact):
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert [a["id"] for a in manifest["artifacts"]] == ["mlx", "onnx-int4-cpu"]
    assert manifest["targets"]["apple-silicon"]["artifacts"] == ["mlx", "onnx-int4-cpu"]
    assert not any("not built" in w for w in manifest["warnings"])
    mlx = manifest["artifacts"][0]
    vision = mlx["vision"]
    assert vision["num_crops"] == 4 and vision["precision"] == "float16" and vision["tokens_per_crop"] == 144
    assert vision["tokens_by_grid"]["2x2"] == 757 and vision["tokens_per_image"]["4"] == 781
    assert vision["vision_weight_bytes"] == (artifact / "vision.safetensors").stat().st_size
    assert mlx["quantization"]["bits"] == 4 and mlx["quantization"]["group_size"] == 64
    assert mlx["context"]["max_total_tokens"] == 4096  # LongRoPE short factors: capped at the original context
    names = {Path(f["path"]).name for f in mlx["files"]}
    assert {"model.safetensors", "config.json", "tokenizer.json", "vision.safetensors", "vision_config.json"} <= names
    assert not [n for n in names if n.endswith(".py")]  # no checkpoint code in the artifact


def test_text_model_is_stock_phi3_with_the_short_factors(artifact):
    config = json.loads((artifact / "config.json").read_text())
    assert config["model_type"] == "phi3" and config["architectures"] == ["Phi3ForCausalLM"]
    assert not {"embd_layer", "img_processor", "auto_map"} & set(config)
    assert config["rope_scaling"]["long_factor"] == config["rope_scaling"]["short_factor"]
    _, header = read_header(artifact / "model.safetensors")
    assert not [n for n in header if "vision" in n]
    assert header["model.layers.0.mlp.down_proj.weight"]["dtype"] == "U32"  # 4-bit packed


def test_vision_part_is_float16_up_to_the_feature_layer(artifact):
    config = json.loads((artifact / "vision_config.json").read_text())
    source = json.loads((VISION_MODEL / "config.json").read_text())
    layers = source["img_processor"]["vision_config"]["num_hidden_layers"]
    assert config["clip_layers_run"] == layers - 1  # hidden_states[-2]: the last layer is never run
    _, header = read_header(artifact / "vision.safetensors")
    assert {info["dtype"] for info in header.values()} == {"F16"}
    assert f"clip.layers.{layers - 2}.fc1.weight" in header and f"clip.layers.{layers - 1}.fc1.weight" not in header
    assert {"glb_GN", "sub_GN", "projection.0.weight", "projection.2.bias", "clip.patch_embedding.weight"} <= set(header)
    assert not [n for n in header if "post_layernorm" in n]


# ---- the MLX vision forward against the fp32 torch reference --------------------------------------------

@pytest.fixture(scope="module")
def reference():
    pytest.importorskip("torch")
    from edgeslm.builder.phi3v_reference import Phi3VisionReference

    return Phi3VisionReference.load(VISION_MODEL)


@pytest.mark.parametrize("name", ["shapes-336.png", "gradient-1280x720.jpg", "tall-64x900.png"])
def test_features_match_the_torch_reference(artifact, reference, name):
    import mlx.core as mx

    from edgeslm.backends.mlx.vision_tower import VisionTower

    images = _processed(name)
    expected = reference.image_features(images.pixel_values, images.image_sizes)
    for dtype, min_cosine, max_error in ((mx.float32, 0.99999, 1e-3), (mx.float16, 0.9999, 0.2)):
        got = np.array(VisionTower.load(artifact, dtype=dtype).image_features(images.pixel_values, images.image_sizes)
                       .astype(mx.float32))
        assert got.shape == expected.shape == (images.num_img_tokens[0], 256)
        cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
        assert cosine.min() > min_cosine and np.abs(got - expected).max() < max_error, (dtype, cosine.min())


def test_scorer_answers_like_the_reference(artifact, reference):
    from tokenizers import Tokenizer

    from edgeslm.backends.mlx import scoring
    from edgeslm.builder.vision_accuracy import vision_prompt
    from edgeslm.vision.image_prompt import expand_image_prompt

    tokenizer = Tokenizer.from_file(str(VISION_MODEL / "tokenizer.json"))
    images = _processed("shapes-336.png")
    ids = expand_image_prompt(vision_prompt(HOW_MANY), lambda t: tokenizer.encode(t).ids, images.num_img_tokens)
    (answer,) = scoring.answer_tokens(artifact, [(ids, images)], 16, (32007, 32000, 32001))
    expected = reference.generate(ids, images.pixel_values, images.image_sizes, max_new_tokens=16)
    assert answer == [t for t in expected if t not in (32007, 32000, 32001)]
    assert tokenizer.decode(answer, skip_special_tokens=True).strip() == "Two."


def test_vision_path_needs_no_torch_or_transformers(artifact, tmp_path):
    code = ("import sys; from pathlib import Path; "
            "from edgeslm.backends.mlx.vision_tower import VisionTower; "
            "from edgeslm.vision.image_files import open_image; from edgeslm.vision.phi3v_processor import preprocess; "
            f"p = preprocess([open_image(Path({str(SHAPES)!r}), label='x')]); "
            f"f = VisionTower.load(Path({str(artifact)!r})).image_features(p.pixel_values, p.image_sizes); "
            "assert f.shape == (757, 256), f.shape; "
            "assert not {'torch', 'transformers', 'torchvision'} & set(sys.modules)")
    env = {**os.environ, **import_blocker(tmp_path, "torch", "torchvision", "transformers")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr


# ---- edgeslm run through the MLX engine -----------------------------------------------------------------

@pytest.mark.parametrize("image, question, answer", ANSWERS)
def test_run_answers_about_the_image(bundle, image, question, answer):
    result = run_cli("run", str(bundle), question, "--image", str(IMAGES / image), *MLX)
    assert result.returncode == 0, result
    assert result.stdout.strip() == answer


def test_run_without_an_image_and_json(bundle):
    result = run_cli("run", str(bundle), HOW_MANY, *MLX)
    assert result.returncode == 0 and result.stdout.strip() == "There is no image.", result
    data = run_cli("run", str(bundle), HOW_MANY, "--image", str(SHAPES), "--json", *MLX).json()
    assert data["artifact"] == "mlx" and data["text"] == "Two." and data["prompt_tokens"] == 774


def test_image_tokens_count_against_the_context(bundle):
    result = run_cli("run", str(bundle), HOW_MANY, "--image", str(SHAPES), "--context", "512", *MLX)
    assert_clean_error(result, "757 of them for 1 image", "allows 511")
    assert result.returncode == ContextLengthError.exit_code


# ---- bad input: the ONNX vision engine's cases, and the engine's own checks -----------------------------

@pytest.mark.parametrize("make, fragment", BAD_IMAGES, ids=BAD_IMAGE_IDS)
def test_run_refuses_bad_images_cleanly(bundle, tmp_path, make, fragment):
    write_bad_images(tmp_path)
    result = run_cli("run", str(bundle), HOW_MANY, "--image", str(make(tmp_path)), *MLX)
    assert_clean_error(result, FIRST_IMAGE, fragment)
    assert result.returncode == 2 and not result.stdout.strip()


def test_engine_checks_its_inputs(artifact):
    from edgeslm.backends.mlx.embedded_prompt import prompt_embeddings
    from edgeslm.backends.mlx.engine import MlxEngine
    from edgeslm.runtime.generation import GenerationOptions

    engine = MlxEngine(artifact)
    images = _processed("shapes-336.png")
    tower = engine.vision
    with pytest.raises(UsageError, match=r"pixel_values has shape \[1, 5, 3, 224, 224\]"):
        tower.image_features(np.zeros((1, 5, 3, 224, 224), np.float32), images.image_sizes)
    with pytest.raises(UsageError, match="NaN or inf"):
        tower.image_features(np.full_like(images.pixel_values, np.nan), images.image_sizes)
    with pytest.raises(UsageError, match="not a grid of 336-pixel crops"):
        tower.image_features(images.pixel_values, np.array([[672, 700]]))
    with pytest.raises(UsageError, match="needs 10 crops, pixel_values has 5"):
        tower.image_features(images.pixel_values, np.array([[1008, 1008]]))
    with pytest.raises(UsageError, match="2 image_sizes for 1 images"):
        tower.image_features(images.pixel_values, np.array([[672, 672], [336, 336]]))
    features = tower.image_features(images.pixel_values, images.image_sizes)
    with pytest.raises(UsageError, match="the prompt has 3 image positions .* the images give 757"):
        prompt_embeddings(engine.model, [1, -1, -1, -1, 2], features)
    with pytest.raises(UsageError, match="outside the vocabulary"):
        prompt_embeddings(engine.model, [1, 99999], None)
    with pytest.raises(UsageError, match="the prompt has 2 image positions .* the images give 0"):
        list(engine.generate([1, -1, -1, 2], GenerationOptions(max_new_tokens=2), 8))
    engine.close()


def test_text_only_mlx_artifact_takes_no_images(tmp_path):
    from edgeslm.backends.mlx.engine import MlxEngine

    out = tmp_path / "docs.bundle"
    result = run_cli("build", "--target", "apple-silicon", "--model", str(REPO / "examples/models/phi3-docs-21m"),
                     "--out", str(out), "--no-eval")
    assert result.returncode == 0, result
    engine = MlxEngine(out / "artifacts" / "mlx")
    assert not engine.takes_images and engine.vision is None
    with pytest.raises(UsageError, match="text-only model: it takes no images"):
        engine.image_features(_processed("shapes-336.png"))
    refused = run_cli("run", str(out), HOW_MANY, "--image", str(SHAPES), *MLX)
    assert_clean_error(refused, "does not take images", "text-only")


def test_damaged_vision_config_is_a_bundle_error(artifact, tmp_path):
    from edgeslm.backends.mlx.vision_tower import VisionTower

    copy = tmp_path / "mlx"
    shutil.copytree(artifact, copy)
    config = json.loads((copy / "vision_config.json").read_text())
    (copy / "vision_config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(BundleError, match="not an edgeslm MLX vision config of version 1"):
        VisionTower.load(copy)
    (copy / "vision.safetensors").write_bytes(b"\0" * 16)
    (copy / "vision_config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="cannot load the MLX vision part"):
        VisionTower.load(copy)


def test_missing_vision_tensor_is_refused_before_export(tmp_path):
    """A checkpoint whose config asks for more CLIP layers than it has tensors for: refused before export."""
    model = tmp_path / "short"
    model.mkdir()
    for file in VISION_MODEL.iterdir():
        if file.name != "config.json":
            (model / file.name).symlink_to(file)
    config = json.loads((VISION_MODEL / "config.json").read_text())
    config["img_processor"]["vision_config"]["num_hidden_layers"] = 6
    config["img_processor"]["layer_idx"] = -1
    (model / "config.json").write_text(json.dumps(config))
    from edgeslm.backends.mlx.vision_export import check_vision_checkpoint
    from edgeslm.errors import ModelSourceError

    with pytest.raises(ModelSourceError, match="missing model.vision_embed_tokens.img_processor.vision_model.encoder."
                                               "layers.4"):
        check_vision_checkpoint(model, config)


# ---- the measured build (slow) --------------------------------------------------------------------------

@pytest.mark.slow
def test_build_measures_mlx_image_accuracy(tmp_path):
    out = tmp_path / "measured.bundle"
    result = run_cli("build", "--target", "apple-silicon", "--model", str(VISION_MODEL), "--out", str(out),
                     "--vision-eval", str(vision_eval_subset(tmp_path / "vision-dev-first6")),
                     "--eval-text", str(EVAL / "docs-heldout.txt"), "--allow-quality-loss", "--json", timeout=3600)
    assert result.returncode == 0, result
    manifest = json.loads((out / "manifest.json").read_text())
    mlx = next(a for a in manifest["artifacts"] if a["id"] == "mlx")
    accuracy = mlx["vision"]["accuracy"]
    assert accuracy["dataset"] == "vision-dev-first6" and accuracy["questions"] == 22  # the whole set: benchmarks
    assert accuracy["source"] >= 0.97 and accuracy["artifact"] >= accuracy["source"] - 0.05
    assert accuracy["within_limit"] is True and accuracy["feature_cosine_min"] > 0.9999
    assert accuracy["feature_max_abs_error"] < 1e-2
    assert not any("image-question" in w for w in manifest["warnings"])
    verify = run_cli("verify", str(out), "--json")
    assert verify.returncode == 0 and verify.json()["ok"] is True, verify
    answer = run_cli("run", str(out), HOW_MANY, "--image", str(SHAPES), *MLX)
    assert answer.returncode == 0 and answer.stdout.strip() == "Two.", answer
