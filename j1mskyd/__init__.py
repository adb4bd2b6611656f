"""j1mskyd: a small, trustworthy agency of LLM agents for a Raspberry Pi."""

__version__ = "0.1.0"
