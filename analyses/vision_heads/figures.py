"""Figures of the vision-head analysis (``analyses.vision_heads.analysis``): the layer-by-head VHD map,
T-VHD along a caption, the VHR alpha sweep against random heads, the projector's quality
against image-free baselines, and a scene with its captions before and after VHR."""
from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go

from workbench.figures.common import bar_top_heads, head_grid, line_curves


def vhd_map_figure(result: Any) -> go.Figure:
    """[layer head] mean VHD over decoding steps and held-out scenes."""
    return head_grid(result.vhd_map, f"VHD map ({result.distance} distance of hook_z, image vs no image)",
                     colorbar="VHD", diverging=False)


def top_heads_figure(result: Any, k: int = 15) -> go.Figure:
    return bar_top_heads(result.vhd_map, "Most vision-aware heads (mean VHD)", k=k, xaxis="VHD", by_abs=False)


def tvhd_figure(result: Any, index: int = 0) -> go.Figure:
    """T-VHD (mean of the top-k head VHDs) at each generated token of one caption; object
    words that are in the image are green, hallucinated ones red."""
    from analyses.vision_heads.vlm.objects import SYNONYMS

    tokens = result.caption_tokens[index]
    truth = set(result.truths[index])
    values = result.tvhd[index, : len(tokens)].float().numpy()
    colors = []
    for piece in tokens:
        obj = SYNONYMS.get(piece.strip().lower().strip(".,"))
        colors.append("#999" if obj is None else ("#2a9d3a" if obj in truth else "#d62728"))
    labels = [f"{t}:{p!r}" for t, p in enumerate(tokens)]
    fig = go.Figure(go.Bar(x=labels, y=values, marker_color=colors, hovertemplate="%{x}<br>T-VHD %{y:.3f}<extra></extra>"))
    k = getattr(result.config, "top_k", None)
    fig.update_layout(title=f"T-VHD along the caption of scene {index} (top-{k} heads; green: object in image, red: hallucinated)",
                      xaxis_title="generated token", yaxis_title="T-VHD")
    return fig


def sweep_figure(result: Any, metric: str = "chair_i") -> go.Figure:
    """CHAIR (or recall) over the alpha sweep: VHR heads vs the random-heads control."""
    sweep = result.sweep
    alphas = [1.0] + [r["alpha"] for r in sweep]
    before = result.chair["before"][metric]
    curves = {"VHR heads": [before] + [r["vhr"][metric] for r in sweep],
              "random heads": [before] + [r["random"][metric] for r in sweep]}
    return line_curves(alphas, curves, f"{metric} vs amplification alpha (alpha 1 = no intervention)", "alpha", metric)


def projector_figure(result: Any) -> go.Figure:
    """Does the model see? Held-out caption loss and object recall with the right image vs
    image-free baselines (another scene's image; no image at all)."""
    r = result
    fig = go.Figure()
    if r.caption_loss is not None:
        fig.add_trace(go.Bar(name="caption loss (nats/token)", x=["right image", "shuffled image", "no image"],
                             y=[r.caption_loss, r.caption_loss_shuffled_image, r.caption_loss_no_image]))
        fig.add_trace(go.Bar(name="object recall (greedy captions)", x=["right image", "shuffled image"],
                             y=[r.recall, r.recall_shuffled_image]))
    if r.object_rank_recall is not None:
        fig.add_trace(go.Bar(name="object ranking recall (forced choice)", x=["right image", "shuffled image", "chance"],
                             y=[r.object_rank_recall, r.object_rank_recall_shuffled_image, r.object_rank_recall_chance]))
    fig.update_layout(title="Projector quality on held-out scenes vs image-free baselines", barmode="group")
    return fig


def loss_curve_figure(result: Any) -> go.Figure:
    curve = result.loss_curve
    return line_curves(list(range(1, len(curve) + 1)), {"caption loss": curve}, "Projector training", "step", "loss (nats/token)")


def scene_figure(result: Any, index: int = 0) -> go.Figure:
    """One held-out scene with its reference caption and the captions before and after VHR."""
    img = result.images[index].numpy().astype(np.uint8)
    r = result
    fig = go.Figure(go.Image(z=img))
    text = (f"reference:{r.references[index]}<br>before:{r.captions_before[index]}<br>"
            f"VHR (alpha {r.alpha}):{r.captions_after[index]}<br>random heads:{r.captions_random[index]}")
    fig.update_layout(title={"text": text, "font": {"size": 12}}, margin={"t": 110, "l": 10, "r": 10, "b": 10},
                      xaxis={"visible": False}, yaxis={"visible": False}, height=420)
    return fig


def chair_table(result: Any) -> list[dict]:
    rows = []
    chair = result.chair
    for label, key in (("before", "before"), (f"VHR alpha {result.alpha}", "after"), ("random heads", "random_control")):
        s = chair[key]
        rows.append({"captions": label, "CHAIR_i": s["chair_i"], "CHAIR_s": s["chair_s"], "recall": s["recall"],
                     "words": s["mean_words"]})
    return rows


def vision_sections(result: Any) -> list:
    from workbench.report import Section

    sections = [
        Section("Vision heads: does the model see?",
                "Held-out caption loss and object recall with the right image against image-free baselines.",
                figures=[projector_figure(result), loss_curve_figure(result)]),
        Section("Vision-aware head divergence",
                f"VHD = {result.distance} distance of each head's output before W_O ({result.where}) with vs without the image.",
                figures=[vhd_map_figure(result), top_heads_figure(result), tvhd_figure(result, 0)]),
        Section("VHR: CHAIR before and after, against random heads", tables=[chair_table(result)],
                figures=[sweep_figure(result, "chair_i"), sweep_figure(result, "recall"), scene_figure(result, 0)]),
    ]
    return sections


def sweep_table(result: Any) -> list[dict]:
    """The alpha sweep as rows: CHAIR_i and recall of the VHR heads against random heads."""
    return [{"alpha": r["alpha"], "CHAIR_i VHR": r["vhr"]["chair_i"], "CHAIR_i random": r["random"]["chair_i"],
             "recall VHR": r["vhr"]["recall"], "recall random": r["random"]["recall"],
             "heads per layer": r["heads_per_layer"]} for r in result.sweep]


def headline(result: Any) -> list[tuple[str, Any]]:
    """The tiles on the vision-heads page."""
    chair = result.chair
    tiles = [("object recall (image)", f"{result.recall:.2f}")]
    if result.recall_shuffled_image is not None:
        tiles.append(("recall (shuffled image)", f"{result.recall_shuffled_image:.2f}"))
    before, after = chair["before"]["chair_i"], chair["after"]["chair_i"]
    tiles += [("CHAIR_i before", f"{before:.3f}"), (f"CHAIR_i after (alpha {result.alpha})", f"{after:.3f} ({after - before:+.3f})")]
    return tiles
