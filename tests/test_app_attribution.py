"""The Attribute and Benchmark pages, headless (AppTest, real uploads), their per-upload processing and
their figure builders."""

from __future__ import annotations

import io
import json
import re
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from app import figures_attribution as fat
from app import state_attribution as sa
from app_util import charts, decode, open_page
from gmdata import add_model, blob_images, make_gm_dataset, write_foreign_set

NAME = "gm-attr"
_BUILT: dict[str, Path] = {}  # one build per test session, whichever module asks first


# ---- a trained toy workspace with a benchmark beside it ---------------------------------------------------


def attribution_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root with one 1 x 16 x 16 workspace (three toy models + real, rgb and freq), an rgb attributor trained
    on it (8 epochs), and a tiny real benchmark of it (with a toy foreign set) in <workspace>-bench."""
    if NAME in _BUILT:
        return _BUILT[NAME]
    import torch

    from fingerprint_core.attribution import baselines, bench, train
    from fingerprint_core.attribution.manifpt import ManiFPT
    from fingerprint_core.pipeline import fingerprint
    from fingerprint_core.workspace import Workspace

    data = make_gm_dataset(tmp_path_factory.mktemp("attr-data"), n_per_model=30, bad_file=False)
    rows = blob_images(30, 16, 1, np.random.default_rng(5)).astype(np.float32)
    rows[:, ::2] += 15  # a third design with a row pattern, so that the open-set protocol can run
    add_model(data, "toy_rows", ("gan", "pixel_shuffle", "hinge", "none"), np.clip(rows, 0, 255).round().astype(np.uint8))
    root = tmp_path_factory.mktemp("attr-workspaces")
    ws = root / NAME
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny steps: see the one_thread fixture
    try:
        fingerprint(data, ws, space_names=("rgb", "freq"), device="cpu")
        train.train(ws, kinds=["rgb"], epochs=8, device="cpu")
        methods = {"Durall20": lambda: baselines.create("Durall20", Cs=(0.1, 1.0)),
                   "manifpt-rgb": lambda: ManiFPT("rgb", epochs=8, batch_size=16)}
        foreign = write_foreign_set(tmp_path_factory.mktemp("attr-foreign"), 30, 16)
        bench.Bench(Workspace.open(ws), sa.bench_dir(str(ws)), methods,
                    settings=bench.Settings(seeds=(0, 1), lodo_folds=0, device="cpu", foreign=str(foreign), foreign_sets=10)).run()
    finally:
        torch.set_num_threads(before)
    _BUILT[NAME] = root
    return root


@pytest.fixture(scope="module")
def attr_root(tmp_path_factory) -> Path:
    return attribution_root(tmp_path_factory)


# ---- files a user may drop ----------------------------------------------------------------------------------


def png(array: np.ndarray) -> bytes:
    """PNG bytes of an H x W (grey) or H x W x 3 uint8 image."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def sample_png(root: Path, model: str, i: int = 0) -> bytes:
    """One of a model's samples in the workspace, as the PNG a user would drop."""
    from fingerprint_core.workspace import Workspace

    return png(np.asarray(Workspace.open(root / NAME).images(model)[i])[0])


def huge_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A small PNG whose header declares a huge image (a decompression bomb's shape)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def zipped(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def bad_files(good: bytes) -> dict[str, bytes]:
    """Every kind of bad upload, by name."""
    return {
        "notes.png": b"just some text, not a picture\n",
        "cut.png": good[: len(good) // 2],
        "bomb.png": huge_png(),
        "escape.zip": zipped({"ok/inside.png": good, "../outside.png": good}),
        "crowded.zip": zipped({f"x{i}.png": b"" for i in range(sa.LIMITS.max_members + 1)}),
    }


def cards_shown(at: AppTest) -> list[tuple[str, str]]:
    """(file, verdict) of every card on the page, from the cards' title lines."""
    found = [re.match(r"^\*\*\d+\. (.+?)\*\* &nbsp; :\w+-badge\[(\w+)\]$", m.value) for m in at.markdown]
    return [(f.group(1), f.group(2)) for f in found if f]


def upload(at: AppTest, files: dict[str, bytes]) -> AppTest:
    at.file_uploader(key="attr_upload").set_value([(n, d, "application/octet-stream") for n, d in files.items()]).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


# ---- Attribute: no attributor ---------------------------------------------------------------------------------


def test_attribute_without_an_attributor_says_how_to_train_one(monkeypatch, gray_workspace_root):
    at = open_page(monkeypatch, gray_workspace_root, "page_attribute.py")

    ws = gray_workspace_root / "gm-gray"
    assert at.title[0].value == "Attribute"
    assert "has no trained attributor yet" in at.info[0].value
    assert [c.value for c in at.code] == [f"manifpt train {ws}"]
    assert at.button(key="attr_train").label == "Train here"
    assert not at.get("file_uploader")


@pytest.mark.slow
def test_train_button_starts_a_background_job_then_the_page_offers_the_uploader(monkeypatch, gray_workspace_root,
                                                                               tmp_path):
    from app import jobs_view
    from fingerprint_core import jobs

    monkeypatch.setitem(jobs_view.JOB_ARGS, "train", ("--spaces", "rgb", "--epochs", "1", "--device", "cpu"))  # quick
    ws = shutil.copytree(gray_workspace_root / "gm-gray", tmp_path / "gm-gray")
    at = open_page(monkeypatch, tmp_path, "page_attribute.py")

    at.button(key="attr_train").click().run()

    assert not at.exception, [e.value for e in at.exception]
    (status,) = at.get("status")
    assert status.label == "Training the attributors runs in the background…" and at.get("progress")
    assert at.button(key="attr_train").disabled and not at.get("file_uploader")
    done = jobs.wait(ws, "train", timeout=300)
    at.run()

    assert done.state == "finished", done.error
    assert not at.exception, [e.value for e in at.exception]
    assert at.get("file_uploader") and not at.code and not at.get("status")
    assert "**rgb** attributor of **gm-gray**" in at.caption[0].value
    assert at.success[0].value.startswith("The attributors are trained in ")
    # a job that trains more while some attributor already answers: followed above the uploader
    jobs.start(ws, "train", ["--spaces", "freq", "--epochs", "1", "--device", "cpu"])
    at.run()
    (status,) = at.get("status")
    assert status.label == "Training the attributors runs in the background…" and at.get("file_uploader")
    assert jobs.wait(ws, "train", timeout=300).state == "finished"


def test_a_failed_training_job_is_shown_with_its_reason_and_can_be_started_again(monkeypatch, gray_workspace_root,
                                                                                tmp_path):
    from app import jobs_view
    from fingerprint_core import jobs

    monkeypatch.setitem(jobs_view.JOB_ARGS, "train", ("--spaces", "sl"))  # the toy workspace has no SL artifacts
    ws = shutil.copytree(gray_workspace_root / "gm-gray", tmp_path / "gm-gray")
    at = open_page(monkeypatch, tmp_path, "page_attribute.py")
    at.button(key="attr_train").click().run()
    jobs.wait(ws, "train", timeout=120)

    at.run()

    assert not at.exception, [e.value for e in at.exception]
    (error,) = at.error
    assert error.value.startswith("Training the attributors started here on ")
    assert "failed: workspace " in error.value and "cannot train sl" in error.value
    assert not at.get("status") and not at.button(key="attr_train").disabled
    assert "cannot train sl" in at.code[-1].value  # the log's last lines, in the expander


# ---- Attribute: uploads ----------------------------------------------------------------------------------------


def test_uploads_are_attributed_and_each_bad_file_is_named_with_its_reason(monkeypatch, attr_root):
    good = sample_png(attr_root, "toy_gan")
    colour = png(np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    at = open_page(monkeypatch, attr_root, "page_attribute.py")
    assert "Drop one or more images" in at.info[0].value
    assert "Up to 200 images at once" in " ".join(c.value for c in at.caption)

    upload(at, {"gan.png": good, "vae.png": sample_png(attr_root, "toy_vae"), "colour.png": colour,
                **bad_files(good)})

    errors = {e.value.split("**")[1]: e.value for e in at.error}
    assert "not an image" in errors["notes.png"] and "looks like text" in errors["notes.png"]
    assert "truncated or corrupt" in errors["cut.png"]
    assert "30000 x 30000" in errors["bomb.png"] and "megapixel limit" in errors["bomb.png"]
    assert "../ leads outside" in errors["escape.zip/../outside.png"]
    assert f"over the limit of {sa.LIMITS.max_members}" in errors["crowded.zip"]
    assert len(errors) == 5
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["attributed"] == "4" and metrics["not attributed"] == "5"  # gan, vae, colour, escape.zip/ok/inside
    assert sum(int(metrics[v]) for v in fat.VERDICTS) == 4
    cards = dict(cards_shown(at))
    assert set(cards) == {"gan.png", "vae.png", "colour.png", "escape.zip/ok/inside.png"}
    assert set(cards.values()) <= set(fat.VERDICTS)
    # the colour, off-size image is flagged; the in-domain ones are not
    assert len(at.warning) == 1 and "colour image of 40×30 pixels" in at.warning[0].value
    assert "may not mean much" in at.warning[0].value
    assert any("p(real)" in c.value and "open-set score" in c.value and "threshold" in c.value for c in at.caption)
    # a top-models chart per card, the batch chart; no map (the workspace has no analysis)
    figs = charts(at)
    tops = [f for f in figs if "top models" in f["layout"].get("title", {}).get("text", "")]
    assert len(tops) == 4 and all(len(f["data"][0]["y"]) == 4 for f in tops)  # 3 toy models + real
    assert any("needs the workspace's analysis" in i.value for i in at.info)
    assert at.get("download_button")


def test_a_rerun_keeps_the_results_and_only_new_files_are_attributed(monkeypatch, attr_root):
    calls = []
    real = sa.attribute_files
    monkeypatch.setattr(sa, "attribute_files", lambda a, files, **kw: calls.append([f[1] for f in files]) or real(a, files, **kw))
    at = open_page(monkeypatch, attr_root, "page_attribute.py")
    uploader = at.file_uploader(key="attr_upload")
    uploader.upload("gan.png", sample_png(attr_root, "toy_gan")).upload("vae.png", sample_png(attr_root, "toy_vae")).run()
    assert calls == [["gan.png", "vae.png"]]
    before = [m.value for m in at.metric]

    at.pills(key="attr_filter").set_value(["known", "real"]).run()  # a widget changes: the page reruns
    at.run()

    assert calls == [["gan.png", "vae.png"]] and [m.value for m in at.metric] == before
    # a file added to the two already there (as the browser does: the others keep their file ids)
    uploader = at.file_uploader(key="attr_upload")
    kept = [(f.file_id, f.name, f.getvalue(), f.type) for f in uploader.value]
    uploader._files = [*kept, ("rows-id", "rows.png", sample_png(attr_root, "toy_rows"), "image/png")]  # no public API
    uploader.run()
    assert calls[-1] == ["rows.png"] and at.metric[0].value == "3"
    assert not at.exception


def test_many_images_are_shown_a_page_at_a_time_and_filtered_by_verdict(monkeypatch, attr_root):
    images = {f"s{i:02d}.png": sample_png(attr_root, "toy_gan", i) for i in range(10)}
    at = open_page(monkeypatch, attr_root, "page_attribute.py")
    upload(at, {"ten.zip": zipped(images)})

    def shown() -> list[str]:
        return [f for f, _ in cards_shown(at)]

    assert at.metric[0].value == "10" and at.number_input(key="attr_page").label == "Page (of 2)"
    assert shown() == [f"ten.zip/s{i:02d}.png" for i in range(8)]
    at.number_input(key="attr_page").set_value(2).run()
    assert shown() == ["ten.zip/s08.png", "ten.zip/s09.png"]
    at.pills(key="attr_filter").set_value(["known"]).run()
    assert {v for _, v in cards_shown(at)} <= {"known"}
    at.pills(key="attr_filter").set_value([]).run()
    assert not cards_shown(at) and "No image with the verdicts chosen." in at.info[-1].value


@pytest.mark.slow
def test_uploads_are_placed_on_the_fingerprint_map(monkeypatch, tmp_path_factory, tmp_path, one_thread):
    from analysis_util import NAME as ANALYSED
    from analysis_util import analysed_root
    from fingerprint_core.attribution import train

    ws = tmp_path / ANALYSED
    shutil.copytree(analysed_root(tmp_path_factory) / ANALYSED, ws)
    train.train(ws, kinds=["rgb"], epochs=1, device="cpu")
    from fingerprint_core.workspace import Workspace

    sample = png(np.asarray(Workspace.open(ws).images("toy_gan")[0]).transpose(1, 2, 0))
    at = open_page(monkeypatch, ws, "page_attribute.py")
    upload(at, {"a.png": sample, "b.png": sample})

    maps = [f for f in charts(at) if any(t.get("name", "").startswith("upload: ") for t in f["data"])]
    assert len(maps) == 1
    stars = [t for t in maps[0]["data"] if t.get("name", "").startswith("upload: ")]
    xs = np.concatenate([decode(t["x"]) for t in stars]).astype(float)
    assert len(xs) == 2 and xs[0] == xs[1]  # the same image twice: the same place
    mapped = np.concatenate([decode(t["x"]) for t in maps[0]["data"] if t["type"] == "scattergl"]).astype(float)
    assert mapped.min() <= xs[0] <= mapped.max()  # among the samples, where its neighbours are
    assert any("median map position of the 5 samples" in c.value for c in at.caption)


# ---- Benchmark --------------------------------------------------------------------------------------------------


def test_benchmark_without_results_says_how_to_make_one(monkeypatch, gray_workspace_root):
    at = open_page(monkeypatch, gray_workspace_root, "page_benchmark.py")

    ws = gray_workspace_root / "gm-gray"
    assert "No benchmark results for **gm-gray** yet" in at.info[0].value
    assert at.code[0].value == f"manifpt bench {ws} --out {ws.parent / 'gm-gray-bench'}"
    assert "--seeds 0" in at.code[1].value
    assert any("trained about 17 times" in c.value for c in at.caption)
    assert not at.dataframe and not at.get("plotly_chart")


def test_benchmark_shows_the_table_charts_and_a_reading_of_the_real_results(monkeypatch, attr_root):
    doc = json.loads((sa.bench_dir(str(attr_root / NAME)) / "results.json").read_text())
    summary = pd.DataFrame(doc["summary"])
    at = open_page(monkeypatch, attr_root, "page_benchmark.py")

    assert at.title[0].value == "Benchmark"
    assert any("training seeds 0, 1" in c.value and "compute time" in c.value for c in at.caption)
    table = at.dataframe[0].value
    assert list(table.index) == ["Durall20", "manifpt-rgb", "chance"]
    closed = summary[(summary.protocol == "closed") & (summary.metric == "accuracy")].set_index("method")
    assert table.loc["Durall20", "a accuracy"].startswith(f"{closed.loc['Durall20', 'mean']:.2f} ± ")
    assert table.loc["chance", "a accuracy"] == f"{1 / 4:.2f}"  # three models and real
    # g: the toy foreign set, per image and as sets, with chance beside the AUROCs and the right model
    assert {"g AUROC", "g called real", "g real kept", "g sets AUROC n=5", "g sets right model n=5"} <= set(table.columns)
    assert table.loc["chance", "g AUROC"] == "0.50" and table.loc["chance", "g sets right model n=5"] == f"{1 / 3:.2f}"
    assert table.loc["chance", "g called real"] == "-"
    figs = charts(at)
    titles = [f["layout"]["title"]["text"] for f in figs]
    assert titles[:-1] == [fat.PROTOCOLS[p] for p in fat.PROTOCOLS if p != "twins"]
    # the calibration of the trained attributor: ECE before and after temperature scaling, its reliability diagram
    assert titles[-1] == "rgb: reliability after scaling"
    ece = at.dataframe[-1].value
    assert list(ece["attributor"]) == ["rgb"] and ece["ECE after"].iloc[0] <= ece["ECE before"].iloc[0] + 0.02
    # the reading names the method that really leads the closed set (nothing hard-coded)
    reading = at.markdown[[m.value for m in at.markdown].index("**What the numbers say**") + 1].value
    assert f"**a · closed set** (accuracy): best **{closed['mean'].idxmax()}**" in reading
    assert "no design was trained with several seeds" in " ".join(c.value for c in at.caption)  # twins skipped


def test_benchmark_of_a_changed_workspace_warns_and_a_broken_file_is_reported(monkeypatch, attr_root, tmp_path):
    shutil.copytree(attr_root / NAME, tmp_path / NAME)
    out = sa.bench_dir(str(tmp_path / NAME))
    out.mkdir()
    doc = json.loads((sa.bench_dir(str(attr_root / NAME)) / "results.json").read_text())
    doc["workspace"], doc["workspace_key"] = str(tmp_path / NAME), "0" * 16
    (out / "results.json").write_text(json.dumps(doc))

    at = open_page(monkeypatch, tmp_path, "page_benchmark.py")
    assert "changed since this benchmark ran" in at.warning[0].value and at.dataframe
    assert not any("finished so far" in i.value for i in at.info)

    doc["summary"] = [r for r in doc["summary"] if r["method"] == "Durall20"]  # stopped after the first method
    (out / "results.json").write_text(json.dumps(doc))
    at = open_page(monkeypatch, tmp_path, "page_benchmark.py")
    assert "1 of 2 methods finished so far (manifpt-rgb to come)" in at.info[0].value
    assert list(at.dataframe[0].value.index) == ["Durall20", "chance"]

    (out / "results.json").write_text("{ not json")
    sa.bench_runs.clear()
    at = open_page(monkeypatch, tmp_path, "page_benchmark.py")
    assert "cannot be read" in at.error[0].value and "results.json" in at.error[0].value


# ---- per-upload processing, without the page -------------------------------------------------------------------


def test_attribute_files_caps_the_batch_and_reads_zip_members(attr_root):
    from fingerprint_core.attribution import predict

    attributor = predict.attributor_for(attr_root / NAME)
    good = sample_png(attr_root, "toy_gan")
    out = sa.attribute_files(attributor, [("1", "a.zip", zipped({f"m{i}.png": good for i in range(3)})),
                                          ("2", "b.png", good)], room=2)

    assert [c.result.file for c in out["1"].cards] == ["a.zip/m0.png", "a.zip/m1.png"]
    assert out["1"].errors == [("a.zip", "1 image(s) not read: the page attributes at most 200 images at once; "
                                         "remove some files or split the batch")]
    assert out["2"].cards == [] and "not read" in out["2"].errors[0][1]
    card = out["1"].cards[0]
    assert card.converted.shape == (1, 16, 16) and card.domain_gap is None and card.result.status == "ok"
    assert len(card.result.top) == 4 and card.result.verdict in fat.VERDICTS
    table = sa.results_table(out["1"].cards, attributor.decision)
    assert list(table["file"]) == ["a.zip/m0.png", "a.zip/m1.png"]
    assert {"sha256", "verdict", "attributed", "model", "p_model", "family", "p_family", "p_real", "real_threshold",
            "open_set_score", "threshold", "nearest_real_rgb"} <= set(table.columns)
    assert table["sha256"].str.len().eq(64).all()


def test_domain_gap_flags_colour_and_size_but_not_grey_stored_as_rgb():
    grey_rgb = np.repeat(np.arange(256, dtype=np.uint8).reshape(16, 16, 1), 3, axis=2)
    colour = grey_rgb.copy()
    colour[0, 0, 0] = 7
    assert sa.domain_gap(grey_rgb, (1, 16, 16)) is None
    assert "a colour image" in sa.domain_gap(colour, (1, 16, 16))
    assert "an image of 20×10 pixels" in sa.domain_gap(np.zeros((10, 20, 1), np.uint8), (1, 16, 16))
    assert sa.domain_gap(np.zeros((28, 28, 1), np.uint8), (1, 32, 32), padded_from=(28, 28)) is None
    assert "a grayscale image" in sa.domain_gap(np.zeros((16, 16, 1), np.uint8), (3, 16, 16))


def test_nearest_rows_match_brute_force_and_placement_is_the_median():
    rng = np.random.default_rng(0)
    ref, q = rng.normal(size=(500, 7)).astype(np.float32), rng.normal(size=(9, 7)).astype(np.float32)
    got = sa.nearest_rows(q, ref, k=4, chunk=64)  # several chunks
    want = np.argsort(((q[:, None] - ref[None]) ** 2).sum(-1), axis=1)[:, :4]
    assert np.array_equal(got, want)
    xy = np.array([[0, 0], [1, 10], [2, 20], [100, 100]], np.float32)
    assert np.allclose(sa.place_on_map(np.array([[0, 1, 2]]), xy), [[1, 10]])


# ---- figures -----------------------------------------------------------------------------------------------------


def synthetic_summary(rows: list[tuple[str, str, str, float, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"method": m, "protocol": p, "metric": k, "mean": v, "std": s, "n": 3, "over": "seeds"}
                         for m, p, k, v, s in rows])


def test_bench_reading_says_who_wins_loses_ties_and_saturates():
    summary = synthetic_summary([
        ("Yu19", "closed", "accuracy", 0.70, 0.01), ("manifpt-rgb", "closed", "accuracy", 0.90, 0.01),
        ("Yu19", "closed", "chance", 0.2, 0.0), ("manifpt-rgb", "closed", "chance", 0.2, 0.0),
        ("Yu19", "robust", "jpeg75", 0.60, 0.01), ("manifpt-rgb", "robust", "jpeg75", 0.40, 0.02),
        ("Yu19", "robust", "noise2", 0.99, 0.0), ("manifpt-rgb", "robust", "noise2", 0.995, 0.0),
        ("Yu19", "openset", "auroc", 0.80, 0.05), ("manifpt-rgb", "openset", "auroc", 0.82, 0.05),
        ("Yu19", "openset", "fpr_calibrated", 0.1, 0.0), ("manifpt-rgb", "openset", "fpr_calibrated", 0.3, 0.0),
        ("Yu19", "lodo", "loss", 0.21, 0.0), ("manifpt-rgb", "lodo", "loss", 0.22, 0.0),
        ("Yu19", "lodo", "loss chance", 0.2, 0.0), ("manifpt-rgb", "lodo", "loss chance", 0.2, 0.0),
        ("Yu19", "lodo", "family", 0.1, 0.0), ("manifpt-rgb", "lodo", "family", 0.2, 0.0),
        ("Yu19", "lodo", "family chance", 0.67, 0.0), ("manifpt-rgb", "lodo", "family chance", 0.67, 0.0),
        ("Yu19", "lodo", "upsampling", 0.4, 0.0), ("manifpt-rgb", "lodo", "upsampling", 0.4, 0.0),
        ("Yu19", "lodo", "upsampling chance", 0.3, 0.0), ("manifpt-rgb", "lodo", "upsampling chance", 0.3, 0.0),
    ])
    lines = fat.bench_reading(summary)
    text = "\n".join(lines)

    assert "**a · closed set** (accuracy): best **manifpt-rgb** (0.900); ManiFPT (manifpt-rgb) leads the best " \
           "baseline (Yu19) by 0.200 (chance 0.20)." in lines
    assert "*JPEG 75*: best **Yu19** (0.600); ManiFPT's best (manifpt-rgb, 0.400) trails Yu19 by 0.200" in text
    assert "*noise 2/255*: every method reaches 0.99 or more: saturated" in text
    assert "**e · open set** (AUROC): best **manifpt-rgb** (0.820); ManiFPT (manifpt-rgb) and the best baseline " \
           "(Yu19) are within one std" in text
    assert "*loss*: every method is at chance (0.20; best manifpt-rgb 0.220)" in text
    assert "*family*: every method is below chance (0.67; best manifpt-rgb 0.200)" in text
    assert "*upsampling*: every method scores 0.400 (chance 0.30)" in text
    assert lines[-1] == "Over the 7 ranked columns of the table, a ManiFPT attributor is best in 5."


def test_bench_table_marks_the_best_cell_of_each_column_and_adds_chance():
    summary = synthetic_summary([
        ("Yu19", "closed", "accuracy", 0.70, 0.01), ("manifpt-fused", "closed", "accuracy", 0.90, 0.02),
        ("Yu19", "closed", "chance", 0.25, 0.0),
        ("Yu19", "openset", "fpr_calibrated", 0.1, 0.0), ("manifpt-fused", "openset", "fpr_calibrated", 0.3, 0.0),
        ("Yu19", "fisher", "fdr", 3.0, 0.5), ("manifpt-fused", "fisher", "fdr", 9.0, 1.0),
        ("Yu19", "lodo", "loss", 0.0, 0.0), ("manifpt-fused", "lodo", "loss", 0.0, 0.0),
    ])
    cells, best = fat.bench_table(summary)

    assert list(cells.index) == ["Yu19", "manifpt-fused", "chance"]
    assert list(cells.columns) == ["a accuracy", "d loss", "e FPR", "f FDR"]
    assert cells.loc["manifpt-fused", "a accuracy"] == "0.90 ± 0.02" and cells.loc["chance", "a accuracy"] == "0.25"
    assert best.loc["manifpt-fused", "a accuracy"] and not best.loc["Yu19", "a accuracy"]
    assert best.loc["Yu19", "e FPR"]  # lower is better
    assert not best["f FDR"].any() and cells.loc["chance", "f FDR"] == "-"  # never ranked, no chance
    assert not best["d loss"].any()  # everybody ties: nobody is shaded


def test_bench_figure_has_a_bar_per_method_error_bars_and_chance():
    summary = synthetic_summary([
        ("Yu19", "closed", "accuracy", 0.7, 0.01), ("manifpt-rgb", "closed", "accuracy", 0.9, 0.02),
        ("Yu19", "closed", "chance", 0.25, 0.0),
        ("Yu19", "robust", "jpeg75", 0.6, 0.03), ("manifpt-rgb", "robust", "jpeg75", 0.5, 0.04),
        ("Yu19", "robust", "down2", 0.4, 0.0), ("manifpt-rgb", "robust", "down2", 0.3, 0.0),
    ])
    fig = fat.bench_figure(summary, "robust").to_plotly_json()

    bars = [t for t in fig["data"] if t["type"] == "bar"]
    assert [t["name"] for t in bars] == ["Yu19", "manifpt-rgb"]
    assert list(bars[1]["x"]) == ["clean", "JPEG 75", "resize 0.5"] and list(bars[1]["y"]) == [0.9, 0.5, 0.3]
    assert list(bars[1]["error_y"]["array"]) == [0.02, 0.04, 0.0]
    assert len(fig["layout"]["shapes"]) == 3 and all(s["y0"] == 0.25 for s in fig["layout"]["shapes"])
    assert bars[1]["marker"]["color"] in fat.MANIFPT_COLORS and bars[0]["marker"]["color"] in fat.BASELINE_COLORS


def test_top_models_and_batch_figures():
    top = [{"model": "a", "p": 0.7}, {"model": "real", "p": 0.2}, {"model": "b", "p": 0.1}]
    fig = fat.top_models_figure(top, verdict="unknown").to_plotly_json()
    bar = fig["data"][0]
    assert list(bar["y"]) == ["b", "real", "a"]  # the most probable at the top
    assert bar["marker"]["color"][-1] == fat.VERDICT_COLORS["unknown"]

    table = pd.DataFrame({"model": ["a", "a", "b"], "verdict": ["known", "unknown", "known"]})
    fig = fat.batch_figure(table).to_plotly_json()
    by = {t["name"]: dict(zip(t["y"], t["x"], strict=True)) for t in fig["data"]}
    assert by == {"known": {"b": 1, "a": 1}, "unknown": {"b": 0, "a": 1}}
    assert fat.verdict_counts(table) == {"known": 2, "unknown": 1, "real": 0}


def _answer(verdict: str, model: str | None = "a", p_real: float = 0.1, score: float = 10.0):
    from fingerprint_core.attribution.predict import Result

    return Result(file="x.png", status="ok", top=[{"model": model or "b", "p": 0.9}], design={}, verdict=verdict,
                  model=model if verdict == "known" else None, p_real=p_real, open_set_score=score, nearest_real={})


def _decision(real_threshold: float = 0.6, threshold: float = 300.0):
    from types import SimpleNamespace

    return SimpleNamespace(real_threshold=real_threshold, measured={"val_real_kept": 0.97},
                           unknown=SimpleNamespace(threshold=threshold, kind="mahalanobis", accept=0.95))


def test_verdict_line_explains_the_decisions_in_order():
    d = _decision()
    assert "open-set score 900 vs threshold 300" in fat.verdict_line(_answer("unknown", score=900), d)
    assert fat.verdict_line(_answer("real", p_real=0.99), d).startswith("p(real) 0.990 vs threshold 0.6")
    assert "looks real" in fat.verdict_line(_answer("real", p_real=0.99), d)
    assert "a is the most probable" in fat.verdict_line(_answer("known"), d)


def test_tiles_keep_pixels_crisp_and_centre_the_artifact_on_white():
    img = np.arange(16, dtype=np.uint8).reshape(1, 4, 4)
    tile = fat.pixel_tile(fat.chw_to_hwc(img), px=16)
    assert tile.shape == (16, 16) and (tile[:4, :4] == 0).all() and tile[0, 4] == 1
    art, half = fat.artifact_tile(img, img)  # no difference: white everywhere
    assert art.min() > 230 and half == 1.0


def set_boxes(at: AppTest) -> list[str]:
    return [b.value for kind in (at.success, at.warning, at.info) for b in kind if "Set verdict" in b.value]


def test_one_source_toggle_shows_the_set_verdict(monkeypatch, attr_root):
    at = open_page(monkeypatch, attr_root, "page_attribute.py")
    upload(at, {f"gan{i}.png": sample_png(attr_root, "toy_gan", i) for i in range(8)})
    assert not set_boxes(at)
    at.toggle(key="attr_as_set").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    boxes = set_boxes(at)
    assert len(boxes) == 1 and "8 images" in boxes[0] and "thresholds of sets of 5" in boxes[0]
    assert "known: **toy\\_gan**" in boxes[0] or "toy_gan" in boxes[0]
    assert any(c.value.startswith("By set size (first n images): 5:") for c in at.caption)
    upload(at, {"one.png": sample_png(attr_root, "toy_gan", 0)})  # too few for a set: said, not an error
    assert any("No set verdict" in i.value and "at least 5 images" in i.value for i in at.info)
