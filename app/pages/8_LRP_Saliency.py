"""LRP saliency: a prompt with its tokens coloured by AttnLRP relevance and the per-head relevance
grid; or a photograph with its LRP and SR overlays and top classes. Each from a saved run or a
fresh small run (the same ``run`` the CLI calls)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import streamlit as st  # noqa: E402

from app.common import get_model, model_picker, run_picker, show_error  # noqa: E402
from workbench.errors import WorkbenchError  # noqa: E402
from analyses.lrp import figures as F  # noqa: E402

st.set_page_config(page_title="LRP saliency", layout="wide")
st.title("LRP saliency")
mode = st.radio("explain", ["prompt", "image"], horizontal=True, key="mode")

if mode == "prompt":
    result = run_picker("lrp")
    with st.expander("explain a new prompt"):
        name = model_picker()
        prompt = st.text_input("prompt", "When Mary and John went to the store, John gave a drink to", key="prompt")
        c1, c2 = st.columns(2)
        target = c1.text_input("target token (empty: top prediction)", " Mary", key="target")
        contrast = c2.text_input("contrast token (empty: explain the target logit alone)", " John", key="contrast")
        if st.button("explain", key="run-prompt"):
            from analyses.lrp.analysis import LrpConfig, run

            try:
                with st.spinner("AttnLRP, gradient x input, rollout and the deletion test ..."):
                    config = LrpConfig(prompts=(prompt,), target=target or None, contrast=contrast or None, max_delete=6, n_random=2)
                    result = run(get_model(name), config, progress=False)
                    result.save()
            except WorkbenchError as exc:
                show_error(exc)
                result = None
    if result is not None:
        m = result.metrics
        c1, c2, c3 = st.columns(3)
        c1.metric("explained value", f"{m['target_value_mean']:.3f}")
        c2.metric("conservation error", f"{m['conservation_error']:.1e}", help=f"tolerance {m['conservation_tolerance']:.0e}")
        c3.metric("prompts", m["n_prompts"])
        i = st.selectbox("prompt", range(m["n_prompts"]), format_func=lambda k: m["prompts"][k], key="prompt-index") if m["n_prompts"] > 1 else 0
        tokens = result.tokens(i)
        st.plotly_chart(F.token_relevance(tokens, result.relevance("attnlrp", i), "AttnLRP relevance per token"), width="stretch")
        st.plotly_chart(F.method_comparison(tokens, {k: result.relevance(k, i) for k in ("attnlrp", "gradient_x_input", "rollout")}),
                        width="stretch")
        st.plotly_chart(F.head_relevance_grid(result), width="stretch")
        st.plotly_chart(F.deletion_figure(result), width="stretch")
        st.dataframe([{"method": F.METHOD_LABELS.get(k, k), "AOPC": v} for k, v in m["aopc"].items()])
else:
    result = run_picker("lrp_image")
    with st.expander("explain a new image"):
        from workbench.vision import SHIPPED

        photo = st.selectbox("shipped photograph", list(SHIPPED), key="photo")
        upload = st.file_uploader("or an image file", type=["png", "jpg", "jpeg", "bmp"], key="upload")
        if st.button("explain", key="run-image"):
            import tempfile

            from analyses.lrp.analysis import LrpImageConfig, run

            try:
                spec = photo
                if upload is not None:
                    tmp = Path(tempfile.mkdtemp()) / upload.name
                    tmp.write_bytes(upload.getvalue())
                    spec = str(tmp)
                with st.spinner("LRP, SR map, gradient and the deletion test ..."):
                    result = run(None, LrpImageConfig(images=(spec,)), progress=False)
                    result.save()
            except WorkbenchError as exc:
                show_error(exc)
                result = None
    if result is not None:
        i = st.selectbox("image", range(len(result.names)), format_func=lambda k: result.names[k], key="image-index")
        st.plotly_chart(F.image_maps(result, i), width="stretch")
        c1, c2 = st.columns(2)
        c1.plotly_chart(F.top_classes_figure(result, i), width="stretch")
        c2.plotly_chart(F.aopc_bar(result.metrics["aopc"]), width="stretch")
        st.caption(f"LRP rules: {result.metrics['rules']}")
