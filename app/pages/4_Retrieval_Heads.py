"""Retrieval heads (Wu et al.): the layer-by-head retrieval-score grid, the needle grid
(accuracy over context length and depth), the masking curves and the KV-compression check,
from a saved run or a fresh small run."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import streamlit as st  # noqa: E402

from app.common import get_model, model_picker, run_picker, show_error  # noqa: E402
from workbench.errors import WorkbenchError  # noqa: E402
from analyses.retrieval.figures import kv_table, masking_curves, needle_grid, score_grid, top_heads_bar  # noqa: E402

st.set_page_config(page_title="Retrieval heads", layout="wide")
st.title("Retrieval heads")
st.caption("Wu et al.: heads whose attention argmax copies the needle token being generated. "
           "Run the full grid with `workbench retrieval`; the controls below run a small one.")
result = run_picker("retrieval")
with st.expander("run a small retrieval scan"):
    name = model_picker()
    lengths = st.text_input("context lengths", "200", key="lengths")
    depths = st.text_input("depths (%)", "50", key="depths")
    threshold = st.number_input("retrieval-head threshold", 0.0, 1.0, 0.1, key="threshold")
    if st.button("run", key="run"):
        from analyses.retrieval.analysis import RetrievalConfig, run

        try:
            config = RetrievalConfig(context_lengths=tuple(int(x) for x in lengths.split(",") if x.strip()),
                                     depths=tuple(float(x) for x in depths.split(",") if x.strip()), n_needles=1,
                                     threshold=float(threshold), mask_ks=(2,), n_random=1, kv_protect=5)
            with st.spinner("scoring heads ..."):
                result = run(get_model(name), config, progress=False)
                result.save()
        except (WorkbenchError, ValueError) as exc:
            show_error(exc)
if result is not None:
    m = result.metrics
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("retrieval heads", m["n_retrieval_heads"])
    c2.metric("share over threshold", f"{m['share_over_threshold']:.1%}")
    c3.metric("needle accuracy", f"{m['needle_accuracy']:.2f}")
    c4.metric("KV cache kept", f"{m['kv_compression']['cache_kept']:.1%}")
    st.plotly_chart(score_grid(result), width="stretch")
    left, right = st.columns(2)
    left.plotly_chart(needle_grid(result), width="stretch")
    right.plotly_chart(masking_curves(result), width="stretch")
    st.plotly_chart(top_heads_bar(result), width="stretch")
    st.subheader("KV-cache compression (RazorAttention-style)")
    st.dataframe(kv_table(result))
