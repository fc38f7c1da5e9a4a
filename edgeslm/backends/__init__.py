"""Backends: one package per artifact format family, declared in its ``__init__.py`` as ``BACKEND``.

The declaration (``edgeslm.backend.Backend``) is standard library only; the modules it names are
imported only when needed:

- ``settings``: a frozen dataclass of the recipe options for its formats (no heavy imports);
- ``exporter``: the build side, an object satisfying :class:`edgeslm.builder.exporter.Exporter`;
- ``scoring``: ``window_logits`` for the build's measured quality;
- ``engine``: the device side (see the runtime), importing only its own runtime package;
- ``host_support``: its accelerators and placement rules (standard library only).

``edgeslm.registry`` collects the built-in backends and plugins.
"""
