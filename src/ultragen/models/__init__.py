"""Wan2.1 DiT, its blocks, rotary embeddings, LoRA deltas and attention strategies."""
