"""The special tokens of every dsv4 tokenizer, with fixed ids 0..14 in this order.

They are fixed (not learned) so that code everywhere (SFT masking, the server's stop
tokens, LIC's local provider, FIM) can name them without looking at a vocabulary.
"""

from __future__ import annotations

EOS = "<|endoftext|>"  # end of a document; also the separator between packed documents
PAD = "<|pad|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END = "<|end|>"  # end of one chat turn
THINK = "<think>"
END_THINK = "</think>"
TOOL_CALL = "<|tool_call|>"
END_TOOL_CALL = "<|/tool_call|>"
TOOL_RESULT = "<|tool_result|>"
END_TOOL_RESULT = "<|/tool_result|>"
FIM_PREFIX = "<|fim_prefix|>"
FIM_MIDDLE = "<|fim_middle|>"
FIM_SUFFIX = "<|fim_suffix|>"

SPECIAL_TOKENS: list[str] = [
    EOS,
    PAD,
    SYSTEM,
    USER,
    ASSISTANT,
    END,
    THINK,
    END_THINK,
    TOOL_CALL,
    END_TOOL_CALL,
    TOOL_RESULT,
    END_TOOL_RESULT,
    FIM_PREFIX,
    FIM_MIDDLE,
    FIM_SUFFIX,
]
