"""What the LRP page adds to the template: a radio (``mode``) between the prompt and the image
runs, and for the chosen kind one prompt (tokens coloured by each method) or one photograph
(its LRP, SR and gradient overlays and top classes) at a time. The run shown is the picked
run when it is of that kind, else the newest saved run of that kind."""
from __future__ import annotations

from typing import Any

from .analysis import METHODS
from .figures import METHOD_LABELS, image_maps, method_comparison, token_relevance, top_classes_figure

MODES = {"prompt": "lrp", "image": "lrp_image"}


def _newest(analysis: str) -> Any:
    from workbench.errors import WorkbenchError
    from workbench.results import list_runs, load_result

    for run in list_runs():
        if run["analysis"] == analysis:
            try:
                return load_result(run["path"])
            except WorkbenchError:
                continue
    return None


def mode_explorer(result: Any) -> None:
    import streamlit as st

    st.divider()
    mode = st.radio("explain", list(MODES), horizontal=True, key="mode")
    assert mode is not None  # a radio with its default index (the first option) always has a choice
    shown = result if getattr(result, "analysis", None) == MODES[mode] else _newest(MODES[mode])
    if shown is None:
        flag = "--prompt 'some text'" if mode == "prompt" else "--image chelsea"
        st.info(f"No saved {mode} runs yet. Run `workbench lrp {flag}` or use the form above.")
        return
    if shown is not result and shown.path is not None:
        st.caption(f"the newest saved {mode} run: {shown.path.name}")
    if mode == "prompt":
        _one_prompt(st, shown)
    else:
        _one_image(st, shown)


def _one_prompt(st: Any, result: Any) -> None:
    st.subheader("One prompt")
    n = result.n_prompts
    i = st.selectbox("prompt", range(n), format_func=lambda k: result.prompts[k], key="prompt-index") if n > 1 else 0
    contrast = result.contrasts[i]
    c1, c2, c3 = st.columns(3)
    c1.metric("explained value", f"{float(result.target_values[i]):.3f}",
              help=f"logit({result.targets[i]!r})" + (f" - logit({contrast!r})" if contrast is not None else ""))
    c2.metric("conservation error (run)", f"{result.conservation_error:.1e}",
              help=f"tolerance {result.conservation_tolerance:.0e}")
    c3.metric("prompts", n)
    tokens = result.tokens(i)
    st.plotly_chart(token_relevance(tokens, result.relevance("attnlrp", i), "AttnLRP relevance per token"),
                    width="stretch", key="lrp-one-prompt-tokens")
    st.plotly_chart(method_comparison(tokens, {k: result.relevance(k, i) for k in METHODS}), width="stretch",
                    key="lrp-one-prompt-methods")
    st.dataframe([{"method": METHOD_LABELS.get(k, k), "AOPC": v} for k, v in result.aopc.items()])


def _one_image(st: Any, result: Any) -> None:
    st.subheader("One photograph")
    names = result.names
    i = st.selectbox("image", range(len(names)), format_func=lambda k: names[k], key="image-index")
    st.plotly_chart(image_maps(result, i), width="stretch", key="lrp-one-image-maps")
    st.plotly_chart(top_classes_figure(result, i), width="stretch", key="lrp-one-image-top")
    st.caption(f"LRP rules: {result.rules}")
