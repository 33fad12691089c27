"""Text classification through the same pipeline as images: a pretrained transformer encoder,
text domains as CSV or JSONL files, and the one training loop."""
