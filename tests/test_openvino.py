"""OpenVINO target on the fixture model (CPU device here): export, quality, tokenizer, NPU path, bad input.

Both exporters are built: the recipe's default ``onnx-streaming`` (``ov_bundle``) and ``optimum-intel``
(``ov_optimum_bundle``); the IR checks and the NPU envelope run on both, and the two must score alike.

No Intel NPU exists on this machine. The NPU tests use the recorded Intel Core Ultra host tree with
OpenVINO's device list injected, and a stand-in for ``openvino_genai.LLMPipeline`` that records the
device and properties it was given and then runs the real pipeline on the CPU.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import (
    DOCS_MODEL,
    EVAL,
    PROMPTS,
    assert_clean_error,
    build_for_target,
    import_blocker,
    run_cli,
    source_perplexity,
    token_windows,
)

import edgeslm
from edgeslm.bundle.manifest import read_manifest
from edgeslm.runtime.accelerator_probe import Findings
from edgeslm.runtime.generation import ContextLengthError
from edgeslm.runtime.host_probe import probe_host

pytestmark = pytest.mark.slow  # real builds of the demo model (run by the README's test command too)

HOSTS = Path(__file__).parent / "hosts"


@pytest.fixture(scope="session")
def ov_bundle(tmp_path_factory) -> Path:
    return build_for_target(tmp_path_factory, "intel-core-ultra")


@pytest.fixture(scope="session")
def ov_optimum_bundle(tmp_path_factory) -> Path:
    return build_for_target(tmp_path_factory, "intel-core-ultra", "--set", "openvino-int4.exporter=optimum-intel")


BOTH = pytest.mark.parametrize("bundle_fixture, exporter, int4_layers", [
    ("ov_bundle", "onnx-streaming", 5),  # qkv, o, gate, up, down (the ONNX graph keeps gate and up apart)
    ("ov_optimum_bundle", "optimum-intel", 4),  # qkv, o, gate_up, down
])


def test_bundle_has_openvino_and_onnx_fallback(ov_bundle):
    m = read_manifest(ov_bundle)
    assert [a.id for a in m.artifacts] == ["openvino-int4", "onnx-int4-cpu"]
    assert m.targets["intel-core-ultra"].artifacts == ("openvino-int4", "onnx-int4-cpu")
    art = m.artifact("openvino-int4")
    files = {Path(f.path).name for f in art.files}
    assert {"openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml", "openvino_detokenizer.xml"} <= files
    assert art.runtime.package == "openvino-genai" and art.details["devices"] == ["NPU", "GPU", "CPU"]
    assert art.details["npu_properties"] == {"MAX_PROMPT_LEN": 1024, "MIN_RESPONSE_LEN": 128}
    assert art.details["npu_suitable"] is True and art.details["openvino_version"].startswith("2026")
    assert abs(art.quality.relative_change) < 0.03


@BOTH
def test_ir_weight_compression_is_what_the_recipe_asked(request, bundle_fixture, exporter, int4_layers):
    import openvino as ov

    bundle = request.getfixturevalue(bundle_fixture)
    art = read_manifest(bundle).artifact("openvino-int4")
    stats = art.quantization["ir_weights"]
    assert art.quantization["mode"] == "int4_sym" and art.quantization["group_size"] == 128
    assert art.quantization["exporter"] == exporter and art.details["exporter"].startswith(exporter)
    # Independent count from the IR on disk: symmetric int4 = signed i4 constants, groups of 128.
    model = ov.Core().read_model(str(bundle / art.path / "openvino_model.xml"))
    consts = [op for op in model.get_ops() if op.get_type_name() == "Constant"]
    i4 = [op for op in consts if op.get_output_element_type(0).get_type_name() == "i4"]
    assert len(i4) == stats["constants"]["i4"] == 6 * int4_layers
    assert {tuple(op.get_output_partial_shape(0).to_shape())[-1] for op in i4} == {128}
    assert stats["int4_group_sizes"] == {"128": 6 * int4_layers}
    assert not {"u4", "u8", "f16", "f32"} & stats["constants"].keys()  # no zero points, scales or float weights
    # embeddings and lm_head in the int8_sym backup precision, channel-wise: [32064, 256] each
    i8 = [op for op in consts if op.get_output_element_type(0).get_type_name() == "i8"]
    assert sorted(tuple(op.get_output_partial_shape(0).to_shape()) for op in i8) == [(32064, 256)] * 2
    assert stats["constants"]["i8"] == 2 and stats["int8_group_sizes"] == {"-1": 2}
    assert not [op for op in model.get_ops() if op.get_type_name() in ("If", "GroupQueryAttention")]
    assert [i.get_any_name() for i in model.inputs] == ["input_ids", "attention_mask", "position_ids", "beam_idx"]
    assert len(model.get_sinks()) == 2 * 6  # stateful: one Assign per layer's key and value


def test_onnx_route_scores_like_optimum_intel(ov_bundle, ov_optimum_bundle):
    """Same windows, both artifacts: perplexity within 0.5% (the build's own measure and the test's)."""
    from edgeslm.backends.openvino.scoring import window_nll

    new, old = (read_manifest(b).artifact("openvino-int4").quality for b in (ov_bundle, ov_optimum_bundle))
    assert new.dataset_sha256 == old.dataset_sha256 and new.windows == old.windows
    assert abs(new.artifact - old.artifact) / old.artifact <= 0.005, (new.artifact, old.artifact)
    windows = token_windows(16, 512)
    ppl = [math.exp(sum(window_nll(b / "artifacts" / "openvino-int4", windows)) / sum(len(w) - 1 for w in windows))
           for b in (ov_bundle, ov_optimum_bundle)]
    assert abs(ppl[0] - ppl[1]) / ppl[1] <= 0.005, ppl


def test_onnx_route_greedy_answers_stop_at_end(ov_bundle, ov_optimum_bundle):
    """Greedy through the runtime: the onnx-streaming artifact stops at <|end|> where optimum-intel's does."""
    def answers(bundle):
        with edgeslm.load(bundle, artifact="openvino-int4") as llm:
            return [llm.chat(messages, max_new_tokens=128) for messages in PROMPTS]

    new, old = answers(ov_bundle), answers(ov_optimum_bundle)
    assert all("<|end|>" not in r.text for r in new)
    assert [r.finish_reason for r in new] == [r.finish_reason for r in old]
    assert sum(r.finish_reason == "stop" for r in new) >= len(PROMPTS) // 2 + 1


def test_openvino_perplexity_within_3_percent(ov_bundle):
    from edgeslm.backends.openvino.scoring import window_nll

    windows = token_windows(16, 512)
    nll = window_nll(ov_bundle / "artifacts" / "openvino-int4", windows)
    ppl = math.exp(sum(nll) / sum(len(w) - 1 for w in windows))
    src = source_perplexity(16, 512)
    assert abs(ppl - src) / src <= 0.03, (src, ppl)


def test_openvino_tokenizer_matches_transformers(ov_bundle):
    import openvino_genai as ov_genai
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(DOCS_MODEL))
    tokenizer = ov_genai.Tokenizer(str(ov_bundle / "artifacts" / "openvino-int4"))
    text = (EVAL / "docs-heldout.txt").read_text()
    for chunk in [text[i:i + 4000] for i in range(0, 120_000, 4000)]:
        ids = list(tokenizer.encode(chunk, add_special_tokens=False).input_ids.data[0])
        assert ids == reference.encode(chunk, add_special_tokens=False)
    for messages in PROMPTS:
        rendered = reference.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = list(tokenizer.encode(rendered, add_special_tokens=False).input_ids.data[0])
        assert ids == reference.encode(rendered, add_special_tokens=False)
        assert 32010 in ids and 32007 in ids and 32001 in ids  # <|user|>, <|end|>, <|assistant|>


def test_runtime_runs_openvino_on_cpu_and_stops(ov_bundle):
    with edgeslm.load(ov_bundle) as llm:
        assert llm.candidate.artifact.id == "openvino-int4" and llm.candidate.device == "cpu"
        stopped = 0
        for messages in PROMPTS:
            stream = llm.stream(messages, max_new_tokens=128)
            pieces = list(stream)
            assert "".join(pieces) == stream.result.text and stream.result.text.strip()
            assert "<|end|>" not in stream.result.text
            stopped += stream.result.finish_reason == "stop"
        assert stopped >= len(PROMPTS) // 2 + 1
        a = llm.chat(PROMPTS[1], max_new_tokens=16, temperature=1.0, seed=5)
        b = llm.chat(PROMPTS[1], max_new_tokens=16, temperature=1.0, seed=5)
        assert a.text == b.text


def test_same_greedy_answer_as_onnx_mostly(ov_bundle):
    with edgeslm.load(ov_bundle, artifact="openvino-int4") as ov_llm, \
            edgeslm.load(ov_bundle, artifact="onnx-int4-cpu") as onnx_llm:
        assert ov_llm.prompt_ids(PROMPTS[0]) == onnx_llm.prompt_ids(PROMPTS[0])


def _intel_host(devices=("CPU", "GPU", "NPU"), packages=None):
    packages = packages if packages is not None else {"openvino-genai": "2026.4.1", "onnxruntime-genai": "0.18.0"}
    return probe_host(HOSTS / "intel-core-ultra", findings=Findings(packages=packages, openvino_devices=devices))


@pytest.fixture()
def npu_stand_in(monkeypatch):
    """Stands in for LLMPipeline on the NPU (none here): records the call, runs the real pipeline on CPU."""
    import openvino_genai

    real = openvino_genai.LLMPipeline
    calls: list = []

    def pipeline(path, device, **properties):
        calls.append((path, device, properties))
        return real(path, "CPU")

    monkeypatch.setattr(openvino_genai, "LLMPipeline", pipeline)
    return calls


@BOTH
def test_npu_selection_properties_and_envelope(request, bundle_fixture, exporter, int4_layers, npu_stand_in):
    bundle = request.getfixturevalue(bundle_fixture)
    details = read_manifest(bundle).artifact("openvino-int4").details
    assert details["npu_suitable"] is True and details["device_context"]["npu"] == {
        "max_prompt_tokens": 1024, "max_total_tokens": 1024 + 128, "min_response_tokens": 128}
    with edgeslm.load(bundle, host=_intel_host()) as llm:
        assert (llm.candidate.artifact.id, llm.candidate.device) == ("openvino-int4", "npu")
        assert llm.context_tokens == 1024 + 128 and llm.max_prompt_tokens == 1024
        assert "NPU static shapes" in llm.candidate.summary
        (path, device, props), = npu_stand_in
        assert device == "NPU" and props == {"MAX_PROMPT_LEN": 1024, "MIN_RESPONSE_LEN": 128}
        assert llm.chat(PROMPTS[0], max_new_tokens=8).usage.completion_tokens > 0
        with pytest.raises(ContextLengthError, match="allows 1,024"):
            llm.chat([{"role": "user", "content": "word " * 1100}])


def test_intel_selection_gpu_cpu_and_fallback(ov_bundle):
    from edgeslm.runtime.selection import rank_artifacts

    m = read_manifest(ov_bundle)
    gpu = rank_artifacts(m, _intel_host(devices=("CPU", "GPU"))).chosen
    assert (gpu.artifact.id, gpu.device) == ("openvino-int4", "gpu")
    no_ov = rank_artifacts(m, _intel_host(devices=None, packages={"onnxruntime-genai": "0.18.0"}))
    assert no_ov.chosen.artifact.id == "onnx-int4-cpu"
    assert "openvino-genai is not installed" in {r.artifact_id: r.reason for r in no_ov.rejected}["openvino-int4"]


@pytest.mark.parametrize("setting, words", [
    ("openvino-int4.mode=int4_asym", "NPU needs symmetric int4"),
    ("openvino-int4.group_size=64", "group_size 128 or -1"),
    ("openvino-int4.ratio=0.8", "ratio = 1.0"),
    ("openvino-int4.group_size=-1", "channel-wise needs exporter=optimum-intel"),
    ("openvino-int4.awq=true", "awq/scale_estimation/gptq need exporter=optimum-intel"),
])
def test_unsupported_option_combinations(tmp_path, setting, words):
    result = run_cli("build", "--target", "intel-core-ultra", "--model", str(DOCS_MODEL),
                     "--out", str(tmp_path / "o"), "--set", setting)
    assert_clean_error(result, words)
    assert not (tmp_path / "o").exists()


def test_missing_optimum_names_the_extra(tmp_path):
    result = run_cli("build", "--target", "intel-core-ultra", "--model", str(DOCS_MODEL),
                     "--out", str(tmp_path / "o"), "--set", "openvino-int4.exporter=optimum-intel",
                     env=import_blocker(tmp_path, "optimum", "nncf"))
    assert_clean_error(result, "optimum.intel", "edgeslm[build-openvino]")
