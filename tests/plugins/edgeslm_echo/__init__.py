"""A tiny third-party backend for tests: the ``echo-bytes`` format, declared as an edgeslm plugin.

It is what a plugin distribution looks like: a ``Backend`` declaration (standard library only) named
by an ``edgeslm.backends`` entry point, with its exporter, engine, scorer and host rules in its own
modules. Its "model" is no neural network: the exporter writes the reply from the recipe settings, and
the engine answers every prompt with it, byte by byte, then the end token. Tests use it as the fake
backend for selection, CLI and server logic that needs no real build (and say so), and to show that a
format can be added without touching edgeslm.
"""

from edgeslm.backend import Backend, FormatSpec

BACKEND = Backend(
    name="echo",
    formats=(FormatSpec("echo-bytes", "cpu", ("x86_64", "arm64"), "edgeslm", "0.1.0", "echo", "build-echo",
                        "edgeslm_echo.echo:EchoSettings"),),
    exporter_ref="edgeslm_echo.echo:EXPORTER",
    engine_ref="edgeslm_echo.echo:open_engine",
    scorer_ref="edgeslm_echo.echo",
    probe_packages=("edgeslm",),
)
