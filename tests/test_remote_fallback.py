"""When the cloud fallback answers: ``edgeslm run/chat/doctor/serve`` with and without ``--allow-remote``.

The rule under test (``runtime/remote_fallback.py``): the remote named by a ``remote.toml`` answers only
when no local artifact of the bundle can run here (here: the demo bundle with its artifact marked for the
other CPU architecture), or for an image prompt on a text-only bundle, and only with ``--allow-remote``
or ``allow = true``; a local artifact that fits always answers. The remote is ``remote_standin.StandIn``
on 127.0.0.1; every command's output is checked not to contain the key.
"""

from __future__ import annotations

import base64
import json
import platform
import shutil

import pytest
from click.testing import CliRunner
from conftest import FIXTURES, import_blocker, run_cli
from remote_standin import KEY, StandIn, status, write_remote_toml

from edgeslm.cli import cli

SHAPES = FIXTURES / "images" / "shapes-336.png"
MODELS = ("phi-remote", "phi-remote-vision")


@pytest.fixture(autouse=True)
def _clean_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "user-config"))
    monkeypatch.delenv("EDGESLM_REMOTE_CONFIG", raising=False)
    monkeypatch.setenv("REMOTE_KEY", KEY)


@pytest.fixture()
def standin():
    with StandIn(path="/v1/chat/completions", value=f"Bearer {KEY}", models=MODELS) as s:
        yield s


@pytest.fixture()
def nofit(built_bundle, tmp_path):
    """The demo bundle with its artifact built "for the other CPU": no local artifact can run here."""
    bundle = tmp_path / "device" / "nofit.bundle"
    shutil.copytree(built_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    other = "arm64" if platform.machine().lower() in ("x86_64", "amd64") else "x86_64"
    for art in manifest["artifacts"]:
        art["cpu_archs"] = [other]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


@pytest.fixture()
def fits(bundle_copy):
    return bundle_copy  # the demo bundle: its ONNX CPU artifact runs here


def configure(bundle, standin, **keys):
    """remote.toml beside the bundle, naming the stand-in."""
    return write_remote_toml(bundle.parent, preset="openai-compatible", base_url=standin.url + "/v1", model=MODELS[0],
                             vision_model=MODELS[1], api_key_env="REMOTE_KEY", max_retries=0, **keys)


def invoke(*args, input=None):
    result = CliRunner().invoke(cli, [str(a) for a in args], input=input)
    assert KEY not in result.output and KEY not in result.stderr, result.output
    return result


def error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("edgeslm: error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_no_local_artifact_and_not_allowed_is_an_error_that_says_how(nofit, standin):
    config = configure(nofit, standin)
    result = invoke("run", nofit, "Hello?")
    assert result.exit_code == 12
    line = error_line(result)
    assert "built for arm64" in line or "built for x86_64" in line
    assert "--allow-remote" in line and str(config) in line
    assert standin.seen == []  # nothing left the device


def test_allow_remote_answers_and_says_which_engine_did(nofit, standin):
    configure(nofit, standin)
    result = invoke("run", nofit, "Hello?", "--allow-remote", "--json", "-n", "12", "--system", "Be brief.")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert (answer["engine"], answer["device"], answer["artifact"], answer["model"]) == (
        "remote", "remote", "remote:openai-compatible", MODELS[0])
    assert answer["text"] == "Hello from the stand-in." and answer["finish_reason"] == "stop"
    assert "answered by the remote fallback remote:openai-compatible (phi-remote)" in result.stderr
    sent = standin.seen[0]
    assert sent.headers["authorization"] == f"Bearer {KEY}" and sent.body["max_tokens"] == 12
    assert sent.body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"}]
    plain = invoke("run", nofit, "Hello?", "--allow-remote")
    assert plain.exit_code == 0 and plain.stdout == "Hello from the stand-in.\n"


def test_allow_true_in_remote_toml_needs_no_flag(nofit, standin):
    configure(nofit, standin, allow=True)
    result = invoke("run", nofit, "Hello?", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["engine"] == "remote"


def test_an_explicit_remote_config_and_the_user_config_folder(nofit, standin, tmp_path, monkeypatch):
    elsewhere = write_remote_toml(tmp_path / "etc", preset="openai-compatible", base_url=standin.url + "/v1",
                                  model=MODELS[0], api_key_env="REMOTE_KEY")
    assert invoke("run", nofit, "Hi", "--allow-remote", "--remote-config", elsewhere).exit_code == 0
    user = tmp_path / "user-config" / "edgeslm"  # $XDG_CONFIG_HOME/edgeslm
    user.mkdir(parents=True)
    shutil.copy(elsewhere, user / "remote.toml")
    assert invoke("run", nofit, "Hi", "--allow-remote").exit_code == 0
    assert len(standin.seen) == 2


def test_a_device_with_only_the_remote_extra_needs_no_pillow_numpy_or_jinja(nofit, standin, tmp_path):
    configure(nofit, standin)  # the engine packages blocked too: only the standard library, click, rich and httpx
    env = import_blocker(tmp_path, "PIL", "numpy", "jinja2", "onnxruntime_genai", "openai", "starlette", "uvicorn")
    result = run_cli("run", str(nofit), "What is shown?", "--image", str(SHAPES), "--allow-remote", "--json", env=env)
    assert result.returncode == 0, result
    assert json.loads(result.stdout)["model"] == MODELS[1] and KEY not in result.stdout + result.stderr
    assert standin.seen[0].body["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")


def test_a_local_artifact_that_fits_always_answers(fits, standin):
    configure(fits, standin, allow=True)
    result = invoke("run", fits, "What does os.path.join do?", "--allow-remote", "--json", "-n", "8")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert (answer["engine"], answer["artifact"], answer["model"]) == ("local", "onnx-int4-cpu", "phi3-docs-21m")
    assert standin.seen == [] and "remote" not in result.stderr


def test_an_image_prompt_on_a_text_only_bundle_goes_remote_only_when_allowed(fits, standin, monkeypatch):
    configure(fits, standin)
    refused = invoke("run", fits, "What is shown?", "--image", SHAPES)
    assert refused.exit_code == 2 and "does not take images" in error_line(refused) and standin.seen == []
    result = invoke("run", fits, "What is shown?", "--image", SHAPES, "--allow-remote", "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert (answer["engine"], answer["model"]) == ("remote", MODELS[1])
    image, text = standin.seen[0].body["messages"][0]["content"]
    assert image["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(SHAPES.read_bytes()).decode()
    assert text == {"type": "text", "text": "What is shown?"} and standin.seen[0].body["model"] == MODELS[1]
    local = invoke("run", fits, "What does os.path.join do?", "--allow-remote", "--json", "-n", "4")
    assert json.loads(local.stdout)["engine"] == "local" and len(standin.seen) == 1  # text stays here
    monkeypatch.delenv("REMOTE_KEY")  # the remote opens at the first image prompt: text still answers here
    assert json.loads(invoke("run", fits, "Hi", "--allow-remote", "--json", "-n", "2").stdout)["engine"] == "local"
    unset = invoke("run", fits, "What is shown?", "--image", SHAPES, "--allow-remote")
    assert unset.exit_code == 31 and "REMOTE_KEY, which is not set" in error_line(unset)


def test_chat_with_the_remote_fallback(nofit, standin):
    configure(nofit, standin)
    result = invoke("chat", nofit, "--allow-remote", input="Hello?\nAnd again?\n/exit\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("Hello from the stand-in.") == 2
    assert "answering with the remote fallback openai-compatible" in result.stderr
    second = standin.seen[1].body["messages"]
    assert [m["role"] for m in second] == ["user", "assistant", "user"]
    assert second[1]["content"] == "Hello from the stand-in."


def test_remote_errors_are_one_line_with_their_exit_code(nofit, standin, monkeypatch):
    configure(nofit, standin)
    standin.plan = [status(500, "upstream exploded")]
    failed = invoke("run", nofit, "Hello?", "--allow-remote")
    assert failed.exit_code == 30 and "HTTP 500" in error_line(failed) and "upstream exploded" in error_line(failed)
    monkeypatch.setenv("REMOTE_KEY", "sk-the-wrong-one-000000")
    refused = invoke("run", nofit, "Hello?", "--allow-remote")
    assert refused.exit_code == 31 and "HTTP 401" in error_line(refused) and "***" in error_line(refused)
    assert "sk-the-wrong-one-000000" not in refused.output + refused.stderr
    monkeypatch.delenv("REMOTE_KEY")
    unset = invoke("run", nofit, "Hello?", "--allow-remote")
    assert unset.exit_code == 31 and "REMOTE_KEY, which is not set" in error_line(unset)


def test_doctor_shows_the_remote_candidate_and_the_reason(nofit, fits, standin):
    configure(nofit, standin)
    configure(fits, standin)
    candidate = invoke("doctor", nofit)
    assert candidate.exit_code == 12
    assert f"remote    openai-compatible: phi-remote, images to phi-remote-vision at {standin.url}" in candidate.stdout
    assert "key in $REMOTE_KEY: set" in candidate.stdout
    assert "remote: candidate: no local artifact can run here, but the remote is not allowed (it would be with " \
           "--allow-remote" in candidate.stdout
    used = invoke("doctor", nofit, "--allow-remote", "--json")
    assert used.exit_code == 0, used.output
    remote = json.loads(used.stdout)["remote"]
    assert (remote["status"], remote["allowed"], remote["api_key_set"], remote["model"]) == ("used", True, True,
                                                                                               MODELS[0])
    assert remote["reason"] == "no local artifact can run here; the remote is allowed"
    here = json.loads(invoke("doctor", fits, "--json").stdout)["remote"]
    assert here["status"] == "not used" and "onnx-int4-cpu runs here" in here["reason"]
    images = json.loads(invoke("doctor", fits, "--allow-remote", "--json").stdout)["remote"]
    assert images["status"] == "images" and "only prompts with images go to the remote" in images["reason"]
    assert standin.seen == []  # doctor never calls the service


@pytest.mark.slow
def test_serve_routes_only_image_prompts_of_a_text_only_bundle_to_the_remote(fits, standin):
    import openai
    from test_serve import Server

    server = Server(fits, "--allow-remote", "--remote-config", str(configure(fits, standin)))
    try:
        assert server.health()["device"] == "cpu"
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        text = client.chat.completions.create(model="phi3-docs-21m", max_tokens=4,
                                              messages=[{"role": "user", "content": "What does os.getcwd() do?"}])
        assert (text.model, text.system_fingerprint) == ("phi3-docs-21m", "edgeslm-local:onnx-int4-cpu")
        url = "data:image/png;base64," + base64.b64encode(SHAPES.read_bytes()).decode()
        image = client.chat.completions.create(model="phi3-docs-21m", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is shown?"}]}])
        assert (image.model, image.system_fingerprint) == (MODELS[1], "edgeslm-remote:openai-compatible")
        assert len(standin.seen) == 1 and standin.seen[0].body["messages"][0]["content"][0]["image_url"]["url"] == url
        with pytest.raises(openai.BadRequestError) as info:  # the server never reads its own files for a client
            client.chat.completions.create(model="phi3-docs-21m", messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": str(SHAPES)}}]}])
        assert info.value.body["param"] == "messages[0].content[0]" and len(standin.seen) == 1
    finally:
        server.stop()


@pytest.mark.slow
def test_serve_falls_back_and_its_answers_say_remote(nofit, standin, monkeypatch):
    import openai
    from test_serve import Server

    config = configure(nofit, standin)
    server = Server(nofit, "--allow-remote", "--remote-config", str(config))
    try:
        assert server.health()["device"] == "remote"
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)
        ask = [{"role": "user", "content": "Hi"}]
        reply = client.chat.completions.create(model="phi3-docs-21m", messages=ask, max_tokens=10)
        assert reply.choices[0].message.content == "Hello from the stand-in."
        assert (reply.model, reply.system_fingerprint) == (MODELS[0], "edgeslm-remote:openai-compatible")
        chunks = list(client.chat.completions.create(model="phi3-docs-21m", messages=ask, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the stand-in."
        assert {(c.model, c.system_fingerprint) for c in chunks} == {(MODELS[0], "edgeslm-remote:openai-compatible")}
        standin.plan = [status(503, "overloaded")]
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model="phi3-docs-21m", messages=ask)
        assert info.value.status_code == 502 and info.value.body["code"] == "remote_error"
        assert [s.body["max_tokens"] for s in standin.seen] == [10, 1024, 1024]  # the server's default length
    finally:
        server.stop()
    output = server.proc.stdout.read() + server.proc.stderr.read()
    assert KEY not in output and "answering with the remote fallback" in output
