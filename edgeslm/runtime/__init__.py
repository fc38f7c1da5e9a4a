"""Device side: host probe, artifact selection, engines and the Python API (edgeslm.load)."""
