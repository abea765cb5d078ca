"""viral: visual representation alignment (VIRAL) and VLoRA for multimodal LLMs on transformers."""

__version__ = "0.1.0"
