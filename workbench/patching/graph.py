"""The computational graph of heads and MLPs that edge-level circuit methods work on.

Nodes write to and read from the residual stream, so an edge u -> v is "the part of
v's input that is u's output". Senders: the input embedding, every attention head
``L{l}H{h}`` (its output z_h W_O_h) and every MLP ``M{l}``. Receivers: every head (its
own copy of the residual it reads, feeding its query, key and value), every MLP
(its input) and the logits (the final residual). An edge exists when the sender comes
before the receiver: heads of layer l feed MLP l and every later layer; with a parallel
residual (GPT-NeoX: attention and MLP both read the layer's input) heads of layer l feed
only the later layers, not MLP l.

Every name is importable from here; the rooms are: the graph itself and circuits over it
(``edge_graph``: ``Graph``, ``LogitDiff``, ``prune_dangling``, ``top_edges``), per-head
attention rebuilt from the weights (``head_qkv``), and two primitives:

* ``receiver_grads`` (``graph_grads``) - one backward pass that returns d metric / d (input of each
  receiver) [receiver batch pos d_model], splitting the shared residual into per-head
  inputs exactly (grouped-query keys and values included), for EAP and EAP-IG;
* ``run_edge_masks`` (``edge_masked``) - forwards in which every receiver sees the residual with some
  incoming edges replaced by an ablation value (mean or corrupt run), many edge
  configurations per batch: faithfulness, exact edge patching and ACDC use it.

Only the caching layer's hook points are used; the weights W_O, W_Q, W_K, W_V and the
norm before attention are read through the model's architecture adapter
(``workbench.adapters``) to rebuild per-head queries, keys and values from per-head inputs.
"""
from __future__ import annotations

from .edge_graph import Graph, LogitDiff, MetricFn, prune_dangling, top_edges
from .edge_masked import ablation_values, run_edge_masks
from .graph_grads import edge_scores_from, head_input_grads, receiver_grads, sender_deltas, sender_outputs
from .head_qkv import QKV, attn_scale, masked_positions, out_weights, per_head_attention

__all__ = ["Graph", "LogitDiff", "MetricFn", "prune_dangling", "top_edges", "ablation_values", "run_edge_masks",
           "receiver_grads", "head_input_grads", "sender_outputs", "sender_deltas", "edge_scores_from", "QKV",
           "out_weights", "attn_scale", "per_head_attention", "masked_positions"]
