"""Vision heads: the VHD map, T-VHD along a generated caption, a scene with its captions
before and after VHR, and the alpha sweep against random heads (a saved run, or a new one)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import streamlit as st  # noqa: E402

from app.common import get_model, model_picker, run_picker, show_error  # noqa: E402
from workbench.errors import WorkbenchError  # noqa: E402
from analyses.vision_heads.figures import (  # noqa: E402
    chair_table, loss_curve_figure, projector_figure, sweep_figure, top_heads_figure, tvhd_figure, vhd_map_figure,
)

st.set_page_config(page_title="Vision heads", layout="wide")
st.title("Vision-aware heads (VHD) and head reinforcement (VHR)")
st.caption("VHD: L2 distance of each head's output before W_O (blocks.{l}.attn.hook_z) with vs without the image, "
           "per decoding step. VHR amplifies, per layer, the heads above the layer median (outliers dropped).")
result = run_picker("vhd")
with st.expander("run a new analysis (builds the projector on first use: minutes on a CPU)"):
    name = model_picker()
    n = st.number_input("held-out scenes", 1, 64, 4)
    alpha = st.number_input("alpha", 0.1, 10.0, 2.0)
    if st.button("run"):
        from analyses.vision_heads.analysis import VHDConfig, run

        try:
            with st.spinner("captioning scenes, measuring VHD, sweeping VHR ..."):
                result = run(get_model(name), VHDConfig(n_scenes=int(n), alpha=float(alpha), alphas=(float(alpha),)),
                             progress=False)
                result.save()
        except WorkbenchError as exc:
            show_error(exc)

if result is not None:
    m = result.metrics
    cols = st.columns(4)
    cols[0].metric("object recall (image)", f"{m['recall']:.2f}")
    if "recall_shuffled_image" in m:
        cols[1].metric("recall (shuffled image)", f"{m['recall_shuffled_image']:.2f}")
    cols[2].metric("CHAIR_i before", f"{m['chair']['before']['chair_i']:.3f}")
    cols[3].metric(f"CHAIR_i after (alpha {m['alpha']})", f"{m['chair']['after']['chair_i']:.3f}",
                   delta=f"{m['chair']['after']['chair_i'] - m['chair']['before']['chair_i']:+.3f}", delta_color="inverse")
    left, right = st.columns(2)
    left.plotly_chart(vhd_map_figure(result), width="stretch")
    right.plotly_chart(top_heads_figure(result), width="stretch")

    st.subheader("A scene, its T-VHD and its captions")
    n_shown = int(result.arrays["images"].shape[0])
    idx = st.slider("scene", 0, max(n_shown - 1, 0), 0, key="scene") if n_shown > 1 else 0
    img_col, text_col = st.columns([1, 2])
    img_col.image(result.arrays["images"][idx].numpy(), caption=f"objects: {', '.join(m['truths'][idx])}")
    text_col.markdown(f"**reference:** {m['references'][idx]}  \n**before:** {m['captions_before'][idx]}  \n"
                      f"**VHR (alpha {m['alpha']}):** {m['captions_after'][idx]}  \n"
                      f"**random heads:** {m['captions_random'][idx]}")
    text_col.plotly_chart(tvhd_figure(result, idx), width="stretch")

    st.subheader("CHAIR before and after VHR, against random heads")
    st.table(chair_table(result))
    a, b = st.columns(2)
    a.plotly_chart(sweep_figure(result, "chair_i"), width="stretch")
    b.plotly_chart(sweep_figure(result, "recall"), width="stretch")

    st.subheader("Does the model see?")
    a, b = st.columns(2)
    a.plotly_chart(projector_figure(result), width="stretch")
    b.plotly_chart(loss_curve_figure(result), width="stretch")
