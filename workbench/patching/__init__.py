"""Patching: the batched head-patching engine and the metrics it reports."""
from .engine import (HeadPatchSweep, head_masks_all_positions, head_masks_per_position, masks_from_heads,
                     run_head_patches)
from .edges import edge_masks, run_edge_patches
from .metrics import logit_diff, normalized_effect, accuracy

__all__ = ["HeadPatchSweep", "run_head_patches", "masks_from_heads", "run_edge_patches", "edge_masks", "head_masks_all_positions", "head_masks_per_position",
           "logit_diff", "normalized_effect", "accuracy"]
