"""``edgeslm flash``: stage a bundle on a device, verify it there, then switch to it atomically."""
