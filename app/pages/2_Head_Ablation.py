"""Head ablation: the layer-by-head effect grid of a saved run, or a fresh small run."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import streamlit as st  # noqa: E402

from app.common import get_model, model_picker, run_picker, show_error  # noqa: E402
from workbench.errors import WorkbenchError  # noqa: E402
from workbench.figures.ablation import effect_grid, top_heads_bar  # noqa: E402

st.set_page_config(page_title="Head ablation", layout="wide")
st.title("Head ablation")
result = run_picker("ablation")
with st.expander("run a new ablation"):
    name = model_picker()
    n = st.number_input("prompts", 1, 256, 16)
    if st.button("run"):
        from analyses.head_ablation import AblationConfig, run

        try:
            with st.spinner("ablating every head ..."):
                result = run(get_model(name), AblationConfig(n=int(n)), progress=False)
                result.save()
        except WorkbenchError as exc:
            show_error(exc)
if result is not None:
    m = result.metrics
    c1, c2, c3 = st.columns(3)
    c1.metric("clean logit diff (IO - S)", f"{m['clean_logit_diff']:.3f}")
    c2.metric("accuracy", f"{m['accuracy']:.3f}")
    c3.metric("prompts", m["n_prompts"])
    st.plotly_chart(effect_grid(result), width="stretch")
    st.plotly_chart(top_heads_bar(result), width="stretch")
    st.dataframe([{"head": f"L{t['layer']}H{t['head']}", "effect": t["effect"]} for t in m["top_heads"]])
