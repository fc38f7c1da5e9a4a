"""Build side: from a Hugging Face checkpoint to a bundle."""
