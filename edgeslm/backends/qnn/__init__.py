"""Snapdragon NPU format: static-shape QDQ graphs compiled offline into QNN HTP context binaries."""
