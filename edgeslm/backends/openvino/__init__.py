"""OpenVINO backend: stateful IR with NNCF weight compression (optimum-intel), run by openvino-genai."""
