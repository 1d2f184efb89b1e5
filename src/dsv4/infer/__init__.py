"""Inference: sampling (and, later, caches, the batched engine and speculative decoding)."""
