"""The remote engine against local stand-ins only: the presets' paths and headers, streaming, stop strings,
retries, errors, timeouts, images as data URLs, remote.toml, and ``edgeslm serve`` itself as the upstream.

No test calls a real cloud service: ``remote_standin.StandIn`` checks what each preset must send (path,
key header, api-version, model id) and answers what the test plans (SSE, JSON, 401/404/429/500, hangs).
The key is ``remote_standin.KEY``; every error and log is checked not to contain it.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import time

import pytest
from conftest import FIXTURES
from remote_standin import KEY, StandIn, completion, hang, open_remote, sse, status, write_remote_toml

import edgeslm
from edgeslm.backends.remote.presets import resolve_endpoint
from edgeslm.backends.remote.settings import find_remote_config, load_remote_config
from edgeslm.errors import ConfigError, RemoteAuthError, RemoteError, RemoteInputError, RemoteNotFoundError

ASK = [{"role": "user", "content": "What does os.path.join do?"}]
SHAPES = FIXTURES / "images" / "shapes-336.png"

PRESETS = {
    "github-models": dict(base="/inference", env="GITHUB_TOKEN", header="authorization", value=f"Bearer {KEY}",
                          query={}, model="microsoft/Phi-3.5-mini-instruct", vision="microsoft/Phi-3.5-vision-instruct"),
    "azure-ai-inference": dict(base="/models", env="AZURE_INFERENCE_CREDENTIAL", header="api-key", value=KEY,
                               query={"api-version": "2024-05-01-preview"}, model="Phi-3.5-mini-instruct",
                               vision="Phi-3.5-vision-instruct"),
    "nvidia-nim": dict(base="/v1", env="NVIDIA_API_KEY", header="authorization", value=f"Bearer {KEY}", query={},
                       model="microsoft/phi-3.5-mini-instruct", vision="microsoft/phi-3.5-vision-instruct"),
}


@pytest.fixture(autouse=True)
def _clean_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "user-config"))
    monkeypatch.delenv("EDGESLM_REMOTE_CONFIG", raising=False)
    for case in PRESETS.values():
        monkeypatch.setenv(case["env"], KEY)


@pytest.fixture()
def github(tmp_path):
    """A GitHub Models stand-in and the remote fallback pointed at it (fast retries)."""
    case = PRESETS["github-models"]
    with StandIn(path="/inference/chat/completions", value=case["value"], models=(case["model"], case["vision"])) as s:
        config = write_remote_toml(tmp_path, preset="github-models", base_url=s.url + "/inference", backoff_s=0.01,
                                   max_retries=2, timeout_s=5.0)
        with open_remote(config) as remote:
            yield s, remote


def _config(tmp_path, standin, **keys):
    return write_remote_toml(tmp_path, preset="github-models", base_url=standin.url + "/inference", **keys)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_each_preset_sends_its_path_key_header_query_and_model_ids(preset, tmp_path):
    case = PRESETS[preset]
    with StandIn(path=case["base"] + "/chat/completions", header=case["header"], value=case["value"],
                 query=case["query"], models=(case["model"], case["vision"])) as standin:
        config = write_remote_toml(tmp_path, preset=preset, base_url=standin.url + case["base"])
        with open_remote(config) as remote:
            result = remote.chat(ASK, max_new_tokens=17, temperature=0.5, seed=3)
            looked = remote.chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": str(SHAPES)}},
                                                               {"type": "text", "text": "What is shown?"}]}])
    assert result.text == "Hello from the stand-in." and result.finish_reason == "stop"
    assert (result.device, result.artifact_id, result.model) == ("remote", f"remote:{preset}", case["model"])
    text, image = standin.seen
    assert text.body["model"] == case["model"] and image.body["model"] == case["vision"]
    assert text.body["messages"] == ASK and text.body["stream"] is True
    assert (text.body["max_tokens"], text.body["temperature"], text.body["seed"]) == (17, 0.5, 3)
    assert text.query == case["query"] and text.headers[case["header"]] == case["value"]
    if preset == "azure-ai-inference":
        assert "authorization" not in text.headers  # Azure's key goes in api-key only
    if preset == "github-models":
        assert text.headers["x-github-api-version"] == "2022-11-28"
    assert ("stream_options" in text.body) == (preset == "nvidia-nim")
    assert looked.model == case["vision"]


def test_presets_default_to_the_documented_endpoints(tmp_path):
    def endpoint(**keys):
        path = write_remote_toml(tmp_path, **keys)
        return resolve_endpoint(load_remote_config(path).settings, str(path))

    github = endpoint(preset="github-models")
    assert github.chat_url == "https://models.github.ai/inference/chat/completions" and github.auth == "bearer"
    azure = endpoint(preset="azure-ai-inference", resource="my-foundry")
    assert azure.chat_url == "https://my-foundry.services.ai.azure.com/models/chat/completions"
    assert azure.params == (("api-version", "2024-05-01-preview"),) and azure.auth == "api-key"
    assert endpoint(preset="azure-ai-inference", resource="r", auth="bearer").auth == "bearer"
    nim = endpoint(preset="nvidia-nim")
    assert (nim.chat_url, nim.api_key_env) == ("https://integrate.api.nvidia.com/v1/chat/completions", "NVIDIA_API_KEY")
    with pytest.raises(ConfigError, match="needs key 'resource'"):
        endpoint(preset="azure-ai-inference")
    with pytest.raises(ConfigError, match="needs key 'base_url'"):
        endpoint(preset="openai-compatible", model="m")


def test_streaming_pieces_stop_strings_max_tokens_and_usage(github):
    standin, remote = github
    standin.plan = [sse("The", " answer", " is", " STOP", " more"), sse("a", "b", finish="length", usage=(11, 2))]
    stream = remote.stream(ASK, stop=["STOP"], max_new_tokens=9)
    assert list(stream) == ["The", " answer", " is", " "]  # held back until it could not start "STOP"
    assert stream.result.finish_reason == "stop" and stream.result.text == "The answer is "
    assert standin.seen[0].body["stop"] == ["STOP"] and standin.seen[0].body["max_tokens"] == 9
    cut = remote.chat(ASK, max_new_tokens=2)
    assert cut.finish_reason == "length" and (cut.usage.prompt_tokens, cut.usage.completion_tokens) == (11, 2)
    assert stream.system_fingerprint == "edgeslm-remote:github-models"


def test_a_service_that_answers_one_json_body_is_read_too(github):
    standin, remote = github
    standin.plan = [completion("All at once.")]
    result = remote.chat(ASK)
    assert result.text == "All at once." and result.usage.prompt_tokens == 7 and result.usage.completion_tokens == 3


def test_401_and_404_are_clear_errors_and_not_retried(github, tmp_path):
    standin, remote = github
    standin.plan = [status(401, "token expired")]
    with pytest.raises(RemoteAuthError) as auth:
        remote.chat(ASK)
    assert "HTTP 401" in auth.value.message and "$GITHUB_TOKEN" in auth.value.message
    assert "models:read" in auth.value.hint and auth.value.exit_code == 31 and len(standin.seen) == 1
    with open_remote(_config(tmp_path, standin, model="microsoft/Phi-9")) as wrong:
        with pytest.raises(RemoteNotFoundError) as missing:
            wrong.chat(ASK)
    assert "no model 'microsoft/Phi-9'" in missing.value.message and "Unknown model" in missing.value.message
    assert str(tmp_path / "remote.toml") in missing.value.hint and len(standin.seen) == 2


def test_429_then_200_is_retried_with_backoff_and_retry_after(github):
    standin, remote = github
    standin.plan = [status(429, "slow down", retry_after="0"), status(503), sse("Fine.")]
    started = time.monotonic()
    assert remote.chat(ASK).text == "Fine."
    assert len(standin.seen) == 3 and time.monotonic() - started < 3


def test_500_after_every_retry_is_an_error_that_counts_them(github):
    standin, remote = github
    standin.plan = [status(500, "boom")] * 3
    with pytest.raises(RemoteError) as info:
        remote.chat(ASK)
    assert "HTTP 500, after 2 retries" in info.value.message and "boom" in info.value.message
    assert len(standin.seen) == 3 and info.value.exit_code == 30


def test_a_hanging_service_times_out(tmp_path):
    with StandIn(path="/inference/chat/completions") as standin:
        config = _config(tmp_path, standin, timeout_s=0.4, max_retries=1, backoff_s=0.01)
        standin.plan = [hang(20), hang(20), hang(20, after=("Hel",))]
        with open_remote(config) as remote:
            started = time.monotonic()
            with pytest.raises(RemoteError, match=r"did not answer within 0.4 s, after 1 retry"):
                remote.chat(ASK)
            stream = remote.stream(ASK)
            pieces = []
            with pytest.raises(RemoteError, match="stopped answering"):
                pieces.extend(stream)
    assert pieces == ["Hel"] and len(standin.seen) == 3 and time.monotonic() - started < 8


def test_network_down_is_a_clear_error(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    config = write_remote_toml(tmp_path, preset="nvidia-nim", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1,
                               backoff_s=0.01)
    with open_remote(config) as remote, pytest.raises(RemoteError) as info:
        remote.chat(ASK)
    assert f"cannot reach 127.0.0.1:{port}" in info.value.message and "after 1 retry" in info.value.message
    assert "check the network" in info.value.hint


def test_the_key_comes_from_the_environment_and_never_appears(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)  # httpx and httpcore log every request at debug level
    with StandIn(path="/inference/chat/completions", value="Bearer the-right-key") as standin:
        config = _config(tmp_path, standin, max_retries=0)
        with open_remote(config) as remote, pytest.raises(RemoteAuthError) as info:
            remote.chat(ASK)  # the stand-in echoes the key it got, as some services do
        assert standin.seen[0].headers["authorization"] == f"Bearer {KEY}"
        monkeypatch.delenv("GITHUB_TOKEN")
        with pytest.raises(RemoteAuthError) as unset:
            open_remote(config)
    assert "Bad credentials: 'Bearer ***'" in info.value.message
    assert "GITHUB_TOKEN" in unset.value.message and "export GITHUB_TOKEN=" in unset.value.hint
    for text in (info.value.one_line(), unset.value.one_line(), caplog.text, repr(load_remote_config(config))):
        assert KEY not in text
    assert "HTTP Request: POST" in caplog.text  # what was logged is there, and without the key


def test_images_go_only_as_data_urls_and_only_to_a_vision_model(github, tmp_path):
    standin, remote = github
    raw = SHAPES.read_bytes()
    as_data = "data:image/png;base64," + base64.b64encode(raw).decode()
    for part in ({"type": "image_url", "image_url": {"url": str(SHAPES)}}, {"type": "image", "image": raw},
                 {"type": "image_url", "image_url": {"url": as_data}},
                 {"type": "image_url", "image_url": {"url": SHAPES.as_uri()}}):
        remote.chat([{"role": "user", "content": [part, {"type": "text", "text": "What is it?"}]}])
        sent = standin.seen[-1].body
        assert sent["model"] == "microsoft/Phi-3.5-vision-instruct"
        assert sent["messages"][0]["content"][0] == {"type": "image_url", "image_url": {"url": as_data}}
    refused = {"https://example.com/cat.png": "only data: URLs", str(FIXTURES / "images" / "not-an-image.png"):
               "is not a PNG, JPEG", "data:image/png;base64,@@@": "invalid base64"}
    for url, words in refused.items():
        with pytest.raises(RemoteInputError, match=words) as info:
            remote.prepare([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}])
        assert info.value.param == "messages[0].content[0]"
    remote.allow_image_files = False  # as the server sets it
    with pytest.raises(RemoteInputError, match="not allowed here"):
        remote.prepare([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": str(SHAPES)}}]}])
    with open_remote(_config(tmp_path, standin, images=False)) as text_only:
        assert not text_only.takes_images
        with pytest.raises(RemoteInputError, match="has no vision model"):
            text_only.prepare([{"role": "user", "content": [{"type": "image", "image": raw}]}])
    assert len(standin.seen) == 4  # nothing refused was sent


def test_remote_toml_is_strict_and_never_holds_the_key(tmp_path):
    with pytest.raises(ConfigError) as typo:
        load_remote_config(write_remote_toml(tmp_path, preset="github-models", modle="x"))
    assert f"{tmp_path / 'remote.toml'}: unknown key 'modle'" in typo.value.message and "'model'" in typo.value.hint
    with pytest.raises(ConfigError) as secret:
        load_remote_config(write_remote_toml(tmp_path, preset="github-models", api_key=KEY))
    assert "never holds the API key" in secret.value.message and KEY not in secret.value.one_line()
    with pytest.raises(ConfigError, match="is 'openai', expected one of"):
        load_remote_config(write_remote_toml(tmp_path, preset="openai"))
    with pytest.raises(ConfigError, match="unencrypted"):
        load_remote_config(write_remote_toml(tmp_path, preset="nvidia-nim", base_url="http://10.0.0.5:8000/v1"))
    assert load_remote_config(write_remote_toml(tmp_path, preset="nvidia-nim", base_url="http://10.0.0.5:8000/v1",
                                                insecure_http=True)).settings.insecure_http
    with pytest.raises(ConfigError, match="max_retries must be between 0 and 10"):
        load_remote_config(write_remote_toml(tmp_path, preset="nvidia-nim", max_retries=50))


def test_remote_toml_is_found_beside_the_bundle_then_in_the_user_config_folder(tmp_path, monkeypatch):
    bundle = tmp_path / "device" / "current"
    bundle.mkdir(parents=True)
    assert find_remote_config(bundle) is None
    user = write_remote_toml(tmp_path / "user-config" / "edgeslm", preset="nvidia-nim")
    assert find_remote_config(bundle).path == user
    beside = write_remote_toml(tmp_path / "device", preset="github-models")
    assert find_remote_config(bundle).path == beside  # the device's own wins over the user's
    explicit = write_remote_toml(tmp_path / "elsewhere", preset="github-models", allow=True)
    assert find_remote_config(bundle, explicit).settings.allow
    with pytest.raises(ConfigError, match="does not exist"):
        find_remote_config(bundle, tmp_path / "nope.toml")


# --- edgeslm serve as the upstream: the remote engine talks to a real OpenAI-compatible server ---------------------

@pytest.mark.slow
def test_edgeslm_serve_is_an_openai_compatible_upstream(built_bundle, tmp_path, monkeypatch):
    from test_serve import Server

    upstream_key = "upstream-key-4b8e2d9c0a"
    monkeypatch.setenv("UPSTREAM_KEY", upstream_key)
    server = Server(built_bundle, "--api-key", upstream_key)
    try:
        config = write_remote_toml(tmp_path, preset="openai-compatible", base_url=server.url + "/v1",
                                   model="phi3-docs-21m", api_key_env="UPSTREAM_KEY", images=False)
        with open_remote(config) as remote, edgeslm.load(built_bundle) as local:
            here, there = local.chat(ASK, max_new_tokens=24), remote.chat(ASK, max_new_tokens=24)
            assert there.text == here.text and there.usage == here.usage  # greedy: the same answer, counted upstream
            assert (there.device, there.model, here.device) == ("remote", "phi3-docs-21m", "cpu")
            assert "".join(remote.stream(ASK, max_new_tokens=24)) == here.text
            word = here.text.split()[2]
            cut = remote.chat(ASK, max_new_tokens=24, stop=[word])
            assert word not in cut.text and cut.finish_reason == "stop" and here.text.startswith(cut.text)
            short = remote.chat(ASK, max_new_tokens=3)
            assert short.finish_reason == "length" and short.usage.completion_tokens == 3
        monkeypatch.setenv("UPSTREAM_KEY", "not-the-key-at-all")
        with open_remote(config) as wrong_key, pytest.raises(RemoteAuthError, match="HTTP 401"):
            wrong_key.chat(ASK)
        monkeypatch.setenv("UPSTREAM_KEY", upstream_key)
        other = write_remote_toml(tmp_path / "other", preset="openai-compatible", base_url=server.url + "/v1",
                                  model="gpt-4", api_key_env="UPSTREAM_KEY")
        with open_remote(other) as wrong_model, pytest.raises(RemoteNotFoundError, match="does not exist"):
            wrong_model.chat(ASK)
        headers = {"Authorization": f"Bearer {upstream_key}", "Content-Type": "application/json"}
        _, _, body = server.request("POST", "/v1/chat/completions", json.dumps(
            {"model": "phi3-docs-21m", "messages": ASK, "max_tokens": 4}).encode(), headers)
        assert json.loads(body)["system_fingerprint"] == "edgeslm-local:onnx-int4-cpu"  # a local answer says so
    finally:
        server.stop()
