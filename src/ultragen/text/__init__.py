"""Text encoders: prompts -> zero-padded token states (B, max_length, dim)."""

from ultragen.text.base import NullTextEncoder, TextEncoder
from ultragen.text.minilm import MiniLMEncoder

__all__ = ["MiniLMEncoder", "NullTextEncoder", "TextEncoder"]
