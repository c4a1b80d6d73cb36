"""MIB interchange: edge scores and circuits in the JSON that MIB's circuit-track evaluation
loads (``eap.graph.Graph.from_json``, ``MIB_circuit_track.circuit_loading.load_graph_from_json``).

The file: ``{"cfg": {n_layers, n_heads, parallel_attn_mlp, d_model}, "nodes": {name:
{"in_graph"}}, "edges": {name: {"score", "in_graph"}}}``. MIB's nodes are ``input``,
``a{l}.h{h}``, ``m{l}`` and ``logits``; an edge into a head names the head's input it feeds,
``a0.h1->a2.h3<q>`` (``<k>``, ``<v>``), so MIB counts three edges where the workbench graph
(``workbench.patching.graph``) has one: GPT-2 small's 32,491.

Writing splits a head-input edge's score evenly over q, k and v (EAP's score of the shared
input is the sum of the three), all three in or out of the circuit together; reading adds
the three scores back and keeps the edge when any of the three is kept. Nothing else is
lost: a workbench file round-trips exactly (up to float rounding of the thirds).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from .graph import Graph
from ..names import parse_head

QKV = "qkv"


def mib_name(node: str) -> str:
    """Workbench node name -> MIB's: ``L3H5`` -> ``a3.h5``, ``M2`` -> ``m2``."""
    if node in ("input", "logits"):
        return node
    if node.startswith("M"):
        return f"m{node[1:]}"
    layer, head = parse_head(node)
    return f"a{layer}.h{head}"


def mib_edge_count(graph: Graph) -> int:
    """The graph's edges as MIB counts them (three per edge into a head)."""
    heads = torch.tensor([r.startswith("L") for r in graph.receivers])  # cpu: over the CPU graph
    return int((graph.valid.sum(0) * torch.where(heads, 3, 1)).sum())


def to_mib(graph: Graph, scores: torch.Tensor, circuit: torch.Tensor | None = None, d_model: int = 0) -> dict[str, Any]:
    """The MIB JSON object of edge ``scores`` [S R] and, optionally, a ``circuit`` [S R] bool
    (without one, no edge is marked in the graph: an importance-score file)."""
    if tuple(scores.shape) != tuple(graph.valid.shape):
        raise InputError(f"edge scores have shape {tuple(scores.shape)}, expected {tuple(graph.valid.shape)}")
    keep = (circuit.bool() if circuit is not None else torch.zeros_like(graph.valid)) & graph.valid
    s = scores.detach().double().cpu()
    edges: dict[str, dict[str, Any]] = {}
    for i, j in graph.valid.nonzero().tolist():
        src, dst = mib_name(graph.senders[i]), mib_name(graph.receivers[j])
        kept = bool(keep[i, j])
        if dst.startswith("a"):
            for letter in QKV:
                edges[f"{src}->{dst}<{letter}>"] = {"score": float(s[i, j]) / 3, "in_graph": kept}
        else:
            edges[f"{src}->{dst}"] = {"score": float(s[i, j]), "in_graph": kept}
    used = set(graph.nodes_of(keep)) | ({"input"} if keep.any() else set())
    nodes = {mib_name(n): {"in_graph": n in used} for n in graph.senders}
    nodes["logits"] = {"in_graph": True}
    cfg = {"n_layers": graph.n_layers, "n_heads": graph.n_heads, "parallel_attn_mlp": graph.parallel, "d_model": d_model}
    return {"cfg": cfg, "nodes": nodes, "edges": edges}


def from_mib(data: dict[str, Any], graph: Graph | None = None) -> tuple[Graph, torch.Tensor, torch.Tensor]:
    """(graph, edge scores [S R], circuit [S R] bool) from a MIB JSON object."""
    missing = [k for k in ("cfg", "nodes", "edges") if k not in data]
    if missing:
        raise InputError(f"not a MIB circuit file: it lacks {', '.join(missing)} (expected cfg, nodes, edges)")
    cfg = data["cfg"]
    g = graph or Graph.build(int(cfg["n_layers"]), int(cfg["n_heads"]), bool(cfg.get("parallel_attn_mlp", False)))
    if (g.n_layers, g.n_heads) != (int(cfg["n_layers"]), int(cfg["n_heads"])):
        raise InputError(f"the MIB file is for {cfg['n_layers']} layers x {cfg['n_heads']} heads, the model has "
                         f"{g.n_layers} x {g.n_heads}")
    s_index = {mib_name(n): i for i, n in enumerate(g.senders)}
    r_index = {mib_name(n): j for j, n in enumerate(g.receivers)}
    scores = torch.zeros(g.valid.shape, dtype=torch.float64)  # cpu: edge scores live on the CPU, like the graph
    keep = torch.zeros(g.valid.shape, dtype=torch.bool)  # cpu: see above
    for name, info in data["edges"].items():
        try:
            src, dst = name.split("->")
            i, j = s_index[src], r_index[dst.split("<")[0]]
        except (ValueError, KeyError):
            raise InputError(f"MIB edge '{name}' is not an edge of a {g.n_layers}-layer, {g.n_heads}-head graph") from None
        if not g.valid[i, j]:
            raise InputError(f"MIB edge '{name}' does not go forward in this graph")
        score = info.get("score")
        scores[i, j] += 0.0 if score is None else float(score)
        keep[i, j] |= bool(info.get("in_graph", False))
    return g, scores.float(), keep


def write_mib(path: str | Path, graph: Graph, scores: torch.Tensor, circuit: torch.Tensor | None = None,
              d_model: int = 0) -> Path:
    """Write the MIB JSON file (see ``to_mib``); returns its path."""
    path = Path(path).expanduser()
    path.write_text(json.dumps(to_mib(graph, scores, circuit, d_model)))
    return path


def read_mib(path: str | Path, graph: Graph | None = None) -> tuple[Graph, torch.Tensor, torch.Tensor]:
    """Read a MIB JSON file (see ``from_mib``); one clear line when it is not one."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"no MIB circuit file at {path}") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not JSON ({e.msg} at line {e.lineno}); MIB circuit files are JSON") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} is not a MIB circuit file (expected an object with cfg, nodes, edges)")
    return from_mib(data, graph)
