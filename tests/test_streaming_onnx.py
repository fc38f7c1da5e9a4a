"""The streaming ONNX exporter against onnxruntime-genai's builder, on real and random Phi-3 checkpoints.

Same settings on both sides; the streamed artifact must have the builder's initializers (bit for bit:
the same MLAS kernel packs both), logits within a stated tolerance, perplexity within 0.5%, and greedy
chat answers that stop at <|end|>. The builder needs torch and transformers, which the test
environment has (the torch-free build is tests/test_torch_free_build.py).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import DOCS_MODEL, FIXTURES, random_phi3_checkpoint, token_windows

from edgeslm.backends.log_likelihood import nll_per_window
from edgeslm.backends.onnx_genai import scoring
from edgeslm.backends.onnx_genai.exporter import OnnxExporter
from edgeslm.backends.onnx_genai.settings import OnnxSettings
from edgeslm.builder.exporter import ExportJob
from edgeslm.builder.source import load_source
from edgeslm.builder.text_windows import calibration_text
from edgeslm.progress import NullProgress
from edgeslm.registry import get_format

# Logit tolerance against the builder. The weights are identical; the rotary caches differ by at most
# one float32 ulp (torch's SLEEF cos/sin against numpy's correctly rounded ones). With fp32 compute
# (accuracy_level 0) that stays below 1e-3; with int8 activations (accuracy_level 4) an ulp can move an
# activation across a rounding boundary, so there the bound is relative to the logit range.
FP32_COMPUTE_ATOL = 1e-3
INT8_COMPUTE_RELATIVE = 0.02
PERPLEXITY_RTOL = 0.005


def export(source_dir: Path, out: Path, fmt: str = "onnx-int4-cpu", **settings) -> Path:
    source = load_source(str(source_dir))
    builder = settings.get("exporter") == "ort-builder"
    # the builder stores the table in the I/O dtype: fp32 on CPU, fp16 for CUDA; the streamed side does the same here
    base = {} if builder else {"embedding": "float32"}
    if fmt == "onnx-int4-cuda":
        base = {"execution_provider": "cuda"} if builder else {"embedding": "float16", "execution_provider": "cuda"}
    base.update(settings)
    chosen = OnnxSettings(**base)
    work = out.with_name(out.name + ".work")
    for folder in (out, work):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    exporter = OnnxExporter()
    exporter.check_settings(chosen, source)
    exporter.export(ExportJob(source, get_format(fmt), chosen, out, work, 4096, calibration_text(None, None, 0)),
                    NullProgress())
    return out


def initializers(artifact: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(artifact / "model.onnx"), load_external_data=True)
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def logits(artifact: Path, ids: list[int]) -> np.ndarray:
    session = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    config = json.loads((artifact / "genai_config.json").read_text())["model"]["decoder"]
    feeds = {"input_ids": np.array([ids], dtype=np.int64), "attention_mask": np.ones((1, len(ids)), dtype=np.int64)}
    for arg in session.get_inputs():
        if arg.name.startswith("past_key_values"):
            dtype = np.float16 if "float16" in arg.type else np.float32
            feeds[arg.name] = np.zeros((1, config["num_key_value_heads"], 0, config["head_size"]), dtype=dtype)
    return session.run(["logits"], feeds)[0][0].astype(np.float32)


def perplexity(artifact: Path, windows: list[list[int]]) -> float:
    nll = nll_per_window(scoring.window_logits(artifact, windows), windows)
    return math.exp(sum(nll) / sum(len(w) - 1 for w in windows))


def greedy_answer(artifact: Path, question: str) -> list[int]:
    import onnxruntime_genai as og

    model = og.Model(str(artifact))
    tokenizer = og.Tokenizer(model)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=256)
    generator = og.Generator(model, params)
    generator.append_tokens(tokenizer.encode(f"<|user|>\n{question}<|end|>\n<|assistant|>\n"))
    out = []
    while not generator.is_done():
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return out


def assert_same_initializers(streamed: Path, built: Path) -> None:
    mine, theirs = initializers(streamed), initializers(built)
    assert set(mine) == set(theirs)
    different = [name for name in theirs if not np.array_equal(mine[name], theirs[name])]
    # Plain RoPE keeps its caches as initializers. torch's float32 pow can be one ulp off the correctly
    # rounded inverse frequency numpy computes: the angle at position t then differs by t * 1 ulp.
    assert set(different) <= {"cos_cache", "sin_cache"}, different
    for name in different:
        positions = len(theirs[name])
        assert np.abs(mine[name].astype(np.float32) - theirs[name].astype(np.float32)).max() <= 2e-9 * positions + 3e-7


@pytest.fixture(scope="module")
def docs_pair(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("docs-onnx")
    return (export(DOCS_MODEL, root / "streamed"),
            export(DOCS_MODEL, root / "builder", exporter="ort-builder"))


def test_demo_model_matches_the_builder(docs_pair):
    streamed, built = docs_pair
    assert_same_initializers(streamed, built)
    ids = token_windows(1, 384)[0]
    mine, theirs = logits(streamed, ids), logits(built, ids)
    assert np.abs(mine - theirs).max() <= INT8_COMPUTE_RELATIVE * (theirs.max() - theirs.min())
    assert (mine.argmax(-1) == theirs.argmax(-1)).mean() >= 0.98
    windows = token_windows(4, 512)
    assert perplexity(streamed, windows) == pytest.approx(perplexity(built, windows), rel=PERPLEXITY_RTOL)


def test_demo_model_answers_and_stops_at_end(docs_pair):
    streamed, built = docs_pair
    end = 32007  # <|end|>
    for question in ("What does os.path.join do?", "How do I read a file line by line?"):
        answer = greedy_answer(streamed, question)
        assert answer[-1] == end and 3 < len(answer) < 200, answer
        assert answer == greedy_answer(built, question) or len(answer) > 10  # same answer, or a real one


def test_fp32_compute_logits_agree_to_1e_3(tmp_path: Path):
    streamed = export(DOCS_MODEL, tmp_path / "streamed", accuracy_level=0)
    built = export(DOCS_MODEL, tmp_path / "builder", exporter="ort-builder", accuracy_level=0)
    ids = token_windows(1, 256)[0]
    assert np.abs(logits(streamed, ids) - logits(built, ids)).max() < FP32_COMPUTE_ATOL


def _full_size_config(**changes) -> dict:
    """The real Phi-3.5-mini config (head_dim 96, the 48 real LongRoPE factors), scaled down."""
    config = json.loads((FIXTURES / "phi-3.5-mini-instruct" / "config.json").read_text())
    config.update(num_hidden_layers=2, hidden_size=384, num_attention_heads=4, num_key_value_heads=4,
                  intermediate_size=512, **changes)
    return config


SHAPES = {
    "head_dim_96_longrope": dict(),
    "no_rope_scaling": dict(rope_scaling=None, max_position_embeddings=4096, original_max_position_embeddings=4096),
    "sharded_fp32_asymmetric": dict(),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SHAPES))
def test_other_phi3_shapes_match_the_builder(tmp_path: Path, name: str):
    config = _full_size_config(**SHAPES[name])
    keep = {k: v for k, v in config.items() if k not in ("auto_map", "architectures", "model_type", "torch_dtype",
                                                          "transformers_version")}
    model = random_phi3_checkpoint(tmp_path / "model", **keep)
    settings = {}
    if name == "sharded_fp32_asymmetric":
        _reshard_as_fp32(model)
        settings = {"symmetric": False, "block_size": 64}
    assert config["hidden_size"] // config["num_attention_heads"] == 96
    streamed = export(model, tmp_path / "streamed", **settings)
    built = export(model, tmp_path / "builder", exporter="ort-builder", **settings)
    assert_same_initializers(streamed, built)
    ids = token_windows(1, 300)[0]
    mine, theirs = logits(streamed, ids), logits(built, ids)
    assert np.abs(mine - theirs).max() <= INT8_COMPUTE_RELATIVE * (theirs.max() - theirs.min())
    windows = token_windows(2, 256)
    assert perplexity(streamed, windows) == pytest.approx(perplexity(built, windows), rel=PERPLEXITY_RTOL)


def _reshard_as_fp32(model: Path) -> None:
    """Rewrite a checkpoint as two fp32 shards with an index (as sharded fp32 uploads are)."""
    from safetensors.numpy import load_file, save_file

    tensors = {k: v.astype(np.float32) for k, v in _load_bf16(model / "model.safetensors").items()}
    (model / "model.safetensors").unlink()
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for shard, keys in halves.items():
        save_file({k: tensors[k] for k in keys}, str(model / shard), metadata={"format": "pt"})
        weight_map.update({k: shard for k in keys})
    (model / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    first = "model-00001-of-00002.safetensors"
    assert load_file(str(model / first))[halves[first][0]].dtype == np.float32


def _load_bf16(path: Path) -> dict[str, np.ndarray]:
    from edgeslm.backends.onnx_genai.checkpoint_tensors import CheckpointTensors

    tensors = CheckpointTensors(path.parent)
    try:
        return {name: tensors.fp32(name) for name in tensors.entries}
    finally:
        tensors.close()


def test_cuda_variant_has_fp16_io_and_the_builders_weights(tmp_path: Path):
    streamed = export(DOCS_MODEL, tmp_path / "streamed", fmt="onnx-int4-cuda")
    built = export(DOCS_MODEL, tmp_path / "builder", fmt="onnx-int4-cuda", exporter="ort-builder")
    assert_same_initializers(streamed, built)
    session = ort.InferenceSession(str(streamed / "model.onnx"), providers=["CPUExecutionProvider"])
    assert {a.type for a in session.get_inputs() if a.name.startswith("past")} == {"tensor(float16)"}
    assert session.get_outputs()[0].type == "tensor(float16)"
    config = json.loads((streamed / "genai_config.json").read_text())
    assert config["model"]["decoder"]["session_options"]["provider_options"] == [{"cuda": {"enable_cuda_graph": "0"}}]
    ids = token_windows(1, 200)[0]
    assert np.abs(logits(streamed, ids) - logits(built, ids)).max() < 0.05  # fp16 graph run by the CPU provider


def test_inputs_embeds_variant_gives_the_same_logits(tmp_path: Path):
    from edgeslm.backends.onnx_genai.checkpoint_tensors import CheckpointTensors
    from edgeslm.backends.onnx_genai.genai_files import genai_config
    from edgeslm.backends.onnx_genai.streaming_export import decoder_plan, stream_decoder

    config = json.loads((DOCS_MODEL / "config.json").read_text())
    ids_model = tmp_path / "ids"
    embeds_model = tmp_path / "embeds"
    stream_decoder(DOCS_MODEL, ids_model, decoder_plan(config))
    stream_decoder(DOCS_MODEL, embeds_model, decoder_plan(config, inputs_embeds=True))
    assert genai_config(DOCS_MODEL, config, 4096, inputs_embeds=True)["model"]["decoder"]["inputs"]["inputs_embeds"]
    ids = token_windows(1, 128)[0]
    tensors = CheckpointTensors(DOCS_MODEL)
    embeds = tensors.fp32_rows("model.embed_tokens.weight", ids)[None]
    tensors.close()
    empty = np.zeros((1, 4, 0, 64), dtype=np.float32)
    session = ort.InferenceSession(str(embeds_model / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [a.name for a in session.get_inputs()][:2] == ["inputs_embeds", "attention_mask"]
    feeds = {"inputs_embeds": embeds, "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
             **{f"past_key_values.{i}.{kind}": empty for i in range(6) for kind in ("key", "value")}}
    from_embeds = session.run(["logits"], feeds)[0][0]
    ids_session = ort.InferenceSession(str(ids_model / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds.pop("inputs_embeds")
    from_ids = ids_session.run(["logits"], {"input_ids": np.array([ids], dtype=np.int64), **feeds})[0][0]
    assert np.array_equal(from_embeds, from_ids)


@pytest.mark.parametrize("embedding", ["float16", "int4"])
def test_smaller_embedding_tables_keep_perplexity(docs_pair, tmp_path: Path, embedding: str):
    streamed, _ = docs_pair
    small = export(DOCS_MODEL, tmp_path / embedding, embedding=embedding)
    table_bytes = {"float16": 32064 * 256 * 2, "int4": 32064 * 256 // 2 + 32064 * 256 // 32 * 4}[embedding]
    size_drop = sum(p.stat().st_size for p in streamed.glob("model.onnx*")) - sum(
        p.stat().st_size for p in small.glob("model.onnx*"))
    assert size_drop >= 32064 * 256 * 4 - table_bytes - 4096  # the fp32 table was 32.8 MB
    windows = token_windows(4, 512)
    limit = 0.001 if embedding == "float16" else 0.03
    assert perplexity(small, windows) == pytest.approx(perplexity(streamed, windows), rel=limit)
