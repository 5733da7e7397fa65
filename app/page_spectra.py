"""Spectra page: where in frequency each model's artifacts (or samples) put their energy, by design choice."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app import figures_analysis, state
from app.figures_analysis import REAL
from app.text import md, md_code
from fingerprint_core.analysis.spectra import azimuthal_average

KINDS = {"artifacts": "artifact", "samples": "sample"}  # what is shown -> ModelSpectra field
MODES = ("spectrum", "difference from the real control")


def controls(factors: list[str]) -> tuple[str, str, str]:
    """What to show (artifact or sample spectra), absolute or against the real control, and the arranging factor."""
    c_kind, c_mode, c_factor = st.columns([1.4, 2.4, 2], vertical_alignment="bottom")
    kind = c_kind.segmented_control("Spectra of", list(KINDS), default="artifacts", key="spectra_kind",
                                    help="Artifacts: sample minus its nearest real image (RGB). "
                                         "Samples: the images themselves.")
    mode = c_mode.segmented_control("Show", list(MODES), default=MODES[0], key="spectra_mode",
                                    help="The difference is a log power ratio: red where a model has more energy than "
                                         "the held-out real images, blue where it has less.")
    default = factors.index("upsampling") if "upsampling" in factors else 0
    factor = c_factor.selectbox("Arrange by", factors, index=default, key="spectra_factor",
                                help="Rows of the grid, and the colours of the profiles, are the levels of "
                                     "this design choice.")
    return kind or "artifacts", mode or MODES[0], factor


CHANNELS = ("mean", "R", "G", "B")


def field_of(spectra: dict, model: str, kind: str, diff: bool, profile: bool = False, channel: str = "mean") -> np.ndarray:
    """A model's spectrum (or profile) of the chosen kind and channel, minus the real control's when diff."""

    def one(m: str) -> np.ndarray:
        if channel == "mean":
            return getattr(spectra[m], KINDS[kind] + ("_profile" if profile else ""))
        value = np.asarray(getattr(spectra[m], KINDS[kind] + "_channels")[CHANNELS.index(channel) - 1])
        return azimuthal_average(value) if profile else value

    return one(model) - one(REAL) if diff else one(model)


def channel_choice(spectra: dict) -> str:
    """For colour workspaces, which channel's spectra to show (their mean by default)."""
    channels = getattr(spectra[REAL], "artifact_channels", None)
    if channels is None or np.asarray(channels).shape[0] != 3:
        return "mean"
    picked = st.segmented_control("Channel", CHANNELS, default="mean", key="spectra_channel",
                                  help="A colour model can leave its trace in one channel: the mean of the three "
                                       "channels' spectra, or one channel's own.")
    return picked or "mean"


def by_level(design, models: list[str], factor: str) -> list[tuple[str, list[str]]]:
    """Models grouped by their level of factor, levels in design-table order."""
    levels = figures_analysis.model_levels(design, factor)
    groups: dict[str, list[str]] = {}
    for m in models:
        groups.setdefault(levels.get(m, "?"), []).append(m)
    return list(groups.items())


def grid_section(spectra, design, models, kind, diff, factor, channel="mean") -> None:
    """Heatmaps, one row per level of the factor; the real control on its own row when absolute."""
    versus = ", minus the real control's" if diff else ""
    st.subheader(f"Mean log power spectra of the {kind}{versus}, by {md(factor)}")
    rows = [(lv, [(m, field_of(spectra, m, kind, diff, channel=channel)) for m in ms])
            for lv, ms in by_level(design, models, factor)]
    if not diff:
        rows.insert(0, ("real control", [(REAL, field_of(spectra, REAL, kind, False, channel=channel))]))
    title = "Δ log power" if diff else "log power"
    fig = figures_analysis.spectrum_grid(rows, diverging=diff, colorbar_title=title)
    st.plotly_chart(fig, width="content", key="spectra_grid", config={"displaylogo": False})
    what = ("the model's mean log power minus the real control's: red where the model puts more energy, blue less"
            if diff else "the mean over samples of log |F|², one shared colour scale (1st to 99th percentile)")
    st.caption(f"Each cell is {what}. The zero frequency (DC) is at the centre, the highest frequencies at the "
               "edges; a checkerboard left by transposed convolutions shows up in the corners and edge centres.")


def profile_section(spectra, design, models, kind, diff, factor, size: int, channel="mean") -> None:
    """Azimuthal profiles of every model, coloured by the factor, the real control dashed."""
    st.subheader("Azimuthal profiles")
    levels = figures_analysis.model_levels(design, factor)
    curves = [(m, levels.get(m, "?"), field_of(spectra, m, kind, diff, profile=True, channel=channel)) for m in models]
    reference = field_of(spectra, REAL, kind, diff, profile=True, channel=channel)
    ylabel = "Δ log power (model − real)" if diff else "mean log power"
    fig = figures_analysis.profile_figure(curves, reference=reference, size=size, ylabel=ylabel, legend_title=factor)
    st.plotly_chart(fig, width="stretch", key="spectra_profiles", config={"displaylogo": False})
    st.caption("The mean of each spectrum over rings of equal frequency. The dashed black line is the real "
               "control (held-out real images minus their nearest training image): "
               + ("zero by construction here." if diff else "what a model with no fingerprint would show."))


def pair_section(spectra, models, kind, channel="mean") -> None:
    """Two models (by default one and the real control) side by side, and their difference."""
    st.subheader("Two side by side")
    choices = [*models, REAL]
    c_a, c_b = st.columns(2)
    a = c_a.selectbox("Model A", choices, index=0, key="spectra_a", format_func=state.model_label)
    b = c_b.selectbox("Model B", choices, index=len(choices) - 1, key="spectra_b", format_func=state.model_label)
    fig = figures_analysis.pair_figure(field_of(spectra, a, kind, False, channel=channel),
                                       field_of(spectra, b, kind, False, channel=channel),
                                       a, b, diverging=False, colorbar_title="log power")
    st.plotly_chart(fig, width="stretch", key="spectra_pair", config={"displaylogo": False})
    st.caption(f"Mean log power spectra of the {kind}: left and middle share one colour scale; the right panel is "
               "A minus B on a scale centred on 0 (with B the real control: A's excess energy over real images).")


def main() -> None:
    path, stamp, analysis = state.analysis_page("Spectra")
    if not analysis.has_spectra or REAL not in analysis.models:
        st.info("Spectra need the rgb space and the held-out real images (the real control). Fingerprint the "
                f"workspace in rgb, then rerun the analysis: {md_code(state.analyze_command(path))}.",
                icon=":material/info:")
        st.stop()
    st.caption("Per model, the mean log power spectrum (fft2, shifted so the zero frequency sits at the centre) of "
               "its RGB artifacts or of its samples, averaged over all its samples (and colour channels, unless one is chosen). "
               "The real "
               "control, the held-out real images minus their nearest training image, is what no fingerprint looks like.")
    design = state.design_table(path, stamp)
    factors = [c for c in design.columns if c != "model"] or ["model"]
    spectra = state.spectra_of(path, stamp)
    models = [m for m in analysis.models if m != REAL]
    if not models:
        st.warning("This workspace holds no generative model, only real images.")
        st.stop()
    kind, mode, factor = controls(factors)
    channel = channel_choice(spectra)
    diff = mode != MODES[0]
    size = min(spectra[REAL].artifact.shape)
    grid_section(spectra, design, models, kind, diff, factor, channel)
    profile_section(spectra, design, models, kind, diff, factor, size, channel)
    pair_section(spectra, models, kind, channel)


main()
