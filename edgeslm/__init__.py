"""edgeslm: put Phi-3.5 small language models onto edge devices.

Build side: ``edgeslm.builder.pipeline.build_bundle``. Device side: ``edgeslm.load(bundle)``.
Importing this package is cheap: subpackages are imported only when used.
"""

__version__ = "0.1.0"


def load(bundle, **kwargs):
    """Open a bundle and load the artifact that matches this host (see ``edgeslm.runtime.loaded_model.load``)."""
    from .runtime.loaded_model import load as _load

    return _load(bundle, **kwargs)
