"""The GGUF format end to end on the demo model: build through `edgeslm build`, compare with llama.cpp's own
converter + quantizer, run through edgeslm.load, the Ollama Modelfile's template, and damaged input.

llama.cpp's converter is the one vendored in llama-cpp-python's sdist (benchmarks/.venv/llama.cpp when the
benchmark environment exists, else the sdist of the installed version fetched from PyPI with pip; no weights
are downloaded). It runs in this environment (torch, sentencepiece, safetensors: the build-onnx-builder extra).
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import (
    DOCS_MODEL,
    EVAL,
    PROMPTS,
    REPO,
    assert_clean_error,
    build_for_target,
    run_cli,
    source_perplexity,
    token_windows,
)
from go_template import render

from edgeslm.backends.gguf import modelfile
from edgeslm.backends.gguf.gguf_file import read_header
from edgeslm.bundle.manifest import read_manifest
from edgeslm.runtime.chat_template import ChatTemplate

pytestmark = pytest.mark.slow  # real builds of the demo model (run by the README's test command too)
llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

ART = "gguf"
NAMING_KEYS = {"general.name", "general.basename", "general.size_label", "GGUF.kv_count"}  # naming only


def gguf_data_dir(tmp_path: Path) -> dict:
    """The shipped targets and recipes plus a target that takes only the gguf format."""
    data = tmp_path / "data"
    shutil.copytree(REPO / "targets", data / "targets")
    shutil.copytree(REPO / "recipes", data / "recipes")
    (data / "targets" / "gguf-box.toml").write_text(
        'name = "gguf-box"\ndescription = "A CPU box that runs llama.cpp"\nos = ["linux"]\ncpu_arch = "x86_64"\n'
        'ram_gb = [8]\nformats = ["gguf"]\n\n[planning]\nmemory_bandwidth_gbps = 10.0\ndefault_context_length = 2048\n')
    return {"EDGESLM_DATA_DIR": str(data)}


def build_gguf(tmp_path: Path, *extra: str) -> Path:
    out = tmp_path / "gguf.bundle"
    result = run_cli("build", "--target", "gguf-box", "--model", str(DOCS_MODEL), "--out", str(out),
                     "--eval-text", str(EVAL / "docs-heldout.txt"), "--eval-windows", "4", *extra, "--json",
                     env=gguf_data_dir(tmp_path))
    assert result.returncode == 0, result
    return out


@pytest.fixture(scope="module")
def gguf_bundle(tmp_path_factory) -> Path:
    return build_gguf(tmp_path_factory.mktemp("gguf"))


@pytest.fixture(scope="module")
def converter(tmp_path_factory) -> Path:
    """llama.cpp's convert_hf_to_gguf.py from llama-cpp-python's sdist."""
    for candidate in (os.environ.get("EDGESLM_LLAMA_CONVERTER"),
                      REPO / "benchmarks" / ".venv" / "llama.cpp" / "convert_hf_to_gguf.py"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    version = importlib.metadata.version("llama-cpp-python")
    folder = tmp_path_factory.mktemp("llama-sdist")
    fetched = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                              f"llama-cpp-python=={version}", "-d", str(folder)],
                             capture_output=True, text=True, timeout=900)
    sdist = next(folder.glob("llama_cpp_python-*.tar.gz"), None)
    if sdist is None:
        pytest.skip(f"llama-cpp-python {version}'s sdist could not be fetched: {fetched.stderr[-500:]}")
    vendor = f"{sdist.name[:-len('.tar.gz')]}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(vendor) and m.isfile() and
                   m.name[len(vendor):].split("/")[0] in ("convert_hf_to_gguf.py", "conversion", "gguf-py", "models")]
        tar.extractall(folder, members=members, filter="data")
    return folder / vendor / "convert_hf_to_gguf.py"


@pytest.fixture(scope="module")
def llama_q4_0(converter, tmp_path_factory) -> Path:
    """llama.cpp's own route: the converter's F16 GGUF, quantized by llama_model_quantize's default Q4_0 recipe."""
    work = tmp_path_factory.mktemp("llama-ref")
    f16, out = work / "ref-f16.gguf", work / "ref.gguf"
    proc = subprocess.run([sys.executable, str(converter), str(DOCS_MODEL), "--outfile", str(f16), "--outtype", "f16"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    assert llama_cpp.llama_model_quantize(str(f16).encode(), str(out).encode(), ctypes.byref(params)) == 0
    return out


def perplexity(folder: Path, windows: list[list[int]]) -> float:
    """Perplexity of the GGUF artifact folder ``folder`` (its model.gguf) on the windows, scored by edgeslm."""
    from edgeslm.backends.gguf import scoring
    from edgeslm.backends.log_likelihood import nll_per_window

    nll = nll_per_window(scoring.window_logits(folder, windows), windows)
    return math.exp(sum(nll) / sum(len(w) - 1 for w in windows))


def test_manifest_entry_memory_model_and_quality(gguf_bundle):
    manifest = read_manifest(gguf_bundle)
    art = manifest.artifact(ART)
    assert art.format == "gguf" and art.device_kinds == ("cpu",) and set(art.cpu_archs) == {"x86_64", "arm64"}
    assert art.runtime.package == "llama-cpp-python"
    assert art.quantization["quant_type"] == "Q4_0"
    # 6 layers x 6 2-D weights + the table in Q4_0, lm_head in Q8_0, 6 x 2 norms + final norm + 2 rope factor tensors
    assert art.quantization["tensor_types"] == {"F32": 15, "Q4_0": 25, "Q8_0": 1}
    assert art.memory.kv_cache_dtype == "float16"
    assert art.memory.kv_cache_bytes_per_token == 2 * 6 * 4 * 64 * 2  # K and V, layers x kv heads x head dim, f16
    gguf_file = gguf_bundle / art.path / "model.gguf"
    assert art.memory.weight_bytes == gguf_file.stat().st_size
    assert art.context.max_total_tokens == 131072 and art.context.default_total_tokens == 2048
    assert art.details["kv_cache_type"] == "f16" and art.details["modelfile"] == "Modelfile"
    assert {f.path for f in art.files} == {f"{art.path}/model.gguf", f"{art.path}/Modelfile"}
    assert art.quality is not None and art.quality.windows == 4 and abs(art.quality.relative_change) < 0.03
    assert manifest.provenance.packages["gguf"] and manifest.provenance.packages["llama-cpp-python"]


def test_tensors_and_metadata_match_llama_cpp_s_converter(gguf_bundle, llama_q4_0):
    ours = gguf.GGUFReader(str(gguf_bundle / "artifacts" / ART / "model.gguf"))
    ref = gguf.GGUFReader(str(llama_q4_0))
    assert set(ref.fields) - set(ours.fields) <= NAMING_KEYS
    for key in set(ours.fields) - NAMING_KEYS:
        mine, theirs = ours.fields[key], ref.fields[key]
        assert mine.types == theirs.types, key
        assert [bytes(mine.parts[i]) for i in mine.data] == [bytes(theirs.parts[i]) for i in theirs.data], key
    theirs = {t.name: t for t in ref.tensors}
    assert {t.name for t in ours.tensors} == set(theirs)
    for tensor in ours.tensors:
        other = theirs[tensor.name]
        assert list(tensor.shape) == list(other.shape), tensor.name
        if tensor.name == "output.weight":  # llama.cpp's Q4_0 recipe: Q6_K, which gguf-py cannot write
            assert (tensor.tensor_type.name, other.tensor_type.name) == ("Q8_0", "Q6_K")
            continue
        assert tensor.tensor_type == other.tensor_type, tensor.name
        assert bytes(tensor.data) == bytes(other.data), tensor.name  # the same reference quantizer, bit for bit


def test_perplexity_equals_llama_cpp_s_within_noise(gguf_bundle, llama_q4_0):
    windows = token_windows(8, 512)
    ours = perplexity(gguf_bundle / "artifacts" / ART, windows)
    ref_folder = llama_q4_0.parent / "artifact"
    ref_folder.mkdir(exist_ok=True)
    if not (ref_folder / "model.gguf").exists():
        os.link(llama_q4_0, ref_folder / "model.gguf")
    ref = perplexity(ref_folder, windows)
    source = source_perplexity(8, 512)
    assert 10 < source < 40
    assert abs(ours - ref) / ref < 0.005, (ours, ref)
    assert abs(ours - source) / source < 0.03, (ours, source)


def test_q8_0_build_and_q8_kv_cache(tmp_path):
    bundle = build_gguf(tmp_path, "--set", "gguf.quant_type=Q8_0", "--set", "gguf.kv_cache_type=q8_0")
    art = read_manifest(bundle).artifact(ART)
    assert art.quantization["tensor_types"] == {"F32": 15, "Q8_0": 26}
    assert art.memory.kv_cache_dtype == "q8_0" and art.memory.kv_cache_bytes_per_token == 2 * 6 * 4 * 64 * 34 // 32
    assert abs(art.quality.relative_change) < 0.01
    import edgeslm

    with edgeslm.load(bundle) as llm:
        result = llm.chat([{"role": "user", "content": "What does `os.getcwd()` return?"}], max_new_tokens=48)
    assert result.finish_reason == "stop" and result.text.strip()


def test_q4_k_m_through_llama_cpp_s_quantizer(tmp_path):
    bundle = build_gguf(tmp_path, "--set", "gguf.quant_type=Q4_K_M")
    art = read_manifest(bundle).artifact(ART)
    types = art.quantization["tensor_types"]
    assert types.get("Q4_K") and types.get("Q6_K"), types
    assert abs(art.quality.relative_change) < 0.03
    assert not (bundle / art.path / "model-f16.gguf").exists()


def test_edgeslm_load_answers_and_stops_at_end(gguf_bundle):
    from tokenizers import Tokenizer

    import edgeslm

    source_tokenizer = Tokenizer.from_file(str(DOCS_MODEL / "tokenizer.json"))
    with edgeslm.load(gguf_bundle, threads=2) as llm:
        assert llm.candidate.artifact.id == ART and llm.context_tokens == 2048
        for messages in PROMPTS:  # llama.cpp's tokenizer gives the source tokenizer's ids for the chat prompts
            text = llm.template.render(messages)
            assert llm.engine.encode(text) == source_tokenizer.encode(text, add_special_tokens=False).ids
        result = llm.chat([{"role": "user", "content": "What does `os.getcwd()` return?"}], max_new_tokens=48)
        assert result.finish_reason == "stop" and result.text.strip(), result
        assert "<|end|>" not in result.text and result.usage.completion_tokens < 48
        short = llm.chat(PROMPTS[0], max_new_tokens=3)
        assert short.finish_reason == "length" and short.usage.completion_tokens == 3
        sampled = [llm.chat(PROMPTS[0], max_new_tokens=16, temperature=0.9, top_k=40, seed=7).text for _ in range(2)]
        assert sampled[0] == sampled[1]  # the same seed, the same sample


def test_cli_run_and_doctor(gguf_bundle, tmp_path):
    env = gguf_data_dir(tmp_path)
    answer = run_cli("run", str(gguf_bundle), "What does os.getcwd() return?", "--max-new-tokens", "48", env=env)
    assert answer.returncode == 0 and answer.stdout.strip(), answer
    doctor = run_cli("doctor", str(gguf_bundle), "--json", env=env)
    assert doctor.returncode == 0 and doctor.json()["chosen"] == ART, doctor


def test_modelfile_template_renders_the_chat_template_exactly(gguf_bundle):
    manifest = read_manifest(gguf_bundle)
    text = (gguf_bundle / "artifacts" / ART / "Modelfile").read_text()
    assert text.splitlines()[1] == "FROM ./model.gguf"
    for stop in ("<|end|>", "<|endoftext|>", "<|assistant|>"):
        assert f'PARAMETER stop "{stop}"' in text
    assert "PARAMETER num_ctx 2048" in text  # the planned context of the target, never the model's 131072
    template = modelfile.read_template(text)
    jinja = ChatTemplate(manifest.chat)
    conversations = [*PROMPTS, *modelfile.PROBES,
                     [{"role": "system", "content": "Answer in one line."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello!\n\nHow can I help?"}, {"role": "user", "content": "  x "}]]
    for messages in conversations:
        go_messages = [{"Role": m["role"], "Content": m["content"]} for m in messages]
        assert render(template, {"Messages": go_messages}) == jinja.render(messages), messages


def test_go_template_renderer_follows_go_trim_and_truth_rules():
    assert render("a  {{- .X -}}  b", {"X": 1}) == "a1b"
    assert render('{{ if or (ne .R "s") .C }}y{{ else }}n{{ end }}', {"R": "s", "C": ""}) == "n"
    assert render('{{ range .L }}[{{ . }}]{{ end }}', {"L": [1, 2]}) == "[1][2]"
    with pytest.raises(ValueError):
        render("{{ template \"x\" }}", {})


def _damaged(gguf_bundle: Path, tmp_path: Path, change) -> Path:
    copy = tmp_path / "damaged.bundle"
    shutil.copytree(gguf_bundle, copy)
    path = copy / "artifacts" / ART / "model.gguf"
    path.write_bytes(change(path.read_bytes()))
    return copy


def _replace_after(data: bytes, marker: bytes, old: bytes, new: bytes) -> bytes:
    at = data.index(old, data.index(marker))
    return data[:at] + new + data[at + len(old):]


@pytest.mark.parametrize("change, words", [
    (lambda d: d[: len(d) // 2], ["model.gguf is truncated", "hint:"]),
    (lambda d: b"NOPE" + d[4:], ["model.gguf is not a GGUF file"]),
    (lambda d: _replace_after(d, b"general.architecture", b"phi3", b"phi2"), ["is a 'phi2' model", "Phi3ForCausalLM"]),
    (lambda d: _replace_after(d, b"tokenizer.ggml.tokens", b"<|end|>", b"<|enx|>"),
     ["token 32007 is '<|enx|>'", "'<|end|>'"]),
])
def test_damaged_or_foreign_gguf_is_refused_in_one_line(gguf_bundle, tmp_path, change, words):
    bundle = _damaged(gguf_bundle, tmp_path, change)
    result = run_cli("run", str(bundle), "hi", "--verify", "off", env=gguf_data_dir(tmp_path))
    assert_clean_error(result, *words)
    assert result.returncode == 9


def test_a_tensor_type_edgeslm_does_not_use_is_refused(gguf_bundle, tmp_path):
    source = gguf_bundle / "artifacts" / ART / "model.gguf"
    header = read_header(source)
    data = bytearray(source.read_bytes())
    name = b"output.weight"
    at = data.index(len(name).to_bytes(8, "little") + name) + 8 + len(name)
    dims = int.from_bytes(data[at:at + 4], "little")
    data[at + 4 + 8 * dims: at + 8 + 8 * dims] = (16).to_bytes(4, "little")  # IQ2_XXS
    bundle = _damaged(gguf_bundle, tmp_path, lambda _: bytes(data))
    result = run_cli("run", str(bundle), "hi", "--verify", "off", env=gguf_data_dir(tmp_path))
    assert_clean_error(result, "tensor 'output.weight' has ggml type 16", "hint:")
    assert header.type_counts()["Q8_0"] == 1


def test_unsupported_quant_type_and_missing_tokenizer_model_are_refused(tmp_path):
    env = gguf_data_dir(tmp_path)
    bad = run_cli("build", "--target", "gguf-box", "--model", str(DOCS_MODEL), "--out", str(tmp_path / "x.bundle"),
                  "--no-eval", "--set", "gguf.quant_type=Q2_K", env=env)
    assert_clean_error(bad, "quant_type", "Q2_K")
    model = tmp_path / "no-spm"
    shutil.copytree(DOCS_MODEL, model)
    (model / "tokenizer.model").unlink()
    missing = run_cli("build", "--target", "gguf-box", "--model", str(model), "--out", str(tmp_path / "y.bundle"),
                      "--no-eval", env=env)
    assert_clean_error(missing, "no tokenizer.model", "hint:")
    assert not (tmp_path / "y.bundle").exists()


def test_truncated_copy_is_caught_by_verification_first(gguf_bundle, tmp_path):
    bundle = _damaged(gguf_bundle, tmp_path, lambda d: d[:-100])
    assert_clean_error(run_cli("run", str(bundle), "hi", env=gguf_data_dir(tmp_path)), "model.gguf")


def test_modelfile_is_skipped_for_a_chat_template_that_is_not_phi3_s(tmp_path):
    model = tmp_path / "other-template"
    shutil.copytree(DOCS_MODEL, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    out = tmp_path / "o.bundle"
    assert run_cli("build", "--target", "gguf-box", "--model", str(model), "--out", str(out), "--no-eval",
                   env=gguf_data_dir(tmp_path)).returncode == 0
    art = read_manifest(out).artifact(ART)
    assert art.details["modelfile"] == "" and "not the Phi-3 format" in art.details["modelfile_skipped"]
    assert not (out / art.path / "Modelfile").exists()


def test_ollama_target_prefers_gguf_and_falls_back_to_onnx(tmp_path_factory):
    from edgeslm.runtime.accelerator_probe import Findings
    from edgeslm.runtime.host_probe import probe_host
    from edgeslm.runtime.selection import rank_artifacts

    bundle = build_for_target(tmp_path_factory, "ollama")
    manifest = read_manifest(bundle)
    assert [a.id for a in manifest.artifacts] == ["gguf", "onnx-int4-cpu"]
    assert manifest.targets["ollama"].artifacts == ("gguf", "onnx-int4-cpu")
    assert "PARAMETER num_ctx 4096" in (bundle / "artifacts" / ART / "Modelfile").read_text()
    versions = {name: importlib.metadata.version(name) for name in ("llama-cpp-python", "onnxruntime-genai")}
    both = rank_artifacts(manifest, probe_host(findings=Findings(packages=versions)))
    assert [c.artifact.id for c in both.ranked] == ["gguf", "onnx-int4-cpu"]
    without = rank_artifacts(manifest, probe_host(findings=Findings(packages={"onnxruntime-genai": versions[
        "onnxruntime-genai"]})))
    assert without.chosen.artifact.id == "onnx-int4-cpu"
    assert [(r.artifact_id, r.reason) for r in without.rejected] == [
        ("gguf", "runtime package llama-cpp-python is not installed (pip install 'edgeslm[llama]')")]
    doctor = run_cli("doctor", str(bundle))
    assert doctor.returncode == 0 and "✓ gguf: chosen" in doctor.stdout and "· onnx-int4-cpu: fallback" in doctor.stdout
