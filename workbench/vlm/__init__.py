"""A small LLaVA-style vision-language model built from real parts, and what the vision-head
analyses need around it: scenes with captions, CHAIR, head divergence and reinforcement."""
from .chair import chair, mentioned_objects
from .model import DEFAULT_PROMPT, IMAGE_TOKEN, PairedBatch, VisionLanguageModel, split_prompt
from .objects import OBJECT_NAMES, OBJECTS, SYNONYMS

__all__ = ["chair", "mentioned_objects", "DEFAULT_PROMPT", "IMAGE_TOKEN", "PairedBatch", "VisionLanguageModel",
           "split_prompt", "OBJECT_NAMES", "OBJECTS", "SYNONYMS"]
