"""Prompt data on the host: sources (files, TFDS, procedural tasks), templates, tokenizers and
deterministic, resumable, per-host iteration."""
