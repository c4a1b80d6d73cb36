"""A small LLaVA-style vision-language model built from real parts, and what the vision-head
analyses need around it: scenes with captions, CHAIR, head divergence and reinforcement."""
from workbench.analyses.vision_heads.vlm.chair import chair, mentioned_objects
from workbench.analyses.vision_heads.vlm.model import DEFAULT_PROMPT, IMAGE_TOKEN, PairedBatch, VisionLanguageModel, split_prompt
from workbench.analyses.vision_heads.vlm.objects import OBJECT_NAMES, OBJECTS, SYNONYMS

__all__ = ["chair", "mentioned_objects", "DEFAULT_PROMPT", "IMAGE_TOKEN", "PairedBatch", "VisionLanguageModel",
           "split_prompt", "OBJECT_NAMES", "OBJECTS", "SYNONYMS"]
