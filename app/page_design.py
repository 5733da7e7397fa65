"""Design choices page: how well fingerprints encode architecture, loss, upsampling, normalization, at each
fingerprint level (raw, learned, model), every number beside its design null or chance and the paper's Table 5."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import figures_levels as fl
from app import state
from app.text import md, md_code

P = st.column_config.NumberColumn(format="%.3g")
N3 = st.column_config.NumberColumn(format="%.3f")
PCT = st.column_config.NumberColumn(format="percent")
CHANCE_RULE = (
    "chance: the better of two guesses that ignore the fingerprints, counted per training design (one vote per "
    "design, whatever its seeds): always the training designs' most common level (ties split), or a level drawn with "
    "their frequencies. The rule is `fingerprint_core/protocol.py`'s, the same as the Benchmark page's (d)."
)


def reading_section(levels: dict, reading: list[str], design: pd.DataFrame) -> None:
    """Which level shows which factor, how sure, and what does not hold, in sentences generated from the numbers."""
    lines = fl.level_reading(levels, design)
    with st.container(border=True):
        st.markdown("**What stands out**")
        if lines:
            st.markdown("\n".join(f"- {line}" for line in lines))
        else:
            st.markdown("Nothing was measured: too few models or factors.")
        st.caption(f"A test counts when its Holm-corrected p is below {fl.ALPHA:g} (Holm over the test groups of one "
                   "level and space). *X | Y*: X with Y held fixed; *X (gan)*: among the largest family's models only.")
        if reading:
            with st.expander("The analysis's own sentences (`manifpt analyze`)"):
                st.markdown("\n".join(f"- {md(line)}" for line in reading))


def nmi_section(levels: dict, settings: dict) -> None:
    """NMI per level and test group with its design null, beside the paper's Table 5."""
    st.subheader("Clustering vs design labels (NMI), at each level")
    st.plotly_chart(fl.levels_nmi_figure(levels), width="stretch", key="design_nmi", config={"displaylogo": False})
    st.caption(
        "Normalized mutual information between a clustering of the fingerprints and a factor's labels (0: the clusters "
        "ignore the factor, 1: they match it), per test group. "
        f"**raw**: {fl.NMI_METHOD['raw']} (k = the factor's levels, {settings.get('kmeans_restarts', '?')} restarts, "
        f"PCA to {settings.get('pca_components', '?')} dimensions, {settings.get('metric_samples_per_model', '?')} "
        f"samples per model). **learned**: {fl.NMI_METHOD['learned']}. **model**: {fl.NMI_METHOD['model']}. "
        "Grey band: the design null from its mean to its 95th percentile (the models kept, whole designs permuted "
        "among designs, seed twins together; a grey tick where only the 95th percentile is known). A learned "
        "fingerprint clusters by model by construction, so its NMI is high even for a meaningless label: read it "
        "against its band, not against 0. ★: Holm-corrected p < 0.01. Outlined bars: the paper's Table 5, from its "
        "own datasets (CIFAR-10, CelebA, FFHQ models): compare rankings, not digits. Hover a bar for p, Holm p and "
        "the design bootstrap interval."
    )


def lodo_section(levels: dict, path: str) -> None:
    """Leave-one-design-out accuracy at the raw and learned levels against chance, the per-design folds on demand."""
    st.subheader("Predicting the design of an unseen model")
    spaces = fl.level_spaces(levels)
    if not any(fl.lodo_cells(levels, lv, sp) for lv in ("raw", "learned") for sp in spaces):
        st.info("No factor could be predicted for held-out designs: the workspace has too few designs.",
                icon=":material/info:")
        return
    st.plotly_chart(fl.levels_lodo_figure(levels), width="stretch", key="design_lomo", config={"displaylogo": False})
    learned = any(fl.lodo_cells(levels, "learned", sp) for sp in spaces)
    n_raw, n_learned = fl.lodo_designs(levels, "raw"), fl.lodo_designs(levels, "learned")
    held = f"{n_raw} designs held out at the raw level" + (
        f", {n_learned} at the learned level" + (" so far" if n_learned < n_raw else "") if learned else "")
    st.caption(
        "Every model of one design (all its seeds) is held out, and its factor predicted for each held-out sample. "
        f"**raw**: {fl.LODO_METHOD['raw']}, trained on the other designs. "
        + (f"**learned**: {fl.LODO_METHOD['learned']}: each held-out sample takes the design of the nearest training "
           "model's mean feature. " if learned else "")
        + f"Bars: the mean share of right answers over held-out designs; black ticks: {CHANCE_RULE} "
        f"A held-out design whose factor shows one level among the training designs is not scored ({held})."
    )
    if not learned:
        st.caption("The learned level's leave-one-design-out is not computed yet (it retrains a design-blind "
                   f"attributor per design): {md_code(state.analyze_command(path) + ' --lodo-learned')}.")
    with st.expander(":material/table_rows: Per-design detail"):
        c_level, c_space, c_factor = st.columns(3)
        present = [lv for lv in ("raw", "learned") if any(fl.lodo_cells(levels, lv, sp) for sp in spaces)]
        level = c_level.selectbox("Level", present, key="design_fold_level")
        space = c_space.selectbox("Space", [sp for sp in spaces if fl.lodo_cells(levels, level, sp)],
                                  key="design_fold_space")
        factor = c_factor.selectbox("Factor", list(fl.lodo_cells(levels, level, space)), key="design_fold_factor")
        folds = pd.DataFrame(fl.lodo_cells(levels, level, space).get(factor, {}).get("folds", []))
        if folds.empty:
            st.caption("No fold: nothing to learn from when one design is held out.")
            return
        for c in folds.columns:  # lists of models as one text cell
            if folds[c].map(lambda v: isinstance(v, list)).any():
                folds[c] = folds[c].map(lambda v: ", ".join(map(str, v)) if isinstance(v, list) else v)
        st.dataframe(folds, hide_index=True, width="stretch", column_config={
            "accuracy": st.column_config.ProgressColumn("accuracy", min_value=0.0, max_value=1.0, format="percent"),
            "chance": st.column_config.NumberColumn(
                "chance", format="%.3f", help="The better fingerprint-free guess for this held-out design: 1 / (tied "
                "levels) when the training designs' most common level is the true one, else the true level's share "
                "among the training designs, whichever is higher."),
            "unseen": st.column_config.CheckboxColumn("unseen", help="The true level never occurs among the training designs."),
        })


def numbers_section(levels: dict) -> None:
    """Every number of the page in one sortable table, each with the method it comes from."""
    st.subheader("All numbers")
    table = fl.levels_numbers(levels)
    fmt = {c: N3 for c in ("NMI", "NMI low", "NMI high", "null mean", "null 95th pct", "silhouette",
                           "silhouette null 95th pct")}
    fmt.update({c: P for c in ("p", "Holm p", "silhouette p")})
    fmt.update({c: PCT for c in ("held-out accuracy", "chance")})
    st.dataframe(table, hide_index=True, width="stretch", column_config=fmt, height=min(35 * len(table) + 38, 900))
    st.caption("NMI low and high: the 2.5th and 97.5th percentiles of a bootstrap over designs, the clustering fixed. "
               "Null mean and 95th pct: the design null. Silhouette: how well the factor's levels separate in "
               "fingerprint space (−1 to 1; near 0 = overlapping), beside its design null. Held-out accuracy: leave "
               "one design out, beside its chance.")


def main() -> None:
    path, stamp, analysis = state.analysis_page("Design choices")
    levels = analysis.levels
    if not fl.level_groups(levels):
        st.info("No design factor could be measured: the design table needs at least two models that differ in a "
                "column (models.csv).", icon=":material/info:")
        st.stop()
    st.caption(
        "Do fingerprints reveal how a model was built? Each factor is tested at three fingerprint levels, computed by "
        "`manifpt analyze` over the generative models (the real control left out): **raw** (the artifacts "
        "themselves), **learned** (the features of an attributor trained only to tell the models apart) and "
        "**model** (a model's fingerprint as a set; the Model similarity page shows its distances). Every number "
        "stands beside a null that keeps the models and shuffles which design each model has, or beside chance."
    )
    reading_section(levels, analysis.metrics.get("reading", []), state.design_table(path, stamp))
    nmi_section(levels, analysis.metrics.get("settings", {}))
    lodo_section(levels, path)
    numbers_section(levels)


main()
