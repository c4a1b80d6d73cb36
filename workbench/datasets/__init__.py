"""Prompt generators: deterministic by seed, validated against the tokenizer they meet."""
from .base import PromptSet
from .ioi import IOI_NAMES, ioi_prompts

__all__ = ["PromptSet", "ioi_prompts", "IOI_NAMES"]
