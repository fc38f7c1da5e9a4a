"""The ONNX parts of a Phi-3.5-vision artifact against edgeslm's fp32 torch reference, on the trained fixture.

The vision graph is exported unquantized (``vision_precision=float32``) so that any layout mistake
(crop order, 2×2 merge, separators, sub/global order, several images of different grids in one call)
shows as a feature mismatch; the int8 default is checked for closeness. The embedding graph must put
the image features exactly at the negative ids and the table rows elsewhere. The artifact also runs
with onnxruntime-genai's own multimodal processor (its stock ``phi3v`` path).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_cli

MODEL = REPO / "examples" / "models" / "phi35v-shapes-tiny"
IMAGES = REPO / "tests" / "fixtures" / "images"

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def reference():
    from edgeslm.builder.phi3v_reference import Phi3VisionReference

    return Phi3VisionReference.load(MODEL)


def _export(out: Path, precision: str) -> Path:
    from edgeslm.backends.onnx_genai.phi3v_export import export_vision_parts

    config = json.loads((MODEL / "config.json").read_text())
    export_vision_parts(MODEL, out, config, precision=precision, io_dtype="float32", table="float32", table_block=32)
    return out


def _images(*names: str, num_crops: int = 4):
    from PIL import Image

    from edgeslm.vision.phi3v_processor import preprocess

    return preprocess([Image.open(IMAGES / n) for n in names], num_crops=num_crops)


def _vision(folder: Path, images) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "vision.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"pixel_values": images.pixel_values, "image_sizes": images.image_sizes})[0]


@pytest.mark.parametrize("names,num_crops", [
    (("shapes-336.png",), 4),  # 2x2 grid, 757 tokens
    (("tall-64x900.png",), 4),  # 4x1, 781 tokens
    (("tall-64x900.png", "shapes-336.png", "gradient-1280x720.jpg"), 4),  # three images, two grids, one call
    (("shapes-336.png",), 1),  # 1x1: three of the five crop slots unused
    (("gradient-1280x720.jpg",), 16),
])
def test_fp32_vision_graph_matches_the_torch_reference(tmp_path, reference, names, num_crops):
    folder = _export(tmp_path, "float32")
    images = _images(*names, num_crops=num_crops)
    got = _vision(folder, images)
    expected = reference.image_features(images.pixel_values, images.image_sizes)
    assert got.shape == expected.shape == (sum(images.num_img_tokens), 256)
    assert np.abs(got - expected).max() < 1e-3 * np.abs(expected).max()


def test_int8_vision_graph_is_close_and_smaller(tmp_path, reference):
    fp32 = _export(tmp_path / "fp32", "float32")
    int8 = _export(tmp_path / "int8", "int8")
    images = _images("shapes-336.png", "tall-64x900.png")
    got = _vision(int8, images)
    expected = reference.image_features(images.pixel_values, images.image_sizes)
    cosine = (got * expected).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    assert cosine.min() > 0.999
    assert (int8 / "vision.onnx.data").stat().st_size < 0.6 * (fp32 / "vision.onnx.data").stat().st_size


def test_embedding_graph_writes_image_features_at_the_negative_ids(tmp_path, reference):
    import onnxruntime as ort

    folder = _export(tmp_path, "float32")
    session = ort.InferenceSession(str(folder / "embedding.onnx"), providers=["CPUExecutionProvider"])
    ids = [1, 32010, 29871, 13] + [-1] * 3 + [1, 29871, 13, 5328, -2, -2, 32007]
    features = np.random.default_rng(0).standard_normal((5, 256)).astype(np.float32)
    (embeds,) = session.run(None, {"input_ids": np.array([ids], dtype=np.int64), "image_features": features})
    expected = reference.input_embeds(ids, image_features=features)
    assert np.allclose(embeds[0], expected, atol=1e-6)
    assert np.array_equal(embeds[0, 4:7], features[:3]) and np.array_equal(embeds[0, 11:13], features[3:])
    (text_only,) = session.run(None, {"input_ids": np.array([ids[:4]], dtype=np.int64),
                                      "image_features": np.zeros((0, 256), np.float32)})
    assert np.allclose(text_only[0], expected[:4], atol=1e-6)


def test_artifact_layout_and_onnxruntime_genai_processor(tmp_path):
    out = tmp_path / "shapes.bundle"
    result = run_cli("build", "--target", "cpu-x86_64", "--model", str(MODEL), "--out", str(out), "--no-eval")
    assert result.returncode == 0, result
    art = out / "artifacts" / "onnx-int4-cpu"
    config = json.loads((art / "genai_config.json").read_text())["model"]
    assert config["type"] == "phi3v" and config["decoder"]["filename"] == "text.onnx"
    assert config["decoder"]["inputs"]["inputs_embeds"] == "inputs_embeds" and "input_ids" not in config["decoder"]["inputs"]
    assert config["vision"]["filename"] == "vision.onnx" and config["embedding"]["filename"] == "embedding.onnx"
    assert "session_options" not in config["vision"]  # the parts run with the decoder's options (provider, threads)
    crops = json.loads((art / "processor_config.json").read_text())["processor"]["transforms"][-1]["operation"]["attrs"]
    assert crops == {"num_crops": 4, "num_img_tokens": 144}
    manifest = json.loads((out / "manifest.json").read_text())
    vision = manifest["artifacts"][0]["vision"]
    assert vision["num_crops"] == 4 and vision["tokens_by_grid"]["2x2"] == 757 and vision["accuracy"] is None

    # onnxruntime-genai's stock phi3v path (its own image processor, which always cuts 16 crops) runs it too
    import onnxruntime_genai as og

    model = og.Model(str(art))
    inputs = model.create_multimodal_processor()(
        "<|user|>\n<|image_1|>\nHow many shapes are there?<|end|>\n<|assistant|>\n",
        images=og.Images.open(str(IMAGES / "shapes-336.png")))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=3000)
    generator = og.Generator(model, params)
    generator.set_inputs(inputs)
    answer = []
    while not generator.is_done() and len(answer) < 8:
        generator.generate_next_token()
        answer.append(int(generator.get_next_tokens()[0]))
    assert og.Tokenizer(model).decode(answer[:answer.index(32007)]).strip() == "Two."


def test_accuracy_gate_fails_the_build_below_the_limit(tmp_path, reference):
    """The gate of ``score_vision`` on a real artifact and scorer: the reference's answers are replaced by the
    set's own answers (100% right), so the artifact's one miss on dev-022.png is a drop over a 0-point limit."""
    from edgeslm.backends.onnx_genai import scoring
    from edgeslm.builder.vision_quality import VisionReference, score_vision, vision_eval_plan
    from edgeslm.errors import QualityError

    out = tmp_path / "shapes.bundle"
    assert run_cli("build", "--target", "cpu-x86_64", "--model", str(MODEL), "--out", str(out), "--no-eval").returncode == 0
    art = out / "artifacts" / "onnx-int4-cpu"
    full = vision_eval_plan(REPO / "tests/fixtures/eval/vision-dev", 0, 0.0, allow_loss=False)
    questions = tuple(q for q in full.questions if Path(q.image).name == "dev-022.png")
    strict = type(full)(full.folder, "dev-022", questions, 0.0, False)
    images = _images("../eval/vision-dev/dev-022.png")
    ideal = VisionReference(4, tuple(q.answer for q in questions),
                            {str(questions[0].image): reference.image_features(images.pixel_values, images.image_sizes)})
    with pytest.raises(QualityError, match="accuracy .* below the fp32 reference's 100.0%"):
        score_vision(strict, ideal, MODEL, scoring, art, "onnx-int4-cpu")
    kept = score_vision(type(full)(full.folder, "dev-022", questions, 0.0, True), ideal, MODEL, scoring, art,
                        "onnx-int4-cpu")
    assert not kept.within_limit and kept.source == 1.0 and kept.artifact < 1.0
    assert kept.feature_cosine_min > 0.999
