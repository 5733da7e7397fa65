"""Design choices page: how well fingerprints encode architecture, loss, upsampling, normalization."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import figures_analysis, state


def metric_table(metrics: dict, key: str, field: str | None = None) -> pd.DataFrame:
    """metrics[key][space][factor] (or its [field]) as a spaces x factors table."""
    per_space = metrics.get(key, {})
    return figures_analysis.space_factor_frame(
        {sp: {f: ((v or {}).get(field) if field else v) for f, v in per.items()} for sp, per in per_space.items()}
    )


def detail_table(metrics: dict) -> pd.DataFrame:
    """One row per (space, factor): NMI with its interval, silhouette, leave-one-design-out accuracy and chance."""
    rows = []
    for sp, d in metrics.get("detail", {}).items():
        for f, n in d.get("nmi", {}).items():
            lomo = d.get("lomo", {}).get(f, {})
            rows.append({
                "space": sp, "factor": f, "levels": n.get("levels"), "NMI": n.get("value"),
                "NMI low": n.get("low"), "NMI high": n.get("high"), "silhouette": d.get("silhouette", {}).get(f),
                "held-out accuracy": lomo.get("accuracy"), "chance": lomo.get("chance"),
                "designs right (vote)": lomo.get("vote_accuracy"), "designs held out": len(lomo.get("folds", [])),
            })
    return pd.DataFrame(rows)


def reading_section(metrics: dict, design: pd.DataFrame) -> None:
    """What stands out, in a few sentences generated from the numbers."""
    lomo = {sp: d.get("lomo", {}) for sp, d in metrics.get("detail", {}).items()} or metrics.get("lomo", {})  # with folds
    lines = figures_analysis.design_reading(metrics.get("nmi", {}), lomo, metrics.get("silhouette", {}), design=design)
    with st.container(border=True):
        st.markdown("**What stands out**")
        if lines:
            st.markdown("\n".join(f"- {line}" for line in lines))
        else:
            st.markdown("Nothing was measured: too few models or factors.")


def nmi_section(metrics: dict) -> None:
    """The NMI table beside the paper's Table 5."""
    st.subheader("Clustering vs design labels (NMI)")
    ours = metric_table(metrics, "nmi")
    detail = metrics.get("detail", {})
    low, high = (
        figures_analysis.space_factor_frame({sp: {f: v.get(end) for f, v in d.get("nmi", {}).items()} for sp, d in detail.items()})
        for end in ("low", "high")
    )
    paper = pd.DataFrame(figures_analysis.PAPER_TABLE5).T.rename_axis("space")
    fig = figures_analysis.nmi_figure(ours, paper, low=low, high=high)
    st.plotly_chart(fig, width="stretch", key="design_nmi", config={"displaylogo": False})
    settings = metrics.get("settings", {})
    st.caption(
        "Normalized mutual information between a k-means clustering of the fingerprints (k = number of levels of "
        f"the factor, {settings.get('kmeans_restarts', '?')} restarts, PCA to {settings.get('pca_components', '?')} "
        f"dimensions, {settings.get('metric_samples_per_model', '?')} samples per model) and the factor's labels: "
        "0 when the clusters ignore the factor, 1 when they match it. Hover a cell for its 95% bootstrap interval. "
        "*loss (gan)* compares losses among GANs only, since loss is tied to the family. The paper's values come "
        "from its own datasets (CIFAR-10, CelebA, FFHQ models), so compare rankings, not digits."
    )


def lomo_section(metrics: dict) -> None:
    """Leave-one-design-out accuracy against chance, with the per-design folds on demand."""
    st.subheader("Predicting the design of an unseen model")
    accuracy = metric_table(metrics, "lomo", "accuracy")
    chance = metric_table(metrics, "lomo", "chance")
    if accuracy.empty:
        st.info("No factor could be predicted for held-out designs: the workspace has too few designs.")
        return
    st.plotly_chart(figures_analysis.lomo_figure(accuracy, chance), width="stretch", key="design_lomo",
                    config={"displaylogo": False})
    st.caption(
        "Every model of one design (all its seeds) is held out; a linear classifier (LDA with a shrunk covariance) "
        "trained on the other designs' fingerprints predicts the factor for each held-out sample. Bars: the mean "
        "share of correct answers over held-out designs; black ticks: chance, the better of two guesses that ignore "
        "the fingerprints (always the training designs' most common level, or a level drawn with their frequencies). "
        "*n/a*: with one design out, the rest show one level only."
    )
    detail = metrics.get("detail", {})
    with st.expander(":material/table_rows: Per-design detail"):
        c_space, c_factor = st.columns(2)
        space = c_space.selectbox("Space", list(detail), key="design_fold_space")
        factors = list(detail.get(space, {}).get("lomo", {}))
        factor = c_factor.selectbox("Factor", factors, key="design_fold_factor")
        folds = pd.DataFrame(detail.get(space, {}).get("lomo", {}).get(factor, {}).get("folds", []))
        if folds.empty:
            st.caption("No fold: nothing to learn from when one design is held out.")
        else:
            folds["models"] = folds["models"].map(", ".join)
            st.dataframe(folds, hide_index=True, width="stretch", column_config={
                "accuracy": st.column_config.ProgressColumn("accuracy", min_value=0.0, max_value=1.0, format="percent"),
                "chance": st.column_config.NumberColumn(
                    "chance", help="The better fingerprint-free guess: 1 when the training designs' most common level is the "
                            "true one, else the true level's share among the training designs."),
                "unseen": st.column_config.CheckboxColumn(
                    "unseen", help="The true level never occurs among the training designs."),
            })


def numbers_section(metrics: dict) -> None:
    """Every number of the page in one sortable table."""
    st.subheader("All numbers")
    table = detail_table(metrics)
    fmt = {c: st.column_config.NumberColumn(c, format="%.3f") for c in ("NMI", "NMI low", "NMI high", "silhouette")}
    for c in ("held-out accuracy", "chance", "designs right (vote)"):
        fmt[c] = st.column_config.NumberColumn(c, format="percent")
    st.dataframe(table, hide_index=True, width="stretch", column_config=fmt, height=min(35 * len(table) + 38, 900))
    st.caption("NMI low and high: the 2.5th and 97.5th percentiles of a bootstrap over samples, the clustering fixed. "
               "Silhouette: how well the factor's levels separate in fingerprint space (−1 to 1; near 0 = overlapping).")


def main() -> None:
    path, stamp, analysis = state.analysis_page("Design choices")
    metrics = analysis.metrics
    if not metrics.get("nmi") or not any(metrics["nmi"].values()):
        st.info("No design factor could be measured: the design table needs at least two models that differ in a "
                "column (models.csv).", icon=":material/info:")
        st.stop()
    st.caption("Do fingerprints reveal how a model was built? Three measures per embedding space and design "
               "factor, computed by `manifpt analyze` over the generative models (the real control left out).")
    reading_section(metrics, state.design_table(path, stamp))
    nmi_section(metrics)
    lomo_section(metrics)
    numbers_section(metrics)


main()
