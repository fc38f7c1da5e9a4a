"""End to end: build the trained docs model for three targets, then check the manifest and the quality."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
from conftest import DOCS_MODEL, run_cli, source_perplexity, token_windows

from edgeslm.bundle.manifest import read_manifest


def test_one_artifact_shared_by_three_targets(built_bundle: Path):
    m = read_manifest(built_bundle)
    assert [a.id for a in m.artifacts] == ["onnx-int4-cpu"]
    assert set(m.targets) == {"raspberrypi5", "raspberrypi4", "cpu-x86_64"}
    assert all(entry.artifacts == ("onnx-int4-cpu",) for entry in m.targets.values())
    assert m.targets["raspberrypi4"].context_length == 2048
    assert m.targets["raspberrypi5"].context_length == 4096


def test_manifest_model_identity_and_chat(built_bundle: Path):
    m = read_manifest(built_bundle)
    assert m.schema == "edgeslm-bundle" and m.schema_version == 3
    assert m.model.architecture == "Phi3ForCausalLM"
    assert m.model.parameter_count == 21_531_904
    weights = DOCS_MODEL / "model.safetensors"
    assert m.model.source_files[0].sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    source_template = json.loads((DOCS_MODEL / "tokenizer_config.json").read_text())["chat_template"]
    assert m.chat.template == source_template
    assert m.chat.stop_token_ids[0] == 32007 and 32000 in m.chat.stop_token_ids
    assert m.chat.stop_tokens[0] == "<|end|>"


def test_manifest_artifact_entry(built_bundle: Path):
    m = read_manifest(built_bundle)
    art = m.artifacts[0]
    assert art.format == "onnx-int4-cpu" and art.device_kinds == ("cpu",)
    assert set(art.cpu_archs) == {"x86_64", "arm64"}
    assert art.runtime.package == "onnxruntime-genai"
    assert art.quantization["precision"] == "int4" and art.quantization["block_size"] == 128
    # KV cache: 2 (k, v) x 6 layers x 4 heads x 64 dims x 4 bytes (float32 on CPU)
    assert art.memory.kv_cache_bytes_per_token == 2 * 6 * 4 * 64 * 4
    assert art.memory.weight_bytes == sum(f.size for f in art.files if "/model.onnx" in f.path)
    assert art.context.max_total_tokens == 131072 and art.context.default_total_tokens == 4096
    for entry in art.files:
        data = (built_bundle / entry.path).read_bytes()
        assert len(data) == entry.size and hashlib.sha256(data).hexdigest() == entry.sha256
    genai = json.loads((built_bundle / art.path / "genai_config.json").read_text())
    assert genai["search"]["max_length"] == 4096  # never the model's 131072 default
    assert m.provenance.packages["onnxruntime-genai"]
    assert m.provenance.recipe["formats"]["onnx-int4-cpu"]["block_size"] == 128
    assert art.quality is not None and art.quality.windows == 4
    assert abs(art.quality.relative_change) < 0.03


def test_onnx_perplexity_within_3_percent_of_source(built_bundle: Path):
    import onnxruntime_genai as og

    windows = token_windows(16, 512)
    model = og.Model(str(built_bundle / "artifacts" / "onnx-int4-cpu"))
    art_nll = 0.0
    for w in windows:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(w) + 1)
        gen = og.Generator(model, params)
        gen.append_tokens(w)
        logits = np.asarray(gen.get_output("logits"), dtype=np.float64)[0, :-1]
        logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        art_nll += float((logz - logits[np.arange(len(w) - 1), w[1:]]).sum())
    src_ppl = source_perplexity(16, 512)
    art_ppl = math.exp(art_nll / sum(len(w) - 1 for w in windows))
    assert 10 < src_ppl < 40  # the trained model, not noise
    assert abs(art_ppl - src_ppl) / src_ppl <= 0.03, (src_ppl, art_ppl)


def test_inspect_and_targets_commands(built_bundle: Path):
    text = run_cli("inspect", str(built_bundle))
    assert text.returncode == 0, text
    assert "onnx-int4-cpu" in text.stdout and "raspberrypi5" in text.stdout and "perplexity" in text.stdout
    as_json = run_cli("inspect", str(built_bundle), "--json")
    assert as_json.json()["artifacts"][0]["id"] == "onnx-int4-cpu"
    tar = run_cli("inspect", str(built_bundle) + ".tar", "--json")
    assert tar.returncode == 0 and tar.json()["bundle_id"] == as_json.json()["bundle_id"]
    listed = run_cli("targets", "--json").json()
    assert {"raspberrypi5", "jetson-orin", "snapdragon-x-elite"} <= {t["name"] for t in listed}
