"""Evaluation: HumanEval pass@k for our checkpoints and any OpenAI-compatible endpoint.

Light on import (no torch): the endpoint and samples paths only need httpx and the
sandbox; the checkpoint path imports the model lazily (see ckpt.py).
"""
