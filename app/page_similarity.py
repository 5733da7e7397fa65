"""Model similarity page: the fingerprint of a model as a set (the model level), a model x model distance heatmap in
dendrogram order with the design choices beside it, and whether models that share a choice are closer."""

from __future__ import annotations

import streamlit as st

from app import figures_levels as fl
from app import state
from app.text import md
from fingerprint_core import protocol

PVALUE = st.column_config.NumberColumn(format="%.3g")
NUMBER = st.column_config.NumberColumn(format="%.3f")


def controls(distances: dict, factors: list[str]) -> tuple[str, str, str | None]:
    """Space, distance and row order, in one row."""
    spaces = list(distances)
    c_space, c_dist, c_order = st.columns([2.2, 2.6, 2], vertical_alignment="bottom")
    space = c_space.segmented_control("Space", spaces, default=spaces[0], key="sim_space") or spaces[0]
    names = [d for d in fl.DISTANCES if d in distances[space]] + [d for d in distances[space] if d not in fl.DISTANCES]
    if st.session_state.get("sim_distance") not in names:
        st.session_state["sim_distance"] = names[0]
    distance = c_dist.segmented_control(
        "Distance", names, key="sim_distance", format_func=lambda d: fl.DISTANCES.get(d, d),
        help="**learned class means**: " + fl.DISTANCE_HELP["learned_means"] + ". **energy distance of artifacts**: "
             + fl.DISTANCE_HELP["energy"] + ".") or names[0]
    order = c_order.selectbox(  # a selectbox shows its options as plain text: factor names need no escaping there
        "Order", ["dendrogram", *factors], key="sim_order",
        format_func=lambda o: "dendrogram" if o == "dendrogram" else f"by {o}, then dendrogram",
        help="The leaves of an average-linkage dendrogram, or the models sorted by a factor's level (white lines "
             "between levels) and in dendrogram order within each level.")
    return space, distance, None if order == "dendrogram" else order


def main() -> None:
    path, stamp, analysis = state.analysis_page("Model similarity")
    model = analysis.levels.get("model") or {}
    distances = {sp: d for sp, d in (model.get("distance") or {}).items() if d}
    if not distances:
        st.info("This analysis has no model level. Compute it with the model level included (the default):",
                icon=":material/info:")
        st.code(state.analyze_command(path) + " --levels raw,learned,model --force", language="bash")
        st.stop()
    design = state.design_table(path, stamp)
    models = [str(m) for m in model.get("models", [])]
    generated = design[design["model"].isin(models)]
    factors = protocol.factors(generated)
    st.caption(
        "A model's fingerprint as a set: how far apart two models' fingerprints are, over all their samples. If a "
        "design choice leaves a trace, models that share it sit closer together than models that do not; the tests "
        "below judge that against a null that keeps the models and permutes whole designs among designs."
    )
    space, distance, sort_by = controls(distances, factors)
    primary = "learned_means" if "learned_means" in distances[space] else "energy"
    fig = fl.similarity_figure(distances[space][distance], models, (model.get("order") or {}).get(space, models),
                               generated, factors, distance=distance, sort_by=sort_by)
    st.plotly_chart(fig, width="content", key="sim_heatmap", config={"displaylogo": False})
    order_text = (f"Rows and columns follow the leaves of an average-linkage dendrogram of the "
                  f"{fl.DISTANCES[primary]} ({'the distance shown' if primary == distance else 'not the one shown'})")
    if sort_by:
        order_text += f", sorted first by {md(sort_by)} (white lines between its levels)"
    twins = protocol.twin_groups(generated)
    twin_text = (" Seed twins (one design, several training seeds): " + "; ".join(", ".join(md(m) for m in g) for g in twins)
                 + ".") if twins else ""
    st.caption(
        f"{len(models)} generated models in the {space} space; distance: {fl.DISTANCE_HELP.get(distance, md(distance))}; "
        "darker is closer. " + order_text + ". The strips above and beside show each model's design choices (legend "
        f"on the right); hover a cell for the two models and their distance.{twin_text}"
    )

    st.subheader("Are models that share a choice closer?")
    tests = ((model.get("tests") or {}).get(space) or {}).get(distance) or {}
    st.dataframe(fl.share_table(tests), hide_index=True, width="stretch", column_config={
        "effect": st.column_config.NumberColumn(format="%.4g", help="Mean distance of model pairs that differ in the "
                                                "group's level minus that of pairs that share it (distance units)."),
        "relative effect": st.column_config.NumberColumn(format="%.3f", help="The effect over the mean distance of "
                                                         "all compared pairs."),
        "p": PVALUE, "p without twins": PVALUE, "Holm p": PVALUE,
    })
    st.caption(
        f"Share test on the {fl.DISTANCES.get(distance, md(distance))}: one-sided permutation test (sharing pairs "
        "closer), whole designs permuted among designs, seed twins keeping a shared design; for a group *X | Y* "
        "designs permute within the levels of Y and only pairs with the same Y are compared; *(gan)*: among one "
        "family's models only. *p without twins*: the same test with the pairs of seed twins left out (twins share "
        "every choice, so they alone can make a factor look close). *Holm p*: Holm-corrected over this table's groups. "
        "*testable* off: no permutation changes the grouping, so p = 1 says nothing."
    )
    st.subheader("Clustering the models")
    clustering = (model.get("clustering") or {}).get(space) or {}
    if clustering:
        st.dataframe(fl.clustering_table(clustering), hide_index=True, width="stretch",
                     column_config={"NMI": NUMBER, "null mean": NUMBER, "null 95th pct": NUMBER, "p": PVALUE,
                                    "Holm p": PVALUE})
        st.caption(
            f"NMI between an average-linkage clustering of the models on the {fl.DISTANCES[primary]} (cut into as "
            "many clusters as the factor has levels; each model counts once) and the factor, beside its design null "
            "(designs permuted among designs, 1,000 draws). Holm p: Holm-corrected over this table's groups."
        )
    else:
        st.caption("Too few models to cluster in this space.")


main()
