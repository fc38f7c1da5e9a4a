"""Backends: one package per artifact format family.

Each backend package has three small modules, imported only when needed:

- ``settings``: a frozen dataclass of the recipe options for its formats (no heavy imports);
- ``exporter``: the build side, an object satisfying :class:`edgeslm.builder.exporter.Exporter`;
- ``engine``: the device side (see the runtime), importing only its own runtime package.
"""
