"""A small client for the OCI distribution API (v2) over httpx: blobs, manifests, tags.

Why not the ``oras`` Python SDK: it is a thin wrapper over ``requests`` that buffers whole layers in
memory on pull and cannot resume a download; bundles hold 2 GB files and devices sit behind flaky links.
What edgeslm needs is a dozen endpoints (HEAD/GET/PUT of blobs and manifests, the two-step monolithic
upload, Range requests), Basic and Bearer-token challenges: that fits here, on the device's one HTTP
library. TLS is verified by default; ``plain_http`` is for a local registry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urljoin

from ..errors import BackendMissingError, RegistryAuthError, RegistryError, RegistryNotFoundError
from .registry_auth import Credentials, find_credentials, parse_challenge

CHUNK = 1 << 20


def import_httpx():
    try:
        import httpx
    except ImportError:
        raise BackendMissingError("OCI registries need the 'httpx' package", hint="pip install 'edgeslm[oci]'") from None
    return httpx


class RegistryClient:
    def __init__(self, registry: str, plain_http: bool = False, credentials: Credentials | None = None,
                 timeout: float = 60.0):
        httpx = import_httpx()
        self.registry = registry
        self.base = f"{'http' if plain_http else 'https'}://{registry}"
        self.credentials = credentials if credentials is not None else find_credentials(registry)
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0), follow_redirects=True)
        self._authorization: dict[str, str] = {}  # scope -> Authorization header value

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests with the registry's challenge answered ------------------------------------------
    def _send(self, method: str, url: str, repository: str, push: bool = False, stream: bool = False,
              headers: dict | None = None, content=None):
        httpx = import_httpx()
        scope = f"repository:{repository}:{'pull,push' if push else 'pull'}"
        for attempt in range(2):
            sent = dict(headers or {})
            if scope in self._authorization:
                sent["Authorization"] = self._authorization[scope]
            try:
                request = self._http.build_request(method, url if url.startswith("http") else self.base + url,
                                                   headers=sent, content=content)
                response = self._http.send(request, stream=stream)
            except httpx.ConnectError as exc:
                tls = "SSL" in str(exc) or "certificate" in str(exc).lower()
                raise RegistryError(f"cannot reach the registry {self.registry}: {_short(exc)}",
                                    hint="a local registry without TLS needs [[plain_http]]" if tls
                                    else "is it running and reachable from here?") from None
            except httpx.TimeoutException:
                raise RegistryError(f"the registry {self.registry} did not answer in time",
                                    hint="check the network; pull resumes where it stopped") from None
            except httpx.HTTPError as exc:
                raise RegistryError(f"{method} {self.registry}: {_short(exc)}") from None
            if response.status_code != 401 or attempt:
                break
            challenge = response.headers.get("WWW-Authenticate", "")
            response.close()
            self._authorization[scope] = self._answer(challenge, scope)
        if response.status_code in (401, 403):
            response.close()
            who = f" as {self.credentials.source}" if self.credentials else ""
            raise RegistryAuthError(f"the registry {self.registry} refused access to {repository}{who} "
                                    f"(HTTP {response.status_code})",
                                    hint="log in (docker login / oras login) or set EDGESLM_REGISTRY_TOKEN, or "
                                         "EDGESLM_REGISTRY_USERNAME and EDGESLM_REGISTRY_PASSWORD")
        return response

    def _answer(self, challenge: str, scope: str) -> str:
        scheme, params = parse_challenge(challenge)
        creds = self.credentials
        if scheme == "basic":
            if creds is None or creds.basic() is None:
                raise RegistryAuthError(f"the registry {self.registry} needs a user name and password, and none "
                                        "was found", hint="docker login / oras login, or set EDGESLM_REGISTRY_USERNAME "
                                                          "and EDGESLM_REGISTRY_PASSWORD")
            return creds.basic()  # type: ignore[return-value]
        if scheme == "bearer" and params.get("realm"):
            query = {"service": params.get("service", ""), "scope": params.get("scope", scope)}
            headers = {}
            if creds is not None and creds.basic():
                headers["Authorization"] = creds.basic()
            elif creds is not None and creds.token:
                headers["Authorization"] = f"Bearer {creds.token}"
            httpx = import_httpx()
            try:
                answer = self._http.get(params["realm"], params=query, headers=headers)
            except httpx.HTTPError as exc:
                raise RegistryAuthError(f"the token service of {self.registry} failed: {_short(exc)}") from None
            if answer.status_code != 200:
                raise RegistryAuthError(f"the token service of {self.registry} refused the credentials "
                                        f"(HTTP {answer.status_code})", hint="log in again")
            body = answer.json()
            token = body.get("token") or body.get("access_token")
            if not token:
                raise RegistryAuthError(f"the token service of {self.registry} returned no token")
            return f"Bearer {token}"
        if creds is not None and creds.token:
            return f"Bearer {creds.token}"
        raise RegistryAuthError(f"the registry {self.registry} asks for authentication ({scheme or 'unknown'})",
                                hint="log in (docker login / oras login) or set EDGESLM_REGISTRY_TOKEN")

    def _check(self, response, what: str, expected: tuple[int, ...]) -> None:
        if response.status_code in expected:
            return
        body = response.read()[:300].decode("utf-8", "replace") if not response.is_closed else ""
        response.close()
        if response.status_code == 404:
            raise RegistryNotFoundError(f"{what}: not found in {self.registry}",
                                        hint="check the repository and tag (edgeslm push makes them)")
        raise RegistryError(f"{what}: the registry {self.registry} answered HTTP {response.status_code}: "
                            f"{' '.join(body.split())[:200]}")

    # -- blobs --------------------------------------------------------------------------------------
    def blob_exists(self, repository: str, digest: str, push: bool = False) -> bool:
        response = self._send("HEAD", f"/v2/{repository}/blobs/{digest}", repository, push=push)
        response.close()
        if response.status_code == 404:
            return False
        self._check(response, f"blob {digest[:19]}", (200,))
        return True

    def upload_blob(self, repository: str, digest: str, path: Path, size: int,
                    progress: Callable[[int], None] | None = None) -> None:
        """Monolithic upload: POST for a session, then one streamed PUT with the digest."""
        start = self._send("POST", f"/v2/{repository}/blobs/uploads/", repository, push=True,
                           headers={"Content-Length": "0"})
        self._check(start, f"upload to {repository}", (202,))
        location = urljoin(self.base + "/", start.headers["Location"])
        start.close()

        def body() -> Iterator[bytes]:
            with open(path, "rb") as handle:
                while block := handle.read(CHUNK):
                    if progress:
                        progress(len(block))
                    yield block

        joiner = "&" if "?" in location else "?"
        done = self._send("PUT", f"{location}{joiner}digest={digest}", repository, push=True, content=body(),
                          headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})
        self._check(done, f"upload of {path.name}", (201,))
        done.close()

    def upload_bytes(self, repository: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.blob_exists(repository, digest, push=True):
            start = self._send("POST", f"/v2/{repository}/blobs/uploads/", repository, push=True,
                               headers={"Content-Length": "0"})
            self._check(start, f"upload to {repository}", (202,))
            location = urljoin(self.base + "/", start.headers["Location"])
            start.close()
            joiner = "&" if "?" in location else "?"
            done = self._send("PUT", f"{location}{joiner}digest={digest}", repository, push=True, content=data,
                              headers={"Content-Type": "application/octet-stream"})
            self._check(done, "upload", (201,))
            done.close()
        return digest

    def blob_bytes(self, repository: str, digest: str, limit: int = 64 << 20) -> bytes:
        response = self._send("GET", f"/v2/{repository}/blobs/{digest}", repository, stream=True)
        self._check(response, f"blob {digest[:19]}", (200,))
        data = bytearray()
        for block in response.iter_bytes(CHUNK):
            data += block
            if len(data) > limit:
                response.close()
                raise RegistryError(f"blob {digest[:19]} is larger than {limit} bytes: not an edgeslm manifest")
        response.close()
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise RegistryError(f"blob {digest[:19]}… from {self.registry} does not match its digest: refused",
                                hint="the registry's copy is damaged or was tampered with; push the bundle again")
        return bytes(data)

    def open_blob(self, repository: str, digest: str, offset: int = 0):
        """A streamed GET from ``offset`` (Range); the response's status is 206 when the range was served,
        200 when the registry sent the whole blob (the caller restarts from 0)."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = self._send("GET", f"/v2/{repository}/blobs/{digest}", repository, stream=True, headers=headers)
        self._check(response, f"blob {digest[:19]}", (200, 206))
        return response

    # -- manifests ----------------------------------------------------------------------------------
    def put_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> str:
        response = self._send("PUT", f"/v2/{repository}/manifests/{reference}", repository, push=True, content=data,
                              headers={"Content-Type": media_type})
        self._check(response, f"manifest {repository}:{reference}", (201,))
        response.close()
        return response.headers.get("Docker-Content-Digest") or "sha256:" + hashlib.sha256(data).hexdigest()

    def get_manifest(self, repository: str, reference: str, accept: str) -> tuple[bytes, str]:
        response = self._send("GET", f"/v2/{repository}/manifests/{reference}", repository,
                              headers={"Accept": accept})
        self._check(response, f"{repository}:{reference}", (200,))
        data = response.read()
        response.close()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(f"the manifest {repository}@{reference[:19]}… from {self.registry} does not match "
                                "its digest: refused")
        return data, digest

    def manifest_digest(self, repository: str, reference: str, accept: str) -> str:
        """What a tag points at now (HEAD; a GET when the registry gives no digest header)."""
        response = self._send("HEAD", f"/v2/{repository}/manifests/{reference}", repository,
                              headers={"Accept": accept})
        response.close()
        self._check(response, f"{repository}:{reference}", (200,))
        return response.headers.get("Docker-Content-Digest") or self.get_manifest(repository, reference, accept)[1]


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__
