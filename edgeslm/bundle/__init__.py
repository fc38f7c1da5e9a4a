"""Bundles: manifest, checksums, verification, packing."""
