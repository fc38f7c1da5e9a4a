"""ONNX Runtime GenAI backend: int4 MatMulNBits models built by onnxruntime-genai's model builder."""
