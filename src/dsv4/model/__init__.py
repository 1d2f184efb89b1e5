"""The DeepSeek-V4 model, one module per concept (see transformer.py for the assembly)."""

from dsv4.model.load import load_model
from dsv4.model.transformer import Transformer, build_model

__all__ = ["Transformer", "build_model", "load_model"]
