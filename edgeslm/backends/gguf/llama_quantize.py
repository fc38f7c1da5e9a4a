"""K-quants through llama.cpp's own quantizer (``llama_model_quantize`` in llama-cpp-python).

gguf-py has numpy quantizers for Q4_0/Q8_0 only; for Q4_K_M the writer streams an F16 GGUF into the
work folder and llama.cpp quantizes it with its default recipe for that file type (Q6_K output and
half of the attention V / FFN down tensors, as ``llama-quantize`` does). llama.cpp reads the source
one tensor at a time, so memory stays at a few tensors. What it prints on the C side goes to the log.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from ...errors import BuildError

FTYPES = {"Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0"}


@contextlib.contextmanager
def native_output_to(log_path: Path) -> Iterator[None]:
    """File descriptors 1 and 2 (what C code prints) into ``log_path`` for the duration."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def llama_quantize(source: Path, out: Path, quant_type: str, threads: int, log_path: Path) -> None:
    try:
        import llama_cpp
    except ImportError:
        raise BuildError(f"quant_type {quant_type} is made by llama.cpp's quantizer, and llama-cpp-python is not "
                         "installed", hint="pip install 'edgeslm[build-gguf]' (it compiles llama.cpp: docs/gguf.md)") \
            from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[quant_type])
    params.nthread = threads
    with native_output_to(log_path):
        llama_cpp.llama_backend_init()
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    if status != 0 or not out.is_file():
        raise BuildError(f"llama.cpp's quantizer failed ({status}) making {quant_type} from {source.name}",
                         hint=f"see the log {log_path}")
