"""ultragen: native high-resolution video diffusion transformers with pluggable attention strategies."""

__version__ = "0.1.0"
