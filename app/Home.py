"""Workbench dashboard: the entry point. Its pages are the home page (saved runs, models),
the attention viewer, and one page per installed analysis, built from the analysis's
spec by one template (``app/analysis_page.py``)."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app.analysis_page import analysis_page  # noqa: E402
from app.attention import attention_page  # noqa: E402
from app.home import home_page  # noqa: E402
from workbench.spec import specs  # noqa: E402


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
