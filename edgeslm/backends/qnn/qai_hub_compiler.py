"""Optional cloud compiler: Qualcomm AI Hub compiles the QDQ graphs into context binaries on its devices.

Used with ``--qnn-compiler qai-hub`` (``qnn-context.compiler = "qai-hub"``). Needs the ``qai-hub``
client and an API token (``qai-hub configure --api_token TOKEN`` writes ``~/.qai_hub/client.ini``);
both are checked before any export starts. The offline onnxruntime-qnn compiler is the default and
needs neither.
"""

from __future__ import annotations

import configparser
import shutil
from pathlib import Path

from ...errors import BackendMissingError, BuildError, UsageError
from .settings import SocParameters


def check_ready() -> Path:
    """The client config holding the token, or a UsageError that says how to set one up."""
    try:
        from qai_hub import api_utils
    except ImportError:
        raise BackendMissingError("the qai-hub compiler needs the qai-hub client, which is not installed",
                                  hint="pip install 'edgeslm[build-qnn]' (or use the offline compiler, the default)") from None
    path = Path(api_utils.get_config_path())
    parser = configparser.ConfigParser()
    try:
        parser.read(path)
        token = parser.get("api", "api_token", fallback="").strip()
    except configparser.Error:
        token = ""
    if not token:
        raise UsageError(f"the qai-hub compiler needs a Qualcomm AI Hub API token; none is configured ({path})",
                         hint="run 'qai-hub configure --api_token TOKEN', or compile offline with onnxruntime-qnn "
                              "(the default)")
    return path


def compile_on_hub(qdq_model: Path, out_model: Path, name: str, soc: SocParameters,
                   profile: bool = False) -> dict[str, str]:
    """Submit one compile job for ``soc``'s AI Hub device (``precompiled_qnn_onnx``: an EPContext ONNX model
    wrapping the QNN context binary, what the engine loads) and download it as ``out_model`` + its binary.
    Not exercised here (no token, no network); the offline path is the tested one."""
    import qai_hub as hub

    if not soc.qai_hub_device:
        raise UsageError(f"no qai_hub_device is set for this SoC in the recipe ({name})")
    try:
        job = hub.submit_compile_job(model=str(qdq_model), device=hub.Device(soc.qai_hub_device),
                                     name=f"edgeslm {qdq_model.stem}",
                                     options="--target_runtime precompiled_qnn_onnx")
        target = job.get_target_model()
        if target is None:
            raise BuildError(f"Qualcomm AI Hub compile job {job.job_id} failed: {job.get_status().message}")
        downloaded = Path(target.download(str(out_model.parent / f"{out_model.stem}.download")))
        onnx_files = [downloaded] if downloaded.is_file() else sorted(downloaded.rglob("*.onnx"))
        if len(onnx_files) != 1:
            raise BuildError(f"Qualcomm AI Hub job {job.job_id} returned {len(onnx_files)} ONNX models, expected 1")
        for item in (downloaded.rglob("*") if downloaded.is_dir() else []):
            if item.is_file() and item.suffix != ".onnx":
                item.rename(out_model.parent / item.name)
        onnx_files[0].rename(out_model)
        if downloaded.is_dir():
            shutil.rmtree(downloaded)
        jobs = {"compile_job": str(job.job_id)}
        if profile:
            jobs["profile_job"] = str(hub.submit_profile_job(model=target, device=hub.Device(soc.qai_hub_device),
                                                             name=f"edgeslm {qdq_model.stem}").job_id)
        return jobs
    except (BuildError, UsageError):
        raise
    except Exception as exc:  # network, authentication, quota: the client raises its own types
        raise BuildError(f"Qualcomm AI Hub compile failed: {type(exc).__name__}: {exc}",
                         hint="check the network and the token, or compile offline (the default)") from None
