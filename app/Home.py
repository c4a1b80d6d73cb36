"""Workbench dashboard: the entry point. Its pages are the home page (saved runs, models),
the attention viewer, and one page per installed analysis, built from the analysis's
spec by one template (``app/analysis_page.py``)."""
from __future__ import annotations

import streamlit as st

from workbench.app.analysis_page import analysis_page
from workbench.app.attention import attention_page
from workbench.app.home_page import home_page
from workbench.spec import specs


def _page_of(key: str):
    def page() -> None:
        analysis_page(key)

    page.__name__ = f"page_{key}"
    return page


st.set_page_config(page_title="Interpretability workbench", layout="wide")
pages = [st.Page(home_page, title="Home", url_path="home", default=True),
         st.Page(attention_page, title="Attention", url_path="attention")]
pages += [st.Page(_page_of(key), title=spec.title, url_path=key) for key, spec in specs().items()]
st.navigation(pages).run()
