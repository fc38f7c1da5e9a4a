"""Remote backend: the cloud fallback (GitHub Models, Azure AI Inference, NVIDIA NIM or any OpenAI-compatible
server), used only when no local artifact can answer and the device allows it (docs/remote.md).

It declares no artifact format: nothing is built for it and no bundle holds it. ``remote.toml`` beside
the bundle or in the user config folder names the service (``settings``), ``presets`` its endpoints,
``client`` the HTTP side (httpx, ``pip install 'edgeslm[remote]'``), ``engine`` the device side.
"""

from ...backend import Backend

BACKEND = Backend(
    name="remote",
    formats=(),
    engine_ref=f"{__name__}.engine:open_engine",
    probe_packages=("httpx",),
)
