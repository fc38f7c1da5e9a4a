"""The backend registry: built-in declarations, a plugin from an entry point, fast tests on a fake backend.

The fake backend is ``tests/plugins/edgeslm_echo`` (a format whose "model" echoes a fixed reply): it
stands in for a real engine only where the logic under test is edgeslm's own (selection, the CLI's error
paths, a plugin's life cycle), so these tests need no build. Every real backend is exercised by the
contract test at the end, on real artifacts of the demo model.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import DOCS_MODEL, REPO, assert_clean_error, run_cli

from edgeslm import registry
from edgeslm.backend import Backend, Placement
from edgeslm.bundle.checksums import sha256_file
from edgeslm.bundle.manifest import read_manifest
from edgeslm.runtime.accelerator_probe import Findings
from edgeslm.runtime.host_probe import probe_host
from edgeslm.runtime.selection import rank_artifacts

PLUGINS = REPO / "tests" / "plugins"
HOSTS = REPO / "tests" / "hosts"


def install_echo_plugin(tmp_path: Path, entry: str = "edgeslm_echo:BACKEND", name: str = "echo") -> dict:
    """A site folder holding the plugin and its dist-info (entry point included): the environment to use it."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    shutil.copytree(PLUGINS / "edgeslm_echo", site / "edgeslm_echo", dirs_exist_ok=True)
    dist = site / f"edgeslm_{name}-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: edgeslm-{name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[edgeslm.backends]\n{name} = {entry}\n")
    return {"PYTHONPATH": str(site)}


def echo_data_dir(tmp_path: Path) -> dict:
    """The shipped targets and recipes plus a target that takes the plugin's format (recipes unchanged)."""
    data = tmp_path / "data"
    shutil.copytree(REPO / "targets", data / "targets")
    shutil.copytree(REPO / "recipes", data / "recipes")
    (data / "targets" / "echo-box.toml").write_text(
        'name = "echo-box"\ndescription = "A device that runs the echo plugin"\nos = ["linux"]\n'
        'cpu_arch = "x86_64"\nram_gb = [8]\nformats = ["echo-bytes"]\n\n[planning]\n'
        'memory_bandwidth_gbps = 10.0\ndefault_context_length = 2048\n')
    return {"EDGESLM_DATA_DIR": str(data)}


def _python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_builtin_backends_declare_every_format_and_import_no_engine():
    code = ("import sys; from edgeslm import registry; "
            "print(sorted(registry.formats())); print([b.name for b in registry.backends().values()]); "
            "heavy = [m for m in ('onnxruntime_genai', 'openvino', 'openvino_genai', 'mlx', 'onnxruntime', 'torch', "
            "'llama_cpp', 'gguf', 'transformers', 'numpy', 'httpx') if m in sys.modules]; print(heavy)")
    out = _python(code, {}).stdout.splitlines()
    assert out[0] == str(sorted(["onnx-int4-cpu", "onnx-int4-cuda", "openvino-int4", "mlx", "qnn-context", "gguf"]))
    assert out[1] == str(["onnx_genai", "openvino", "mlx", "qnn", "gguf", "remote"])  # remote: no format (the cloud)
    assert out[2] == "[]"  # declarations are standard library only


def test_plugin_from_an_entry_point_builds_and_runs_without_touching_edgeslm(tmp_path):
    env = {**install_echo_plugin(tmp_path), **echo_data_dir(tmp_path)}
    listed = _python("from edgeslm import registry; b = registry.backend_of('echo-bytes'); "
                     "print(b.name, b.distribution, registry.load_problems())", env)
    assert listed.stdout.split() == ["echo", "edgeslm-echo", "()"], listed.stderr
    out = tmp_path / "echo.bundle"
    built = run_cli("build", "--target", "echo-box", "--model", str(DOCS_MODEL), "--out", str(out), "--no-eval",
                    "--set", "echo-bytes.reply=Plugged in.", env=env)
    assert built.returncode == 0, built
    manifest = json.loads((out / "manifest.json").read_text())
    assert [a["id"] for a in manifest["artifacts"]] == ["echo-bytes"]
    assert manifest["provenance"]["recipe"]["formats"]["echo-bytes"] == {"reply": "Plugged in."}
    answer = run_cli("run", str(out), "Say something.", env=env)
    assert answer.returncode == 0, answer
    assert answer.stdout.strip() == "Plugged in."
    doctor = run_cli("doctor", str(out), "--json", env=env)
    assert doctor.returncode == 0, doctor
    assert doctor.json()["backends"]["echo"] == "edgeslm-echo" and doctor.json()["chosen"] == "echo-bytes"
    # Without the plugin installed the same bundle is refused with the reason, not a traceback.
    assert_clean_error(run_cli("run", str(out), "hi"), "unknown format 'echo-bytes'", "plugin")


def test_broken_or_clashing_plugins_are_reported_and_left_out(tmp_path):
    env = install_echo_plugin(tmp_path, entry="edgeslm_missing_module:BACKEND", name="broken")
    install_echo_plugin(tmp_path, entry="edgeslm_echo.clash:BACKEND", name="clash")
    (tmp_path / "site" / "edgeslm_echo" / "clash.py").write_text(
        "from edgeslm.backend import Backend, FormatSpec\n"
        "BACKEND = Backend(name='clash', formats=(FormatSpec('onnx-int4-cpu', 'cpu', ('x86_64',), 'x', '1', 'x', 'x',"
        " 'edgeslm_echo.echo:EchoSettings'),))\n")
    result = _python("from edgeslm import registry; print(len(registry.formats())); "
                     "print(registry.backend_of('onnx-int4-cpu').name); print('\\n'.join(registry.load_problems()))", env)
    lines = result.stdout.splitlines()
    assert lines[0] == "6" and lines[1] == "onnx_genai", result.stderr
    assert any("'broken'" in line and "failed to load" in line and "ModuleNotFoundError" in line for line in lines[2:])
    assert any("'clash'" in line and "onnx-int4-cpu" in line and "already serves" in line for line in lines[2:])
    doctor = run_cli("doctor", env=env)
    assert doctor.returncode == 0 and "failed to load" in doctor.stdout, doctor


@pytest.fixture()
def echo_registered():
    """The fake backend registered in this process (edgeslm.registry.register), removed afterwards."""
    sys.path.insert(0, str(PLUGINS))
    import edgeslm_echo

    registry.register(edgeslm_echo.BACKEND)
    yield edgeslm_echo.BACKEND
    registry.reload()
    sys.path.remove(str(PLUGINS))


def _hand_written_bundle(folder: Path, formats: list[tuple[str, tuple[str, ...]]]) -> Path:
    """A bundle written by hand (no build): the demo model's chat info, echo artifacts with checksums."""
    template = json.loads((DOCS_MODEL / "tokenizer_config.json").read_text())["chat_template"]
    artifacts = []
    for art_id, archs in formats:
        art_dir = folder / "artifacts" / art_id
        art_dir.mkdir(parents=True)
        (art_dir / "echo.json").write_text(json.dumps({"reply": f"I am {art_id}."}))
        artifacts.append({
            "id": art_id, "format": art_id, "path": f"artifacts/{art_id}",
            "runtime": {"package": "edgeslm", "min_version": "0.1.0"}, "device_kinds": ["cpu"],
            "cpu_archs": list(archs), "quantization": {"method": "none"},
            "context": {"max_total_tokens": 4096, "max_prompt_tokens": 4095, "default_total_tokens": 2048},
            "memory": {"weight_bytes": 64, "kv_cache_bytes_per_token": 0, "kv_cache_dtype": "none",
                       "runtime_overhead_bytes": 2**20},
            "files": [{"path": f"artifacts/{art_id}/echo.json", "size": (art_dir / "echo.json").stat().st_size,
                       "sha256": sha256_file(art_dir / "echo.json")}]})
    manifest = {
        "schema": "edgeslm-bundle", "schema_version": 2, "bundle_id": "hand-written-000000000000",
        "model": {"name": "hand-written", "architecture": "Phi3ForCausalLM", "model_type": "phi3", "parameter_count": 1,
                  "hidden_size": 256, "num_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 4,
                  "vocab_size": 32064, "max_position_embeddings": 4096, "source_files": []},
        "chat": {"template": template, "stop_token_ids": [32007, 32000], "stop_tokens": ["<|end|>", "<|endoftext|>"],
                 "bos_token": "<s>", "eos_token": "<|endoftext|>", "add_bos_token": False, "special_tokens": {}},
        "artifacts": artifacts,
        "targets": {"echo-box": {"artifacts": [a[0] for a in formats], "context_length": 2048}},
        "provenance": {"edgeslm_version": "0.1.0", "created": "2026-12-01T00:00:00+00:00", "packages": {},
                       "recipe": {}, "build_host": {}, "duration_s": 0.0},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_selection_on_a_hand_written_manifest_with_the_fake_backend(echo_registered, tmp_path):
    bundle = _hand_written_bundle(tmp_path / "b", [("echo-bytes", ("arm64",))])
    pi = probe_host(HOSTS / "raspberrypi5", findings=Findings(packages={"edgeslm": "0.1.0"}))
    chosen = rank_artifacts(read_manifest(bundle), pi).chosen
    assert (chosen.artifact.id, chosen.device, chosen.spec.backend) == ("echo-bytes", "cpu", "echo")
    laptop = probe_host(HOSTS / "intel-core-ultra", findings=Findings(packages={"edgeslm": "0.1.0"}))
    rejected = rank_artifacts(read_manifest(bundle), laptop).rejected
    assert [r.reason for r in rejected] == ["built for arm64, this host is x86_64"]
    bare = probe_host(HOSTS / "raspberrypi5", findings=Findings(packages={}))
    reasons = [r.reason for r in rank_artifacts(read_manifest(bundle), bare).rejected]
    assert reasons == ["runtime package edgeslm is not installed (pip install 'edgeslm[echo]')"]


def test_a_backend_placement_rule_decides(echo_registered, tmp_path, monkeypatch):
    from edgeslm.backend import Rejection

    bundle = _hand_written_bundle(tmp_path / "b", [("echo-bytes", ("x86_64", "arm64"))])
    calls = []

    def place(self, fmt, host, artifact, explicit):
        calls.append((fmt.name, artifact.id, explicit))
        return Placement("cpu") if explicit else Rejection("only when asked for")

    monkeypatch.setattr(Backend, "placement", place)
    host = probe_host(findings=Findings(packages={"edgeslm": "0.1.0"}))
    assert [r.reason for r in rank_artifacts(read_manifest(bundle), host).rejected] == ["only when asked for"]
    assert rank_artifacts(read_manifest(bundle), host, artifact_id="echo-bytes").chosen.device == "cpu"
    assert calls == [("echo-bytes", "echo-bytes", False), ("echo-bytes", "echo-bytes", True)]


def test_cli_runs_the_fake_backend_in_process(echo_registered, tmp_path):
    from edgeslm.cli import cli

    bundle = _hand_written_bundle(tmp_path / "b", [("echo-bytes", ("x86_64", "arm64"))])
    result = CliRunner().invoke(cli, ["run", str(bundle), "Hello?"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "I am echo-bytes."


@pytest.mark.parametrize("args, code, words", [
    (["verify", "/no/such/bundle"], 9, "bundle /no/such/bundle does not exist"),
    (["build", "--target", "nope"], 2, "unknown target 'nope'"),
    (["run", "{bundle}", "hi", "--artifact", "nope"], 2, "bundle has no artifact 'nope'"),
    (["run", "{bundle}", "hi", "--context", "8"], 2, "context of 8 tokens is too small"),
    (["inspect", "{bundle}/manifest.json"], 9, "is not a bundle folder"),
])
def test_error_paths_are_one_line_with_an_exit_code(echo_registered, tmp_path, args, code, words):
    from edgeslm.cli import cli

    bundle = _hand_written_bundle(tmp_path / "b", [("echo-bytes", ("x86_64", "arm64"))])
    result = CliRunner().invoke(cli, [a.replace("{bundle}", str(bundle)) for a in args])
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("edgeslm: error:")]
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in result.output


# --- the contract every registered backend keeps, on real artifacts of the demo model -------------------------------

BUILTIN = [name for name in registry.backends() if name in ("onnx_genai", "openvino", "mlx", "qnn", "gguf")]


@pytest.mark.slow
@pytest.mark.parametrize("backend_name", BUILTIN)
def test_backend_contract(backend_name, default_bundle):
    backend = registry.backends()[backend_name]
    manifest = read_manifest(default_bundle)
    built = [a for a in manifest.artifacts if registry.formats()[a.format].backend == backend_name]
    assert built, f"the default bundle has no artifact of backend {backend_name}"
    recipe = manifest.provenance.recipe["formats"]
    host = probe_host()
    for art in built:
        spec = registry.formats()[art.format]
        settings = spec.settings_class()(**{k: v for k, v in recipe[art.format].items() if k != "socs"})
        assert settings is not None  # the recipe's settings load into the backend's class
        windows = [list(range(1000, 1064))]
        logits = next(iter(backend.scorer().window_logits(default_bundle / art.path, windows)))
        nll = -sum(float(v) for v in _log_softmax_rows(logits, windows[0][1:]))
        assert math.isfinite(nll) and nll > 0, art.id
        placed = backend.placement(spec, host, art, explicit=True)
        if not isinstance(placed, Placement):
            continue  # e.g. the CUDA artifact on a host without a GPU: scored above, not run
        import edgeslm

        with edgeslm.load(default_bundle, artifact=art.id) as llm:
            result = llm.chat(SHORT_PROMPT, max_new_tokens=48)
        assert result.finish_reason == "stop" and result.text.strip(), (art.id, result)
        assert "<|end|>" not in result.text


# The demo model answers this in 10-17 tokens in every format (the QNN engine runs on the slow HTP simulator here).
SHORT_PROMPT = [{"role": "user", "content": "What does `os.getcwd()` return?"}]


def _log_softmax_rows(logits, targets):
    import numpy as np

    rows = np.asarray(logits, dtype=np.float64)
    rows = rows - rows.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(rows).sum(axis=-1))
    return rows[np.arange(len(targets)), targets] - log_z


def test_server_logic_with_the_fake_backend_and_the_openai_client(tmp_path, monkeypatch):
    # The server process loads the plugin (the fake engine answers at once), so this checks edgeslm's own
    # request handling with the official client and no real model: plain, streamed, and a stop string.
    import openai
    from test_serve import Server

    env = {**install_echo_plugin(tmp_path), **echo_data_dir(tmp_path)}
    out = tmp_path / "echo.bundle"
    assert run_cli("build", "--target", "echo-box", "--model", str(DOCS_MODEL), "--out", str(out), "--no-eval",
                   "--set", "echo-bytes.reply=Fast answers. No model.", env=env).returncode == 0
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    server = Server(out, "--api-key", "k")
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0, timeout=30)
        ask = [{"role": "user", "content": "Hi"}]
        reply = client.chat.completions.create(model="phi3-docs-21m", messages=ask)
        assert reply.choices[0].message.content == "Fast answers. No model."
        assert reply.choices[0].finish_reason == "stop"
        pieces = client.chat.completions.create(model="phi3-docs-21m", messages=ask, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in pieces if c.choices) == "Fast answers. No model."
        stopped = client.chat.completions.create(model="phi3-docs-21m", messages=ask, stop=[" No"])
        assert stopped.choices[0].message.content == "Fast answers." and stopped.choices[0].finish_reason == "stop"
    finally:
        server.stop()
