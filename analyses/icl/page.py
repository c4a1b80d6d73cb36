"""What the ICL page adds to the template: a checkpoint slider that shows the KQ and OV
heatmaps at an earlier step of training, beside the final ones the figures show."""
from __future__ import annotations

from typing import Any

from .figures import kq_heatmaps, ov_heatmap


def checkpoint_explorer(result: Any) -> None:
    import streamlit as st

    steps = result.checkpoint_steps.tolist()
    st.subheader("KQ and OV over training")
    step = st.select_slider("checkpoint step", options=steps, value=steps[-1], key="icl-step",
                            help="move it to see the heads at an earlier checkpoint; the figures above are the last one")
    if step == steps[-1]:
        st.caption("At the last checkpoint: the KQ and OV heatmaps above. Pick an earlier step to compare.")
        return
    idx = steps.index(step)
    st.plotly_chart(kq_heatmaps(result, idx), width="stretch", key="icl-kq-at-step")
    st.plotly_chart(ov_heatmap(result, idx), width="stretch", key="icl-ov-at-step")
