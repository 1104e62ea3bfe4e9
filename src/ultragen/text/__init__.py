"""Text encoders: prompts -> zero-padded token states (B, max_length, dim)."""

from ultragen.text.base import NullTextEncoder, TextEncoder
from ultragen.text.minilm import MiniLMEncoder
from ultragen.text.umt5 import UMT5Encoder

__all__ = ["MiniLMEncoder", "NullTextEncoder", "TextEncoder", "UMT5Encoder"]
