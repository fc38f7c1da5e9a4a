"""OpenVINO backend: stateful IR with NNCF weight compression (optimum-intel), run by openvino-genai."""

from ...backend import Backend, FormatSpec

_HERE = __name__

BACKEND = Backend(
    name="openvino",
    formats=(
        FormatSpec("openvino-int4", "npu", ("x86_64",), "openvino-genai", "2026.0", "openvino", "build-openvino",
                   f"{_HERE}.settings:OpenVinoSettings"),
    ),
    exporter_ref=f"{_HERE}.exporter:EXPORTER",
    engine_ref=f"{_HERE}.engine:open_engine",
    scorer_ref=f"{_HERE}.scoring",
    host_support_ref=f"{_HERE}.host_support",
    probe_packages=("openvino", "openvino-genai"),
)
