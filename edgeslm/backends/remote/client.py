"""The HTTP side of the remote engine: one httpx client, retries with backoff, errors a user can act on.

A request is retried on 429 and 5xx answers, timeouts and failed connections, waiting ``backoff_s``,
doubling each time (a ``Retry-After`` header wins), up to ``max_retries`` times and never past
``max_backoff_s`` a wait; once text has started to arrive nothing is retried (it would repeat it).
401/403 and 404 are not retried: they name the key's variable, or the model and URL, to fix.

The key lives only in the client's headers. It is never put in a message: every text that comes back
from the service (error bodies, exceptions) goes through ``redact`` first, in case a service echoes it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import httpx

from ... import __version__
from ...errors import RemoteAuthError, RemoteError, RemoteNotFoundError
from .presets import Endpoint
from .reply_stream import Reply, error_message
from .settings import RemoteSettings

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_ERROR_BYTES = 65536


def read_key(endpoint: Endpoint, where: str) -> str:
    """The API key from the environment variable the config names ("" when it names none)."""
    if not endpoint.api_key_env:
        return ""
    key = os.environ.get(endpoint.api_key_env, "").strip()
    if not key:
        raise RemoteAuthError(f"the remote fallback {endpoint.preset} needs its API key in the environment variable "
                              f"{endpoint.api_key_env}, which is not set",
                              hint=f"export {endpoint.api_key_env}=... on this device (the key is never kept in "
                                   f"{where})")
    return key


class ChatClient:
    def __init__(self, endpoint: Endpoint, settings: RemoteSettings, key: str, where: str,
                 sleep: Callable[[float], None] = time.sleep):
        self.endpoint, self.settings, self.where, self._sleep = endpoint, settings, where, sleep
        self._key = key
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream, application/json",
                   "User-Agent": f"edgeslm/{__version__}", **dict(endpoint.headers)}
        if key:
            if endpoint.auth == "api-key":
                headers["api-key"] = key
            else:
                headers["Authorization"] = f"Bearer {key}"
        timeout = httpx.Timeout(settings.timeout_s, connect=settings.connect_timeout_s)
        self._http = httpx.Client(headers=headers, timeout=timeout, follow_redirects=False)

    def redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def open(self, body: dict) -> Reply:
        """Send one chat request and return its answer once the service has accepted it (status < 400)."""
        attempt = 0
        while True:
            request = self._http.build_request("POST", self.endpoint.chat_url, params=dict(self.endpoint.params),
                                               json=body)
            try:
                response = self._http.send(request, stream=True)
            except httpx.TimeoutException:
                wait, failure = None, self._timed_out
            except httpx.HTTPError as exc:
                wait, failure = None, self._unreachable(exc)
            else:
                if response.status_code < 400:
                    return Reply(response, self.endpoint.preset, self.settings.timeout_s, self.redact)
                status, text = response.status_code, self._error_text(response)
                if status not in RETRY_STATUSES:
                    raise self._refused(status, text, body.get("model", ""))
                wait, failure = _retry_after(response), self._overloaded(status, text)
            if attempt >= self.settings.max_retries:
                raise failure(attempt)
            self._sleep(min(wait if wait is not None else self.settings.backoff_s * 2 ** attempt,
                            self.settings.max_backoff_s))
            attempt += 1

    def close(self) -> None:
        self._http.close()

    def _error_text(self, response: httpx.Response) -> str:
        try:
            raw = b""
            for chunk in response.iter_bytes():
                raw += chunk
                if len(raw) >= MAX_ERROR_BYTES:
                    break
        except httpx.HTTPError:
            raw = b""
        finally:
            response.close()
        text = raw.decode("utf-8", "replace")
        try:
            message = error_message(json.loads(text))
        except ValueError:
            message = " ".join(text.split())[:300]
        return self.redact(message) or response.reason_phrase

    def _refused(self, status: int, text: str, model: str) -> RemoteError:
        name, url = self.endpoint.preset, self.endpoint.chat_url
        if status in (401, 403):
            variable = f" from ${self.endpoint.api_key_env}" if self.endpoint.api_key_env else ""
            return RemoteAuthError(f"{name} refused the API key{variable} (HTTP {status}): {text}",
                                   hint=_KEY_HINTS.get(name, "check the key and its permissions for this model"))
        if status == 404:
            return RemoteNotFoundError(f"{name} has no model '{model}' at {url} (HTTP 404): {text}",
                                       hint=f"check model, vision_model and base_url in {self.where}")
        return RemoteError(f"{name} refused the request (HTTP {status}): {text}")

    def _overloaded(self, status: int, text: str) -> Callable[[int], RemoteError]:
        def failure(retries: int) -> RemoteError:
            what = "is rate limiting this key" if status == 429 else "failed"
            return RemoteError(f"{self.endpoint.preset} {what} (HTTP {status}{_after(retries)}): {text}",
                               hint="try again later" + ("; free tiers allow only a few requests a minute"
                                                         if status == 429 else ""))
        return failure

    def _timed_out(self, retries: int) -> RemoteError:
        return RemoteError(f"{self.endpoint.host} did not answer within {self.settings.timeout_s:g} s{_after(retries)}",
                           hint="check the network, or raise timeout_s in " + self.where)

    def _unreachable(self, exc: Exception) -> Callable[[int], RemoteError]:
        reason = self.redact(" ".join(str(exc).split())) or type(exc).__name__

        def failure(retries: int) -> RemoteError:
            return RemoteError(f"cannot reach {self.endpoint.host} ({reason}){_after(retries)}",
                               hint=f"check the network and base_url in {self.where}")
        return failure


_KEY_HINTS = {
    "github-models": "use a GitHub token with the models:read permission",
    "azure-ai-inference": "use a key of this Azure AI resource (auth = 'bearer' for an Entra ID token)",
    "nvidia-nim": "use an NVIDIA API key (nvapi-...) from build.nvidia.com",
}


def _after(retries: int) -> str:
    return f", after {retries} retr{'y' if retries == 1 else 'ies'}" if retries else ""


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: the exponential backoff instead
