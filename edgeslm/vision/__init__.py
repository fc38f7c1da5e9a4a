"""Device-side image pipeline for Phi-3.5-vision: safe image opening, preprocessing, prompt placeholders.

Only numpy and Pillow are used here (no torch, torchvision or transformers), so that a device with the
``ort`` extra can turn an image into the exact ``pixel_values`` the Hugging Face processor would give.
The algorithm and the references it was compared with are in ``docs/vision.md``.
"""
