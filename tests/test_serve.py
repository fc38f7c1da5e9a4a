"""edgeslm serve: a real server process on a free loopback port, driven by the official openai client."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

API_KEY = "test-key-123"
MODEL = "phi3-docs-21m"
ASK = [{"role": "user", "content": "What does `os.path.join(path, *paths)` do?"}]
# The demo model answers this one for thousands of tokens (it never reaches <|end|> within 3000): a generation
# that is still running when the client goes away, whatever the quantization.
LONG = [{"role": "user", "content": "Write a very long list of every Python module you know, one per line, with examples."}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class Server:
    def __init__(self, bundle: Path, *extra: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "edgeslm", "serve", str(bundle), "--port", str(self.port),
                                      "--log-level", "warning", *extra], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.proc.stderr.read()}")
            try:
                if self.health()["status"] == "ok":
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("server did not start")

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response.status, dict(response.getheaders()), data

    def health(self) -> dict:
        return json.loads(self.request("GET", "/health")[2])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def server(built_bundle):
    srv = Server(built_bundle, "--api-key", API_KEY, "--max-queue", "4")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    health = server.health()
    assert health["artifact"] == "onnx-int4-cpu" and health["active"] == 0


def test_chat_non_streaming_with_usage(client):
    reply = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=128)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert "<|end|>" not in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 5 and 0 < reply.usage.completion_tokens <= 128
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_streaming_matches_non_streaming(client):
    full = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=40).choices[0].message.content
    pieces, finish, usage = [], None, None
    for chunk in client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=40, stream=True,
                                                stream_options={"include_usage": True}):
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == full
    assert finish in ("stop", "length") and usage.completion_tokens > 0


def test_max_tokens_and_max_completion_tokens(client):
    reply = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=3)
    assert reply.usage.completion_tokens == 3 and reply.choices[0].finish_reason == "length"
    reply = client.chat.completions.create(model=MODEL, messages=ASK, max_completion_tokens=4)
    assert reply.usage.completion_tokens == 4


def test_stop_strings(client):
    full = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=60).choices[0].message.content
    word = full.split()[2]
    cut = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=60, stop=[word, "zzzz"])
    assert word not in cut.choices[0].message.content and cut.choices[0].finish_reason == "stop"
    assert full.startswith(cut.choices[0].message.content)


def test_seed_reproducibility(client):
    def sample(seed):
        return client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=20, temperature=1.0,
                                              seed=seed).choices[0].message.content
    assert sample(7) == sample(7)
    assert len({sample(1), sample(2), sample(3)}) > 1


def test_errors(server, client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4", messages=ASK)
    assert info.value.body["code"] == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    status, _, body = server.request("POST", "/v1/chat/completions", b'{"model": "x", "messages": [')
    assert status == 401  # the key is checked before the body
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    for raw, param in [(b'{"model": "phi3-docs-21m", "messages": [', None),
                       (json.dumps({"model": MODEL, "messages": []}).encode(), "messages"),
                       (json.dumps({"model": MODEL, "messages": ASK, "temperature": 7}).encode(), "temperature"),
                       (json.dumps({"model": MODEL, "messages": ASK, "n": 2}).encode(), "n"),
                       (json.dumps({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}).encode(),
                        "messages[0].role")]:
        status, _, body = server.request("POST", "/v1/chat/completions", raw, headers)
        error = json.loads(body)["error"]
        assert status == 400 and error["type"] == "invalid_request_error" and error["param"] == param, body
    status, _, body = server.request("POST", "/v1/chat/completions", b"x" * (2 << 20), headers)
    assert status == 413 and json.loads(body)["error"]["code"] == "body_too_large"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "word " * 5000}])
    assert info.value.body["code"] == "context_length_exceeded"


def test_disconnect_cancels_generation(server):
    before = server.health()["cancelled"]
    sock = socket.create_connection(("127.0.0.1", server.port))
    body = json.dumps({"model": MODEL, "messages": LONG, "max_tokens": 3000, "stream": True,
                       "stop": ["never-appears-xyz"]}).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    received = b""
    while b"data:" not in received:
        received += sock.recv(4096)
    sock.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and server.health()["cancelled"] == before:
        time.sleep(0.1)
    health = server.health()
    assert health["cancelled"] == before + 1 and health["active"] == 0


def test_load_32_clients_bounded(built_bundle):
    srv = Server(built_bundle, "--max-queue", "6")
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=8)  # warm-up
        rss_before = _rss_kib(srv.proc.pid)

        def worker(i: int) -> list[str]:
            outcomes = []
            for j in range(4):
                try:
                    reply = client.chat.completions.create(model=MODEL, max_tokens=8, stream=(i + j) % 2 == 0,
                                                           messages=[{"role": "user", "content": f"What is {i}-{j}?"}])
                    if (i + j) % 2 == 0:
                        text = "".join(c.choices[0].delta.content or "" for c in reply if c.choices)
                    else:
                        text = reply.choices[0].message.content
                    outcomes.append("ok" if text is not None else "bad")
                except openai.RateLimitError as exc:
                    assert int(exc.response.headers["retry-after"]) >= 1
                    outcomes.append("429")
            return outcomes

        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            results = [o for outcome in pool.map(worker, range(32)) for o in outcome]
        elapsed = time.monotonic() - started
        assert len(results) == 128 and set(results) <= {"ok", "429"}
        assert results.count("ok") >= 7 and results.count("429") >= 1
        assert elapsed < 60
        health = srv.health()
        assert health["status"] == "ok" and health["active"] == 0 and health["queued"] == 0
        assert client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4).choices[0].message.content
        growth_mib = (_rss_kib(srv.proc.pid) - rss_before) / 1024
        assert growth_mib < 64, growth_mib
    finally:
        srv.stop()


def test_binds_to_loopback_by_default(server):
    out = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout if _has("ss") else ""
    if out:
        lines = [line for line in out.splitlines() if f":{server.port} " in line]
        assert lines and all("127.0.0.1:" in line for line in lines)
    assert "--host" in subprocess.run([sys.executable, "-m", "edgeslm", "serve", "--help"], capture_output=True,
                                      text=True).stdout


def _has(tool: str) -> bool:
    from shutil import which
    return which(tool) is not None
