"""Phi-3.5-vision on the Snapdragon NPU (``qnn-context`` with images), on the trained fixture
``examples/models/phi35v-shapes-tiny``: the recipe's wiring for snapdragon-x-elite, the vision encoder's
static a16w8 graph and its per-SoC context binary, the host HD layout against the fp32 torch reference,
the compiled encoder on onnxruntime-qnn's HTP simulator against the same QDQ graph on the CPU, real answers
through ``edgeslm run --artifact qnn-context`` on the simulator, the bad-input cases of the other vision
engines, and (slow) the measured build's accuracy and feature cosine in the manifest.

No Snapdragon exists here: the HTP backend runs in simulation on x86_64 (what onnxruntime-qnn ships).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import EVAL, assert_clean_error, run_cli, vision_eval_subset
from test_vision_e2e import (
    BAD_IMAGE_IDS,
    BAD_IMAGES,
    FIRST_IMAGE,
    HOW_MANY,
    IMAGES,
    SHAPES,
    VISION_MODEL,
    write_bad_images,
)

from edgeslm.errors import ContextLengthError, UsageError

QNN = ("--artifact", "qnn-context")
SMALL = ("--set", "qnn-context.context_length=1024", "--set", "qnn-context.prefill_chunk=64")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qnn-vision") / "shapes.bundle"
    result = run_cli("build", "--target", "snapdragon-x-elite", "--model", str(VISION_MODEL), "--out", str(out),
                     "--no-eval", *SMALL)
    assert result.returncode == 0, result
    return out


@pytest.fixture(scope="module")
def artifact(bundle) -> Path:
    return bundle / "artifacts" / "qnn-context"


def _processed(name: str, num_crops: int = 4):
    from edgeslm.vision.image_files import open_image
    from edgeslm.vision.phi3v_processor import preprocess

    return preprocess([open_image(IMAGES / name, label=name)], num_crops=num_crops)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


# ---- the build: recipe wiring and the artifact's layout -------------------------------------------------

def test_snapdragon_builds_qnn_with_images(bundle, artifact):
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert [a["id"] for a in manifest["artifacts"]] == ["qnn-context", "onnx-int4-cpu"]
    assert manifest["targets"]["snapdragon-x-elite"]["artifacts"] == ["qnn-context", "onnx-int4-cpu"]
    assert not any("not built" in w for w in manifest["warnings"])
    qnn = manifest["artifacts"][0]
    vision = qnn["vision"]
    assert vision["num_crops"] == 4 and vision["precision"] == "float16" and vision["tokens_per_crop"] == 144
    assert vision["tokens_by_grid"]["2x2"] == 757 and vision["tokens_per_image"]["4"] == 781
    assert "16" not in vision["tokens_per_image"]  # the graph takes num_crops + 1 = 5 crops, no more
    config = json.loads((artifact / "qnn_config.json").read_text())
    assert config["vision"]["crops"] == 5 and config["vision"]["separators"] == "vision_separators.npy"
    binary = artifact / config["socs"]["SC8380XP"]["vision"]
    assert binary.name == "vision_ctx.onnx" and (binary.parent / "vision_ctx_qnn.bin").stat().st_size > 0
    assert vision["vision_weight_bytes"] >= (binary.parent / "vision_ctx_qnn.bin").stat().st_size
    assert np.load(artifact / "vision_separators.npy").shape == (2, 256)
    names = {Path(f["path"]).name for f in qnn["files"]}
    assert {"vision_ctx.onnx", "vision_ctx_qnn.bin", "vision_separators.npy", "vision.onnx"} <= names
    assert not [n for n in names if n.endswith(".py")]  # no checkpoint code in the artifact
    assert qnn["details"]["stage_seconds"][0]["part"] == "vision"


def test_encoder_graph_is_static_without_data_dependent_ops(artifact):
    import onnx

    graph = onnx.load(str(artifact / "qdq" / "vision.onnx"), load_external_data=False).graph
    (pixels,) = graph.input
    assert [d.dim_value for d in pixels.type.tensor_type.shape.dim] == [5, 3, 336, 336]
    assert [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim] == [1, 720, 256]
    assert not {n.op_type for n in graph.node} & {"Compress", "NonZero", "Loop", "If", "CumSum", "QuantizeLinear"}
    config = json.loads((artifact / "qnn_config.json").read_text())["vision"]
    assert config["precision"] == "float16" and not config["npu_input_quantization"]


@pytest.fixture(scope="module")
def a16w8(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qnn-vision-a16w8") / "shapes.bundle"
    result = run_cli("build", "--target", "snapdragon-x-elite", "--model", str(VISION_MODEL), "--out", str(out),
                     "--no-eval", *SMALL, "--set", "qnn-context.vision_precision=a16w8")
    assert result.returncode == 0, result
    return out / "artifacts" / "qnn-context"


def test_a16w8_encoder_is_qdq_with_per_channel_int8_weights_and_runs_on_the_simulator(a16w8):
    import onnx

    from edgeslm.backends.qnn import ep_sessions
    from edgeslm.backends.qnn.artifact_files import QnnArtifact

    graph = onnx.load(str(a16w8 / "qdq" / "vision.onnx"), load_external_data=False).graph
    initializers = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    quantize = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert quantize and {initializers[n.input[2]].data_type for n in quantize} == {onnx.TensorProto.UINT16}
    matmuls = [n for n in graph.node if n.op_type == "MatMul" and producer.get(n.input[1]) is not None
               and producer[n.input[1]].op_type == "DequantizeLinear" and producer[n.input[1]].input[0] in initializers]
    assert len(matmuls) == 3 * 6 + 2  # q, k, v, out, fc1, fc2 of the 3 CLIP layers run, the projection's two
    for node in matmuls:
        weight, scale = (initializers[producer[node.input[1]].input[i]] for i in (0, 1))
        assert weight.data_type == onnx.TensorProto.INT8 and list(scale.dims) == [weight.dims[1]]  # per channel
    norms = [n for n in graph.node if n.op_type == "LayerNormalization"]
    assert norms and all(initializers[producer[n.input[1]].input[0]].data_type == onnx.TensorProto.UINT8 for n in norms)
    qnn = QnnArtifact.open(a16w8)
    assert qnn.vision_options() == {"input_quantization_on_npu": True, "float16": False}
    images = _processed("shapes-336.png")
    cpu = qnn.image_features(ep_sessions.runner(ep_sessions.cpu_session(qnn.vision_file("qdq"))),
                             images.pixel_values, images.image_sizes)
    htp = qnn.image_features(ep_sessions.runner(ep_sessions.htp_session(
        qnn.vision_file("SC8380XP"), 60, 73, threads=2, **qnn.vision_options())), images.pixel_values, images.image_sizes)
    assert _cosine(htp, cpu) > 0.999


# ---- the image side against the torch reference and on the simulated NPU -------------------------------

@pytest.fixture(scope="module")
def reference():
    from edgeslm.builder.phi3v_reference import Phi3VisionReference

    return Phi3VisionReference.load(VISION_MODEL)


@pytest.mark.parametrize("name", ["shapes-336.png", "gradient-1280x720.jpg", "tall-64x900.png"])
def test_features_match_the_torch_reference(artifact, reference, name):
    """The QDQ encoder (CPU provider) + host HD layout against the fp32 reference's features: same token count
    and order (square, 16:9 and a thin portrait strip, so 1x1, 2x2 and 3x1 crop grids)."""
    from edgeslm.backends.qnn.vision_scoring import image_features

    images = _processed(name)
    want = reference.image_features(images.pixel_values, images.image_sizes)
    got = image_features(artifact, images.pixel_values, images.image_sizes)
    assert got.shape == want.shape == (images.num_img_tokens[0], 256)
    assert _cosine(got, want) > 0.99


def test_simulated_npu_fp16_encoder_matches_the_float_graph(artifact):
    from edgeslm.backends.qnn import ep_sessions
    from edgeslm.backends.qnn.artifact_files import QnnArtifact

    qnn = QnnArtifact.open(artifact)
    images = _processed("gradient-1280x720.jpg")
    cpu = qnn.image_features(ep_sessions.runner(ep_sessions.cpu_session(qnn.vision_file("qdq"))),
                             images.pixel_values, images.image_sizes)
    htp = qnn.image_features(ep_sessions.runner(ep_sessions.htp_session(
        qnn.vision_file("SC8380XP"), 60, 73, threads=2, **qnn.vision_options())),
        images.pixel_values, images.image_sizes)
    assert htp.shape == cpu.shape and _cosine(htp, cpu) > 0.999


def test_scorer_answers_like_the_reference(artifact, reference):
    from tokenizers import Tokenizer

    from edgeslm.backends.qnn.vision_scoring import answer_tokens
    from edgeslm.vision.image_prompt import expand_image_prompt

    tokenizer = Tokenizer.from_file(str(VISION_MODEL / "tokenizer.json"))
    images = _processed("shapes-336.png")
    prompts = []
    for question in (HOW_MANY, "What colour is the square?", "Where is the square?"):
        text = f"<|user|>\n<|image_1|>\n{question}<|end|>\n<|assistant|>\n"
        prompts.append((expand_image_prompt(text, lambda t: tokenizer.encode(t, add_special_tokens=True).ids,
                                            images.num_img_tokens), images))
    got = answer_tokens(artifact, prompts, 16, (32007, 32000, 32001))
    want = [[t for t in reference.generate(ids, images.pixel_values, images.image_sizes, max_new_tokens=16)
             if t not in (32007, 32000, 32001)] for ids, _ in prompts]
    assert [tokenizer.decode(t) for t in got] == [tokenizer.decode(t) for t in want] == \
        ["Two.", "Red.", "At the top left."]


# ---- edgeslm run through the QNN engine on the HTP simulator --------------------------------------------

def test_run_answers_on_the_simulated_npu_and_json(bundle):
    data = run_cli("run", str(bundle), "What shapes are in the image?", "--image", str(SHAPES), "--json",
                   *QNN, timeout=600).json()
    assert data["artifact"] == "qnn-context" and data["text"] == "A red square and a blue circle."
    assert data["prompt_tokens"] == 775  # 757 image tokens and the template's 18


def test_image_tokens_count_against_the_context(bundle):
    result = run_cli("run", str(bundle), HOW_MANY, "--image", str(SHAPES), "--context", "512", *QNN)
    assert_clean_error(result, "757 of them for 1 image", "allows 511")
    assert result.returncode == ContextLengthError.exit_code


@pytest.mark.parametrize("make, fragment", BAD_IMAGES, ids=BAD_IMAGE_IDS)
def test_run_refuses_bad_images_cleanly(bundle, tmp_path, make, fragment):
    write_bad_images(tmp_path)
    result = run_cli("run", str(bundle), HOW_MANY, "--image", str(make(tmp_path)), *QNN)
    assert_clean_error(result, FIRST_IMAGE, fragment)
    assert result.returncode == 2 and not result.stdout.strip()


def test_engine_checks_its_inputs(artifact):
    from edgeslm.backends.qnn.artifact_files import QnnArtifact
    from edgeslm.backends.qnn.vision_layout import encoder_input, prompt_rows

    qnn = QnnArtifact.open(artifact)
    images = _processed("shapes-336.png")

    def never(feeds):  # the checks come before any encoder call
        raise AssertionError("the encoder ran")

    with pytest.raises(UsageError, match=r"shape \[5, 3, 224, 224\]"):
        qnn.image_features(never, np.zeros((1, 5, 3, 224, 224), np.float32), images.image_sizes)
    with pytest.raises(UsageError, match="NaN or inf"):
        qnn.image_features(never, np.full_like(images.pixel_values, np.nan), images.image_sizes)
    with pytest.raises(UsageError, match="not a grid of 336-pixel crops"):
        qnn.image_features(never, images.pixel_values, np.array([[672, 700]]))
    with pytest.raises(UsageError, match="needs 10 crops; the vision graph takes 5"):
        qnn.image_features(never, images.pixel_values, np.array([[1008, 1008]]))
    with pytest.raises(UsageError, match="does not match 1 images"):
        qnn.image_features(never, images.pixel_values, np.array([[672, 672], [336, 336]]))
    sixteen = _processed("gradient-1280x720.jpg", num_crops=16)  # the runtime cut more crops than the graph takes
    with pytest.raises(UsageError, match="an image of 3x5 crops needs 16 crops; the vision graph takes 5"):
        qnn.image_features(never, sixteen.pixel_values, sixteen.image_sizes)
    with pytest.raises(UsageError, match="more crops than the 5 the vision graph was compiled for"):
        encoder_input(sixteen.pixel_values[0], 5)
    padded = np.concatenate([images.pixel_values[0], np.zeros((12, 3, 336, 336), np.float32)])
    assert np.array_equal(encoder_input(padded, 5), images.pixel_values[0])  # zero crops beyond the graph's: dropped
    assert encoder_input(images.pixel_values[0][:2], 5).shape == (5, 3, 336, 336)  # fewer: zero crops appended
    features = np.zeros((757, 256), np.float32)
    with pytest.raises(UsageError, match=r"the prompt has 3 image positions .* the images give 757"):
        prompt_rows(qnn.embeddings, [1, -1, -1, -1, 2], features)
    with pytest.raises(UsageError, match="outside the vocabulary"):
        prompt_rows(qnn.embeddings, [1, -1, 99999], np.zeros((1, 256), np.float32))
    with pytest.raises(UsageError, match=r"the prompt has 2 image positions .* the images give 0"):
        prompt_rows(qnn.embeddings, [1, -1, -1, 2], None)


def test_text_only_qnn_artifact_takes_no_images(artifact, tmp_path):
    """A qnn-context artifact without the vision entry (what a text model's build writes) refuses images."""
    from edgeslm.backends.qnn.artifact_files import QnnArtifact
    from edgeslm.errors import BundleError

    copy = tmp_path / "qnn-context"
    shutil.copytree(artifact, copy)
    config = json.loads((copy / "qnn_config.json").read_text())
    del config["vision"]
    (copy / "qnn_config.json").write_text(json.dumps(config))
    qnn = QnnArtifact.open(copy)
    assert not qnn.takes_images
    with pytest.raises(BundleError, match="text-only model: it has no vision encoder"):
        qnn.vision_file("SC8380XP")


def test_calibration_images_are_drawn_not_the_evaluation_set():
    from edgeslm.backends.qnn.vision_calibration import synthetic_images

    images = synthetic_images(8)
    assert len({im.size for im in images}) == 8  # square, landscape, portrait, a strip, ...
    again = synthetic_images(8)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, again))  # fixed seed


def test_bad_vision_calibration_folder_is_a_clear_error(tmp_path):
    out = tmp_path / "b.bundle"
    result = run_cli("build", "--target", "snapdragon-x-elite", "--model", str(VISION_MODEL), "--out", str(out),
                     "--no-eval", *SMALL, "--set", f"qnn-context.vision_calibration_images={tmp_path / 'none'}")
    assert_clean_error(result, "vision_calibration_images", "is not a folder")
    assert not out.exists()


# ---- selection on the recorded Snapdragon laptop (no Snapdragon here: its host tree, recorded) ----------

def test_selection_counts_the_vision_encoder_against_the_npu_budget(bundle):
    import dataclasses

    from edgeslm.bundle.manifest import read_manifest
    from edgeslm.runtime.accelerator_probe import Findings
    from edgeslm.runtime.host_probe import probe_host
    from edgeslm.runtime.selection import rank_artifacts

    host = probe_host(Path(__file__).parent / "hosts" / "snapdragon-x-elite", findings=Findings(
        packages={"onnxruntime-genai": "0.18.0", "onnxruntime-qnn": "2.7.0"}, qnn_htp=True))
    m = read_manifest(bundle)
    chosen = rank_artifacts(m, host).chosen
    assert (chosen.artifact.id, chosen.device) == ("qnn-context", "npu") and chosen.artifact.vision is not None
    art = m.artifact("qnn-context")
    decoder = sum(p["weight_bytes"] + p["kv_cache_bytes"] + p["activation_bytes"] for p in art.details["parts"])
    # a budget the decoder fits but not decoder + vision encoder: refused, with the encoder named, CPU fallback
    mb = -(-decoder // 2**20)
    assert decoder + art.vision.vision_weight_bytes > mb * 2**20
    small = {soc: {**e, "npu_memory_mb": mb} for soc, e in art.details["socs"].items()}
    tight = dataclasses.replace(m, artifacts=tuple(
        dataclasses.replace(a, details={**a.details, "socs": small}) if a.id == "qnn-context" else a
        for a in m.artifacts))
    selection = rank_artifacts(tight, host)
    reason = {r.artifact_id: r.reason for r in selection.rejected}["qnn-context"]
    assert selection.chosen.artifact.id == "onnx-int4-cpu"
    assert "part(s) and the vision encoder need" in reason and f"{mb} MiB SC8380XP's HTP" in reason


# ---- the measured build (slow) --------------------------------------------------------------------------

@pytest.mark.slow
def test_build_measures_qnn_image_accuracy(tmp_path):
    """A measured build on the first 6 images (22 questions) of edgeslm:vision-dev: the QDQ graphs' answers
    against the fp32 reference's, and the features' cosine, recorded in the manifest."""
    out = tmp_path / "measured.bundle"
    subset = vision_eval_subset(tmp_path / "vision-dev-6")
    result = run_cli("build", "--target", "snapdragon-x-elite", "--model", str(VISION_MODEL), "--out", str(out),
                     *SMALL, "--vision-eval", str(subset), "--eval-text", str(EVAL / "docs-heldout.txt"),
                     "--allow-quality-loss", "--json", timeout=1800)  # the demo's text side is not a language model
    assert result.returncode == 0, result
    manifest = json.loads((out / "manifest.json").read_text())
    qnn = next(a for a in manifest["artifacts"] if a["id"] == "qnn-context")
    accuracy = qnn["vision"]["accuracy"]
    assert accuracy["questions"] == 22 and accuracy["within_limit"]
    assert accuracy["artifact"] >= accuracy["source"] - 0.05
    assert accuracy["feature_cosine_min"] > 0.99
    assert qnn["quality"]["metric"] == "perplexity" and qnn["quality"]["within_limit"]
