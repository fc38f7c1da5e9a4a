"""ONNX Runtime sessions on the QNN execution provider (onnxruntime-qnn, a plugin EP library).

onnxruntime-qnn registers with ``onnxruntime.register_execution_provider_library`` and is attached per
session with ``add_provider_for_devices`` and provider options: ``backend_path`` (the HTP library
shipped in the wheel), ``soc_model`` and ``htp_arch``. On x86_64 the same HTP library compiles context
binaries offline and runs graphs in its simulator; on a Snapdragon it drives the NPU.
``session.disable_cpu_ep_fallback`` makes an unsupported node an error instead of a silent CPU run.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path
from typing import Any

from ...errors import BackendMissingError

EP_NAME = "QNNExecutionProvider"
_lock = threading.Lock()
_registered = False


def qnn_versions() -> dict[str, str]:
    """onnxruntime-qnn's version and the QNN SDK version it bundles (empty when not installed)."""
    try:
        import onnxruntime_qnn
        from onnxruntime_qnn import build_and_package_info as info
    except ImportError:
        return {}
    return {"onnxruntime_qnn": str(getattr(info, "__version__", "")), "qnn_sdk": str(getattr(info, "qnn_version", "")),
            "htp_library": str(Path(onnxruntime_qnn.get_qnn_htp_path()).name)}


@contextlib.contextmanager
def native_stdout_to_stderr():
    """The QNN libraries print a banner on file descriptor 1 when they load; keep stdout clean for
    ``--json`` readers by pointing fd 1 at stderr while native QNN code initialises."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _qnn_devices() -> list:
    global _registered
    try:
        import onnxruntime as ort
        import onnxruntime_qnn
    except ImportError:
        raise BackendMissingError("onnxruntime-qnn is not installed", hint="pip install 'edgeslm[qnn]'") from None
    with _lock:
        if not _registered:
            with native_stdout_to_stderr():
                ort.register_execution_provider_library(EP_NAME, onnxruntime_qnn.get_library_path())
            _registered = True
    return [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]


def htp_session(model: Path, soc_model: int | None = None, htp_arch: int | None = None,
                config: dict[str, str] | None = None, threads: int = 1, input_quantization_on_npu: bool = False,
                float16: bool = False) -> Any:
    """A session whose whole graph runs on the HTP backend (or fails). ``input_quantization_on_npu``: the
    QuantizeLinear right after a graph input runs on the HTP too (the EP leaves it to the CPU by default,
    which ``disable_cpu_ep_fallback`` refuses: the a16w8 vision encoder's pixel_values need it). ``float16``:
    a float graph runs in the HTP's fp16 precision (``enable_htp_fp16_precision``)."""
    import onnxruntime as ort
    import onnxruntime_qnn

    devices = _qnn_devices()
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.log_severity_level = 3
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    provider = {"backend_path": onnxruntime_qnn.get_qnn_htp_path(), "htp_performance_mode": "burst"}
    if soc_model is not None:
        provider["soc_model"] = str(soc_model)
    if htp_arch is not None:
        provider["htp_arch"] = str(htp_arch)
    if input_quantization_on_npu:
        provider["offload_graph_io_quantization"] = "0"
    if float16:
        provider["enable_htp_fp16_precision"] = "1"
    options.add_provider_for_devices(devices[:1], provider)
    with native_stdout_to_stderr():
        return ort.InferenceSession(str(model), sess_options=options)


def cpu_session(model: Path, threads: int = 1) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.log_severity_level = 3
    return ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])


def runner(session: Any):
    names = [o.name for o in session.get_outputs()]
    return lambda feeds: session.run(names, feeds)


def compile_context(model: Path, out_model: Path, soc_model: int, htp_arch: int, share: bool = False,
                    last_shared: bool = False, input_quantization_on_npu: bool = False, float16: bool = False) -> None:
    """Compile a QDQ graph into an EPContext model ``out_model`` plus its ``*_qnn.bin`` context binary."""
    config = {"ep.context_enable": "1", "ep.context_file_path": str(out_model), "ep.context_embed_mode": "0"}
    if share:
        config["ep.share_ep_contexts"] = "1"
        if last_shared:
            config["ep.stop_share_ep_contexts"] = "1"
    session = htp_session(model, soc_model, htp_arch, config, input_quantization_on_npu=input_quantization_on_npu,
                          float16=float16)
    del session
