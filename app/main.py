"""ManiFPT Studio entrypoint (`streamlit run app/main.py`): page config, workspace picker, navigation."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

# `streamlit run app/main.py` puts only app/ on sys.path; the pages import the `app` package from the repo
REPO = str(Path(__file__).resolve().parents[1])
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from app import state  # noqa: E402
from app.text import md, md_code  # noqa: E402
from fingerprint_core.workspace import WorkspaceError  # noqa: E402

# The browser tab's icon, an emoji: Streamlit draws it as a data: URL. A ":material/...:" page icon is fetched
# from fonts.gstatic.com on every page (and without one, each page's own icon below becomes the tab's icon, and
# is fetched so); the app makes no request outside the machine that serves it. The Material icons inside the
# page (navigation, buttons, messages) come from the font Streamlit ships.
PAGE_ICON = "🔍"
st.set_page_config(page_title="ManiFPT Studio", page_icon=PAGE_ICON, layout="wide")

# One line per page; paths are relative to this file.
PAGES = [
    st.Page("page_models.py", title="Models", icon=":material/grid_view:", default=True),
    st.Page("page_map.py", title="Fingerprint map", icon=":material/scatter_plot:"),
    st.Page("page_spectra.py", title="Spectra", icon=":material/graphic_eq:"),
    st.Page("page_design.py", title="Design choices", icon=":material/account_tree:"),
    st.Page("page_similarity.py", title="Model similarity", icon=":material/grid_on:"),
    st.Page("page_attribute.py", title="Attribute", icon=":material/search:"),
    st.Page("page_benchmark.py", title="Benchmark", icon=":material/leaderboard:"),
]
page = st.navigation(PAGES)


def workspace_picker() -> None:
    """Sidebar: choose among the workspaces under the root (never a typed path), or say how to make one."""
    root = state.workspace_root()
    options = [str(p) for p in state.workspace_choices(root)]
    st.sidebar.markdown("**:material/fingerprint: ManiFPT Studio**")
    if not options:
        st.session_state[state.WORKSPACE_KEY] = None
        st.sidebar.caption(f"No workspace in {md_code(root)}. Create one with")
        st.sidebar.code(state.create_command(root), language="bash", wrap_lines=True)
        return
    if st.session_state.get(state.WORKSPACE_KEY) not in options:  # first visit, or it was removed
        st.session_state[state.WORKSPACE_KEY] = options[0]
    st.sidebar.selectbox(  # a selectbox shows its options as plain text: names need no escaping there
        "Workspace", options, key=state.WORKSPACE_KEY, format_func=lambda p: Path(p).name,
        help="Workspaces are listed from the root folder below; `manifpt fingerprint` creates them.",
    )
    st.sidebar.caption(f"Root: {md_code(root)}")


workspace_picker()
try:
    page.run()
except WorkspaceError as e:  # a damaged entry found while the page read it: say which file and why, keep the app
    st.error(f"This page cannot be shown: {md(e)}", icon=":material/error:")
