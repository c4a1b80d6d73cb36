"""Figures of the vision-head analysis (``workbench.analyses.vision_heads.analysis``): the layer-by-head VHD map,
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
    from workbench.analyses.vision_heads.vlm.objects import SYNONYMS

    tokens = result.caption_tokens[index]
    truth = set(result.truths[index])
    values = result.tvhd[index, : len(tokens)].float().cpu().numpy()
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
    """The validation sweep: ``metric`` (chair_i, recall, or the objective recall - CHAIR_i) per
    alpha for each head set, against no intervention (alpha 1); the chosen setting is marked."""
    rows = result.sweep
    before = result.val_before
    fig = go.Figure()
    for hs in dict.fromkeys(r.head_set for r in rows):
        mine = [r for r in rows if r.head_set == hs]
        ys = [r.objective if metric == "objective" else r.vhr[metric] for r in mine]
        fig.add_trace(go.Scatter(x=[r.alpha for r in mine], y=ys, mode="lines+markers", name=hs))
    if before:
        base = before["recall"] - before["chair_i"] if metric == "objective" else before.get(metric)
        fig.add_hline(y=base, line_dash="dot", annotation_text="no intervention")
    fig.update_layout(title=f"Validation ({result.n_val} scenes): {metric} per alpha and head set; chosen: "
                            f"{result.head_set} at alpha {result.alpha} ({result.chosen_by})",
                      xaxis_title="alpha", yaxis_title=metric)
    return fig


def conditions_figure(result: Any) -> go.Figure:
    """Test split: CHAIR_i, CHAIR_s and recall before VHR, after it, with random heads and with
    every head scaled alike, with bootstrap intervals over scenes."""
    ivs = result.chair_intervals
    fig = go.Figure()
    for cond, label in CONDITION_LABELS.items():
        xs, ys, lo, hi = [], [], [], []
        for m in ("chair_i", "chair_s", "recall"):
            iv = ivs.get(cond, {}).get(m)
            if iv is None:
                continue
            xs.append(m)
            ys.append(iv.value)
            lo.append(iv.value - iv.low)
            hi.append(iv.high - iv.value)
        fig.add_trace(go.Bar(name=label, x=xs, y=ys, error_y={"type": "data", "array": hi, "arrayminus": lo}))
    fig.update_layout(barmode="group", title=f"Test split ({result.n_scenes} scenes): {result.head_set} heads at alpha "
                                             f"{result.alpha} against the controls (95% bootstrap intervals)")
    return fig


CONDITION_LABELS = {"before": "before", "after": "VHR", "random_control": "random heads", "all_heads": "all heads"}


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
    img = result.images[index].cpu().numpy().astype(np.uint8)
    r = result
    fig = go.Figure(go.Image(z=img))
    text = (f"reference:{r.references[index]}<br>before:{r.captions_before[index]}<br>"
            f"VHR (alpha {r.alpha}):{r.captions_after[index]}<br>random heads:{r.captions_random[index]}")
    fig.update_layout(title={"text": text, "font": {"size": 12}}, margin={"t": 110, "l": 10, "r": 10, "b": 10},
                      xaxis={"visible": False}, yaxis={"visible": False}, height=420)
    return fig


def chair_table(result: Any) -> list[dict]:
    """Test split: one row per condition, each metric with its interval."""
    rows = []
    ivs = result.chair_intervals
    for key, label in CONDITION_LABELS.items():
        if key not in result.chair:
            continue
        s = result.chair[key]
        row = {"captions (test)": label if key != "after" else f"VHR {result.head_set} alpha {result.alpha}"}
        for m, name in (("chair_i", "CHAIR_i"), ("chair_s", "CHAIR_s"), ("recall", "recall"), ("mentioned", "objects/caption")):
            iv = ivs.get(key, {}).get(m)
            row[name] = iv.text() if iv is not None else s.get("mentioned_per_caption" if m == "mentioned" else m)
        rows.append(row)
    return rows


def choice_text(result: Any) -> str:
    """How the setting was chosen, and how often resampled validation scenes choose it."""
    ch = result.choice
    if ch is None:
        return f"{result.head_set} at alpha {result.alpha} was given (chosen_by: {result.chosen_by})."
    out = (f"Criterion: {result.criterion}. Chosen: {result.head_set} at alpha {result.alpha:g} on "
           f"{result.n_val} validation scenes; {ch.stability:.0%} of {ch.n_resamples} bootstrap resamples of "
           "them choose it.")
    if not ch.admissible:
        out += " No setting kept recall and mentions within no intervention's interval: chosen by recall alone."
    return out


def vision_sections(result: Any) -> list:
    from workbench.report import Section

    sections = [
        Section("Vision heads: does the model see?",
                "Held-out caption loss and object recall with the right image against image-free baselines.",
                figures=[projector_figure(result), loss_curve_figure(result)]),
        Section("Vision-aware head divergence",
                f"VHD = {result.distance} distance of each head's output before W_O ({result.where}) with vs without the image.",
                figures=[vhd_map_figure(result), top_heads_figure(result), tvhd_figure(result, 0)]),
        Section("VHR on the test split: CHAIR and recall before and after, against random heads and all heads",
                f"alpha and the head set chosen on {result.n_val} validation scenes ({result.chosen_by}); reported on "
                f"{result.n_scenes} test scenes; random heads pooled over {result.random_draws} draws.",
                tables=[chair_table(result)], figures=[conditions_figure(result), scene_figure(result, 0)]),
        Section("VHR on the validation split: the choice", choice_text(result), tables=[sweep_table(result)],
                figures=[sweep_figure(result, "objective"), sweep_figure(result, "chair_i"), sweep_figure(result, "recall")]),
    ]
    return sections


def sweep_table(result: Any) -> list[dict]:
    """The validation sweep as rows (split: val): each setting's scores, whether it kept recall and
    mentions above no intervention's interval (admissible) and the share of bootstrap resamples
    of the validation scenes that chose it."""
    rows = []
    ch = result.choice
    floors: tuple[float, float] | None = (ch.recall_floor, ch.mentioned_floor) if ch else None
    if result.val_before:
        b = result.val_before
        rows.append({"head set": "none", "alpha": 1.0, "CHAIR_i": b["chair_i"], "CHAIR_s": b["chair_s"],
                     "recall": b["recall"], "objects/caption": b.get("mentioned_per_caption"),
                     "recall - CHAIR_i": b["recall"] - b["chair_i"]})
    shares = ch.shares if ch else []
    for i, r in enumerate(result.sweep):
        v = r.vhr
        row = {"head set": r.head_set, "alpha": r.alpha, "CHAIR_i": v["chair_i"], "CHAIR_s": v["chair_s"],
               "recall": v["recall"], "objects/caption": v.get("mentioned_per_caption"), "recall - CHAIR_i": r.objective}
        if floors is not None and None not in floors:  # no floors: no admissibility column
            row["admissible"] = bool(v["recall"] >= floors[0] - 1e-12 and v["mentioned_per_caption"] >= floors[1] - 1e-12)
        if i < len(shares):
            row["chosen in resamples"] = shares[i]
        rows.append(row)
    return rows


def headline(result: Any) -> list[tuple[str, Any]]:
    """The tiles on the vision-heads page (test split)."""
    chair = result.chair
    tiles = [("object recall (test)", f"{result.recall:.2f}")]
    if result.recall_shuffled_image is not None:
        tiles.append(("recall (shuffled image)", f"{result.recall_shuffled_image:.2f}"))
    before, after = chair["before"]["chair_i"], chair["after"]["chair_i"]
    tiles += [("CHAIR_i before", f"{before:.3f}"),
              (f"CHAIR_i after ({result.head_set}, alpha {result.alpha})", f"{after:.3f} ({after - before:+.3f})")]
    return tiles


def effect_words(iv: Any) -> str:
    """Whether a paired difference's interval excludes 0; when not, roughly how many test scenes
    an interval of this effect would need to (the half-width shrinks as 1/sqrt(n))."""
    if iv.low > 0 or iv.high < 0:
        return "interval excludes 0"
    half = (iv.high - iv.low) / 2
    if abs(iv.value) < 1e-12:
        return "interval includes 0 (no effect measured)"
    need = int(np.ceil(iv.n * (half / abs(iv.value)) ** 2))
    return f"interval includes 0 (excluding it at this effect needs about {need} test scenes)"


def headline_figures(result: Any) -> list[dict]:
    """The README row: test-split recall and CHAIR_i before VHR, after it and for both controls,
    with their intervals; the validated alpha and head set."""
    from workbench.analyses.vision_heads.vlm.model import feature_grid
    from workbench.spec import figure

    ivs = result.chair_intervals
    out = []
    if result.projector:  # the built model: its construction and limits travel with its figures
        c = result.config
        grid = feature_grid(c.image_size, c.grid)
        out.append(figure(
            f"built model (EfficientNet-Lite0, {grid}x{grid} visual tokens, linear projector trained "
            f"{c.projector_steps} steps on {c.projector_n_train} scenes, frozen {str(result.meta.get('model', 'language model')).split('+')[-1]}; "
            "8 objects, one photograph each: training crops from one half, val/test crops from the other; partners "
            "co-occur 0.85 in training, 0 in val/test; see docs/vision-heads.md): test scenes", result.n_scenes,
            n=result.n_scenes, split="test", fmt="d"))
        for art in result.meta.get("artifacts") or []:
            # the checksum alone: whether it is the published build is the check's verdict on the
            # row's artifacts (and one stderr line at build time), not part of a figure's text
            out.append(figure(f"projector weights sha256 {art['sha256'][:16]}",
                              split="train"))
    how = f"chosen on {result.n_val} val scenes" if result.chosen_by == "val" else "given"
    for cond, label in (("before", "before VHR"), ("after", "VHR"),
                        ("random_control", f"{result.random_draws} random head draws"), ("all_heads", "all heads scaled")):
        for m, name in (("recall", "recall"), ("chair_i", "CHAIR_i"), ("chair_s", "CHAIR_s"), ("mentioned", "objects per caption")):
            iv = ivs.get(cond, {}).get(m)
            if iv is not None:
                out.append(figure(f"{name}, {label}", interval=iv, fmt=".2f"))
    if result.chosen_by == "val":
        ch = result.choice
        out.append(figure(f"VHR setting {result.head_set}, alpha {result.alpha:g} {how}: share of "
                          f"{ch.n_resamples} validation resamples choosing it"
                          + ("" if ch.admissible else " (no setting kept recall and mentions: chosen by recall)"),
                          ch.stability, n=result.n_val, split="val", fmt=".2f"))
    ivs_all = result.intervals
    for m, name in (("chair_i", "CHAIR_i"), ("recall", "recall")):
        iv = ivs_all.get(f"{m} after - random_control")
        if iv is not None:
            out.append(figure(f"{name}, VHR minus random heads (paired over test scenes): {effect_words(iv)}", interval=iv,
                              fmt="+.3f"))
    if result.recall_shuffled_image is not None:
        out.append(figure("recall with another scene's image (prior only)", result.recall_shuffled_image,
                          n=result.n_scenes, split="test", fmt=".2f"))
    return out
