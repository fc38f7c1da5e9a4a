"""How GGUF artifacts meet a host: llama.cpp's CPU kernels run on every x86_64 and arm64 CPU the format is
built for, so there is no accelerator to find and no rule beyond the generic ones. Standard library only."""

from __future__ import annotations

from ...backend import Placement, Rejection


def find_accelerators(files, host, findings) -> list:
    return []


def place(fmt, host, artifact, explicit: bool) -> Placement | Rejection:
    return Placement("cpu")
