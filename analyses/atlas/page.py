"""What the atlas page adds to the template: the layer-by-head grid coloured by a chosen
column, and a head's card when it is clicked (or picked): every quantity with its
percentile and rank, its attention pattern on a chosen prompt, its top tokens through W_O
and the unembedding, and the saved runs behind each number."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .plots import atlas_grid
from .reads_from import READS_FROM, qk_run, reads_from
from .result import AtlasResult

if TYPE_CHECKING:
    import torch

    from workbench.models import Model


def fmt(v: float) -> str:
    """How the card and the table print a value."""
    return "nan" if not np.isfinite(v) else f"{v:.4g}"


def card_rows(result: AtlasResult, layer: int, head: int, i: int = 0) -> list[dict[str, str]]:
    """Every quantity of one head: value, percentile among the model's heads (share of heads
    with a value at or below it), rank (1 = strongest, direction-aware), unit, source run."""
    a = result.atlas(i)
    table = result.table(i).reshape(len(a.columns), -1).cpu().numpy()
    idx = layer * a.n_heads + head
    rows = []
    for j, c in enumerate(a.columns):
        x = table[j]
        v = float(x[idx])
        ok = np.isfinite(x)
        pct = 100.0 * float((x[ok] <= v).sum()) / max(1, int(ok.sum()))
        rank = 1 + int((c.direction * x[ok] > c.direction * v).sum())
        rows.append({"quantity": c.name, "value": fmt(v), "percentile": f"{pct:.0f}", "rank": f"{rank} of {int(ok.sum())}",
                     "unit": c.unit, "from": c.run or "this run"})
    return rows


def _cached_model(name: str) -> Model:
    import streamlit as st

    @st.cache_resource(show_spinner=f"loading {name} ...")
    def load(model_name: str) -> Model:
        from workbench.models import load_model

        return load_model(model_name)

    return load(name)


def _selected_head(event: Any) -> tuple[int, int] | None:
    try:
        points = event.selection.points if hasattr(event, "selection") else event["selection"]["points"]
    except (KeyError, TypeError, AttributeError):
        return None
    if not points:
        return None
    p = points[0]
    return int(round(float(p["y"]))), int(round(float(p["x"])))  # the grid's y is the layer, x the head


def _pick_head(result: AtlasResult, i: int) -> tuple[int, int]:
    """The column that colours model ``i``'s grid, and the head: clicked in the grid or picked
    in the select box. Returns (layer, head)."""
    import streamlit as st

    a = result.atlas(i)
    names = a.column_names()
    column = st.selectbox("colour the grid by", names, key="atlas-column") or names[0]
    event = st.plotly_chart(atlas_grid(result, column, i), on_select="rerun", selection_mode="points",
                            key=f"atlas-grid-{i}-{column}")
    clicked = _selected_head(event)
    heads = [(l, h) for l in range(a.n_layers) for h in range(a.n_heads)]
    if clicked is not None and st.session_state.get("atlas-last-click") != clicked:
        st.session_state["atlas-last-click"] = clicked  # a new click picks the head; the select box may change it later
        st.session_state["atlas-head"] = clicked[0] * a.n_heads + clicked[1]
    pick = st.selectbox("head (or click one in the grid)", range(len(heads)),
                        format_func=lambda k: f"L{heads[k][0]}H{heads[k][1]}", key="atlas-head")
    return heads[pick if pick is not None else 0]


def _card_view(result: AtlasResult, i: int, prompt: str,
               layer: int, head: int) -> tuple[list[str], torch.Tensor, list[str], list[float]] | None:
    """The head's tokens, attention pattern, top tokens and their logits on ``prompt``: the saved
    card's when it is that prompt, else a fresh one from the model (None without a prompt)."""
    import streamlit as st

    from workbench.errors import WorkbenchError

    card, pattern = result.atlas(i).card, result.card_pattern(i)
    if card is not None and prompt == card.prompt and pattern is not None:
        return card.tokens, pattern[layer, head], card.top_tokens[layer][head], card.top_logits[layer][head]
    if not prompt.strip():
        return None
    try:
        from .own_columns import head_card

        fresh, patterns = head_card(_cached_model(result.atlas(i).model), prompt)
    except WorkbenchError as exc:
        st.error(str(exc))
        return None
    return fresh.tokens, patterns[layer, head], fresh.top_tokens[layer][head], fresh.top_logits[layer][head]


def atlas_explorer(result: AtlasResult) -> None:
    import streamlit as st

    from workbench.figures import token_heatmap

    st.divider()
    i = 0
    if len(result.models) > 1:
        i = st.radio("model", range(len(result.models)), format_func=lambda k: result.models[k], horizontal=True,
                     key="atlas-which-model") or 0
    a = result.atlas(i)
    layer, head = _pick_head(result, i)
    st.subheader(f"Head card: L{layer}H{head}")
    st.table(card_rows(result, layer, head, i))
    reads_from_panel(result, i, layer, head, a.n_heads)
    runs = sorted({(c.analysis, c.run) for c in a.columns if c.run})
    if runs:
        st.markdown("Saved runs behind these numbers: " + "; ".join(
            f"[{key}](./{key}) `{run}`" for key, run in runs))
    default = a.card.prompt if a.card else ""
    prompt = st.text_input("prompt for the attention pattern and top tokens", default, key="atlas-card-prompt")
    view = _card_view(result, i, prompt, layer, head)
    if view is not None:
        tokens, pat, top, logits = view
        st.plotly_chart(token_heatmap(pat, tokens, f"L{layer}H{head} attention on the prompt"), key="atlas-pattern")
        st.markdown(f"**Top tokens of L{layer}H{head}'s output at the last position** (z @ W_O, the final norm's "
                    "weight, the unembedding): " + ", ".join(f"`{t!r}` ({v:.2f})" for t, v in zip(top, logits)))
    st.subheader("The whole table")
    st.dataframe(result.frame(i), width="stretch")


def _open_head(index: int) -> None:
    """A source's button: open that head's card (a callback, so it runs before the select box)."""
    import streamlit as st

    st.session_state["atlas-head"] = index


def reads_from_panel(result: AtlasResult, i: int, layer: int, head: int, n_heads: int) -> None:
    """Where the head reads from: measured and from the weights, each source head a button
    that opens its card."""
    import streamlit as st

    st.markdown(f"**Where L{layer}H{head} reads from**")
    qk = qk_run(result, i)
    if qk is None:
        st.caption(f"No QK-attribution run behind this atlas; run `workbench qk --model {result.atlas(i).model}` "
                   "and rebuild the atlas to see the sources.")
        return
    lists = reads_from(qk, layer, head)
    for col, kind in zip(st.columns(len(READS_FROM)), READS_FROM):
        with col:
            st.caption(kind)
            for k, row in enumerate(lists[kind]):
                src, label = row["source"], f"{row['source']} ({row['value']:.3g})"
                if src.startswith("L") and "H" in src and src[1:].replace("H", "", 1).isdigit():
                    sl, sh = (int(x) for x in src[1:].split("H"))
                    st.button(label, key=f"atlas-src-{kind}-{k}", on_click=_open_head, args=(sl * n_heads + sh,))
                else:
                    st.markdown(f"`{label}`")
