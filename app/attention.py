"""Attention patterns: type a prompt, pick a layer and head, see its token-by-token pattern."""
from __future__ import annotations

import streamlit as st

from workbench.app.common import get_model, model_picker, show_error
from workbench.attention_view import attention_patterns
from workbench.errors import WorkbenchError
from workbench.figures import token_heatmap


def attention_page() -> None:
    st.title("Attention patterns")
    name = model_picker()
    model = get_model(name)
    prompt = st.text_area("prompt", "When Mary and John went to the store, John gave a drink to", key="prompt")
    col1, col2 = st.columns(2)
    layer = col1.slider("layer", 0, model.shape.n_layers - 1, 0, key="layer")
    head = col2.slider("head", 0, model.shape.n_heads - 1, 0, key="head")
    try:
        view = attention_patterns(model, prompt, layer)
        st.plotly_chart(token_heatmap(view.pattern[head], view.tokens, f"L{layer}H{head} attention on {name}"),
                        width="stretch")
        st.caption(f"{len(view.tokens)} tokens; KV head {head // (model.shape.n_heads // model.shape.n_kv_heads)} "
                   f"serves this query head (grouped-query attention: {model.shape.n_heads} query heads, "
                   f"{model.shape.n_kv_heads} key-value heads).")
    except WorkbenchError as exc:
        show_error(exc)
