"""What the vision-heads page adds to the page template: a scene picker with the scene's
image, its captions before and after VHR and its T-VHD, the alpha sweep as a table, and
the ``--image`` captions when the run has them."""
from __future__ import annotations

from typing import Any

from workbench.analyses.vision_heads.figures import sweep_table, tvhd_figure


def page_extra(result: Any) -> None:
    import streamlit as st

    st.subheader("A scene, its T-VHD and its captions")
    n_shown = result.n_shown
    idx = st.slider("scene", 0, max(n_shown - 1, 0), 0, key="vhd-scene") if n_shown > 1 else 0
    img_col, text_col = st.columns([1, 2])
    img_col.image(result.images[idx].cpu().numpy(), caption=f"objects: {', '.join(result.truths[idx])}")
    text_col.markdown(f"**reference:** {result.references[idx]}  \n**before:** {result.captions_before[idx]}  \n"
                      f"**VHR ({result.head_set}, alpha {result.alpha}):** {result.captions_after[idx]}  \n"
                      f"**random heads:** {result.captions_random[idx]}  \n"
                      f"**all heads:** {(result.captions_all_heads or ['-'] * (idx + 1))[idx]}")
    text_col.plotly_chart(tvhd_figure(result, idx), width="stretch", key="vhd-scene-tvhd")

    st.subheader(f"The validation sweep ({result.n_val} scenes): how alpha and the head set were chosen")
    st.table(sweep_table(result))

    user = result.user_image
    if user:
        st.subheader(f"Your image: {user.get('image', '')}")
        st.markdown(f"**before:** {user['caption_before']}  \n**after VHR:** {user['caption_after']}  \n"
                    f"objects before: {', '.join(user['objects_before']) or '-'}; after: {', '.join(user['objects_after']) or '-'}")
