"""Dataset -> workspace: re-runs, incremental adds, bad files, crashes that lose nothing."""

import json
from pathlib import Path

import numpy as np
import pytest

from fingerprint_core import pipeline, workspace
from fingerprint_core.datasets import DatasetError
from fingerprint_core.workspace import REAL, Workspace
from gmdata import TOY_MODELS, add_model, blob_images, make_gm_dataset
from test_decode import png_with_size

PIXEL = ("gan", "pixel_shuffle", "hinge", "spectral")


def run(root, ws, **kw):
    return pipeline.fingerprint(root, ws, device="cpu", **kw)


def listed_files(ws: Workspace) -> list[Path]:
    return [p for p in ws.path.rglob("*") if p.is_file() and p.name != ".lock"]


def assert_readable(ws_path: Path) -> Workspace:
    """Everything the manifest names exists and loads."""
    ws = Workspace.open(ws_path)
    assert len(ws.reference_images()) > 0
    for m in ws.model_names(include_real=True):
        n = len(ws.images(m))
        for s in ws.manifest["models"][m]["spaces"]:
            assert len(ws.nearest(m, s)) == n == len(ws.artifacts(m, s)) == len(ws.distance(m, s))
    return ws


@pytest.fixture
def gray(tmp_path):
    return make_gm_dataset(tmp_path / "data", bad_file=False)


def test_fingerprint_writes_a_complete_workspace(gray, tmp_path):
    report = run(gray, tmp_path / "ws")
    ws = assert_readable(tmp_path / "ws")
    assert sorted(report.computed) == sorted(f"{m}/{s}" for m in ["toy_gan", "toy_vae", REAL] for s in ["rgb", "freq"])
    assert ws.model_names() == ["toy_gan", "toy_vae"]
    assert ws.manifest["real"]["n_reference"] == 270 and ws.manifest["real"]["n_heldout"] == 30
    assert ws.reference_images().shape == (270, 1, 16, 16)
    assert ws.artifacts("toy_gan", "rgb").shape == (24, 256) and ws.artifacts("toy_gan", "rgb").dtype == np.float16
    design = ws.design().set_index("model")
    assert design.loc["toy_vae", "upsampling"] == TOY_MODELS["toy_vae"][1] and design.loc[REAL, "family"] == "real"
    meta = json.loads((tmp_path / "ws" / "workspace.json").read_text())
    assert meta["schema_version"] == 1 and meta["versions"]["torch"] and meta["config"]["spaces"] == ["rgb", "freq"]
    # rgb artifacts in float16 keep the exact code difference
    arts = ws.artifacts("toy_gan", "rgb").astype(np.float64)
    x = ws.images("toy_gan").reshape(24, -1).astype(np.int64)
    nn = ws.reference_images().reshape(270, -1)[ws.nearest("toy_gan", "rgb")].astype(np.int64)
    np.testing.assert_array_equal(np.rint(arts * 255), x - nn)


def test_the_split_is_seeded_and_disjoint(gray, tmp_path):
    run(gray, tmp_path / "a")
    run(gray, tmp_path / "b")
    a, b = Workspace.open(tmp_path / "a"), Workspace.open(tmp_path / "b")
    np.testing.assert_array_equal(a.reference_images(), b.reference_images())
    src = a.sources(REAL)
    assert len(src) == 30
    run(gray, tmp_path / "c", seed=1)
    assert not np.array_equal(Workspace.open(tmp_path / "c").images(REAL), a.images(REAL))


def test_re_running_recomputes_nothing(gray, tmp_path):
    run(gray, tmp_path / "ws")
    before = {p: p.stat().st_mtime_ns for p in listed_files(Workspace.open(tmp_path / "ws")) if p.suffix == ".npy"}
    report = run(gray, tmp_path / "ws")
    assert report.computed == [] and len(report.reused) == 6
    after = {p: p.stat().st_mtime_ns for p in listed_files(Workspace.open(tmp_path / "ws")) if p.suffix == ".npy"}
    assert before == after


def test_adding_one_model_computes_only_that_model(gray, tmp_path):
    run(gray, tmp_path / "ws")
    add_model(gray, "gan_pixel", PIXEL, blob_images(10, 16, 1, np.random.default_rng(9)))
    report = run(gray, tmp_path / "ws")
    assert sorted(report.computed) == ["gan_pixel/freq", "gan_pixel/rgb"]
    ws = assert_readable(tmp_path / "ws")
    assert ws.model_names() == ["toy_gan", "toy_vae", "gan_pixel"]


def test_changed_or_removed_models_are_updated(gray, tmp_path):
    run(gray, tmp_path / "ws")
    img = blob_images(1, 16, 1, np.random.default_rng(5))[0, ..., 0]
    from PIL import Image

    Image.fromarray(img).save(gray / "models" / "toy_vae" / "000.png")
    report = run(gray, tmp_path / "ws")
    assert sorted(report.computed) == ["toy_vae/freq", "toy_vae/rgb"]
    # remove a model: its folder and row go, and so does everything the workspace held for it
    import shutil

    shutil.rmtree(gray / "models" / "toy_gan")
    lines = (gray / "models.csv").read_text().splitlines()
    (gray / "models.csv").write_text("\n".join(line for line in lines if not line.startswith("toy_gan")) + "\n")
    run(gray, tmp_path / "ws")
    ws = assert_readable(tmp_path / "ws")
    assert ws.model_names() == ["toy_vae"]
    assert not (tmp_path / "ws" / "models" / "toy_gan").exists()


def test_rgb_dataset_and_resized_models(tmp_path):
    root = make_gm_dataset(tmp_path / "data", channels=3, bad_file=False)
    add_model(root, "gan_pixel", PIXEL, blob_images(6, 32, 3, np.random.default_rng(2)))  # 32 x 32
    report = run(root, tmp_path / "ws")
    ws = assert_readable(tmp_path / "ws")
    assert ws.images("gan_pixel").shape == (6, 3, 16, 16)
    assert ws.artifacts("gan_pixel", "freq").shape == (6, 3 * 256)
    assert any("high-frequency" in w for w in report.warnings)


def test_bad_files_are_listed_and_the_good_ones_fingerprinted(gray, tmp_path):
    folder = gray / "models" / "toy_gan"
    good = (folder / "000.png").read_bytes()
    (folder / "corrupt.png").write_bytes(good[: len(good) // 2])
    (folder / "notes.png").write_text("this is text, not a picture")
    (folder / "huge.png").write_bytes(png_with_size(30000, 30000))
    report = run(gray, tmp_path / "ws")
    reasons = {b.file: b.reason for b in report.bad_files}
    assert set(reasons) == {"models/toy_gan/corrupt.png", "models/toy_gan/notes.png", "models/toy_gan/huge.png"}
    assert "truncated" in reasons["models/toy_gan/corrupt.png"]
    assert "not an image" in reasons["models/toy_gan/notes.png"]
    assert "30000 x 30000" in reasons["models/toy_gan/huge.png"]
    ws = assert_readable(tmp_path / "ws")
    assert len(ws.images("toy_gan")) == 24
    assert len(ws.bad_files()) == 3


def test_a_crash_between_models_keeps_what_was_finished(gray, tmp_path, monkeypatch):
    run(gray, tmp_path / "ws")
    add_model(gray, "gan_pixel", PIXEL, blob_images(10, 16, 1, np.random.default_rng(9)))
    real_project = pipeline.artifacts.project
    calls = {"n": 0}

    def flaky(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # rgb of the new model succeeds, freq dies
            raise RuntimeError("power cut")
        return real_project(*a, **kw)

    monkeypatch.setattr(pipeline.artifacts, "project", flaky)
    with pytest.raises(RuntimeError, match="power cut"):
        run(gray, tmp_path / "ws")
    ws = assert_readable(tmp_path / "ws")
    assert ws.model_names() == ["toy_gan", "toy_vae"]  # the unfinished model is not committed
    monkeypatch.setattr(pipeline.artifacts, "project", real_project)
    report = run(gray, tmp_path / "ws")
    # the rgb entry finished before the crash is verified and adopted by its name, not recomputed
    assert report.computed == ["gan_pixel/freq"]
    assert "gan_pixel/rgb" in report.reused


def test_a_crash_inside_a_write_leaves_the_previous_workspace_readable(gray, tmp_path, monkeypatch):
    run(gray, tmp_path / "ws")
    manifest_before = (tmp_path / "ws" / "workspace.json").read_bytes()
    add_model(gray, "gan_pixel", PIXEL, blob_images(10, 16, 1, np.random.default_rng(9)))
    real_write = workspace.NpyStream.write
    calls = {"n": 0}

    def dying_write(self, chunk):
        calls["n"] += 1
        if calls["n"] == 3:  # half-way through an entry's files (images, then nearest, distance, ...)
            self._file.write(b"half a chunk")
            raise OSError("disk full")
        return real_write(self, chunk)

    monkeypatch.setattr(workspace.NpyStream, "write", dying_write)
    with pytest.raises(OSError, match="disk full"):
        run(gray, tmp_path / "ws")
    ws = assert_readable(tmp_path / "ws")
    assert ws.model_names() == ["toy_gan", "toy_vae"]
    assert not [p for p in (tmp_path / "ws").rglob("*.tmp-*")]  # the half entry was removed
    assert json.loads(manifest_before)["models"].keys() == ws.manifest["models"].keys()


def test_a_crash_while_replacing_the_manifest_keeps_the_old_one(gray, tmp_path, monkeypatch):
    run(gray, tmp_path / "ws")
    before = (tmp_path / "ws" / "workspace.json").read_text()
    add_model(gray, "gan_pixel", PIXEL, blob_images(10, 16, 1, np.random.default_rng(9)))

    def no_replace(src, dst):
        raise OSError("killed before rename")

    monkeypatch.setattr(workspace.os, "replace", no_replace)
    with pytest.raises(OSError):
        run(gray, tmp_path / "ws")
    assert (tmp_path / "ws" / "workspace.json").read_text() == before
    assert_readable(tmp_path / "ws")


def test_dataset_errors_name_the_problem(gray, tmp_path):
    (gray / "models" / "orphan").mkdir()
    with pytest.raises(DatasetError, match="orphan"):
        run(gray, tmp_path / "ws")


def test_the_name_real_is_reserved(gray, tmp_path):
    add_model(gray, REAL, PIXEL, blob_images(3, 16, 1, np.random.default_rng(1)))
    with pytest.raises(DatasetError, match="reserved"):
        run(gray, tmp_path / "ws")


def test_a_non_workspace_folder_is_never_overwritten(gray, tmp_path):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "thesis.tex").write_text("...")
    with pytest.raises(workspace.WorkspaceError, match="non-empty"):
        run(gray, target)
    assert (target / "thesis.tex").exists()


def test_quality_figures_beside_models_csv_reach_the_summary(gray, tmp_path):
    (gray / "quality.csv").write_text("model,fid,precision,recall,k\ntoy_gan,12.5,0.8,0.4,3\n")
    run(gray, tmp_path / "ws")
    summary = Workspace.open(tmp_path / "ws").summary().set_index("model")
    assert summary.loc["toy_gan", "fid"] == 12.5 and summary.loc["toy_gan", "recall"] == 0.4
    assert np.isnan(summary.loc["toy_vae", "precision"]) and "k" not in summary.columns
    (gray / "quality.csv").unlink()
    run(gray, tmp_path / "ws")
    assert "fid" not in Workspace.open(tmp_path / "ws").summary().columns


def test_a_second_writer_fails_fast_or_waits_for_the_first(tmp_path):
    import threading
    import time

    from fingerprint_core.workspace import Workspace, WorkspaceError

    ws = Workspace.open_or_create(tmp_path / "ws")
    other = Workspace.open_or_create(tmp_path / "ws")
    assert not ws.busy()
    release = threading.Event()

    def hold():
        with other.writing():
            release.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    time.sleep(0.2)
    assert ws.busy()
    with pytest.raises(WorkspaceError, match="being written by another run"):
        with ws.writing():
            pass
    threading.Timer(0.5, release.set).start()
    start = time.monotonic()
    with ws.writing(wait_s=5):  # waits for the other writer instead of failing
        assert time.monotonic() - start >= 0.4
    t.join()


# ---- bounded memory: chunks sized from the working set, byte-identical results -----------------------------


def entry_files(ws_path: Path) -> dict[str, bytes]:
    """Every .npy and .parquet file of every entry the manifest names, by path."""
    ws = Workspace.open(ws_path)
    return {p.relative_to(ws.path).as_posix(): p.read_bytes() for rel in workspace.named_paths(ws.manifest)
            if (ws.path / rel).is_dir() for p in sorted((ws.path / rel).iterdir()) if p.suffix in (".npy", ".parquet")}


def inventories(ws_path: Path) -> dict[str, dict]:
    ws = Workspace.open(ws_path)
    return {rel: json.loads((ws.path / rel / workspace.INVENTORY).read_text())["files"]
            for rel in workspace.named_paths(ws.manifest) if (ws.path / rel).is_dir()}


def test_a_tiny_working_set_gives_byte_identical_entries(tmp_path, monkeypatch):
    from fingerprint_core import artifacts

    root = make_gm_dataset(tmp_path / "data", channels=3, size=64, n_real=200, n_per_model=100, bad_file=False)
    run(root, tmp_path / "default")
    monkeypatch.setenv("MANIFPT_WORKING_SET_MB", "1")  # below the floor: the 64 MiB minimum
    chunks = []
    real_project = artifacts.project
    monkeypatch.setattr(artifacts, "project", lambda space, images, *a, **kw: chunks.append(len(images))
                        or real_project(space, images, *a, **kw))
    run(root, tmp_path / "tiny")
    assert max(chunks) < 100 and len(chunks) > 6  # each model's 100 samples took several chunks per space
    want, got = entry_files(tmp_path / "default"), entry_files(tmp_path / "tiny")
    assert got.keys() == want.keys() and any("artifacts.npy" in k for k in got)
    for k in want:
        assert got[k] == want[k], k
    assert inventories(tmp_path / "tiny") == inventories(tmp_path / "default")
    assert_readable(tmp_path / "tiny")


def test_the_artifact_writer_never_holds_more_than_its_chunk(tmp_path, monkeypatch):
    from fingerprint_core import artifacts, memory

    monkeypatch.setenv("MANIFPT_WORKING_SET_MB", "64")
    n, side = 400, 128
    root = make_gm_dataset(tmp_path / "data", channels=3, size=side, n_real=60, n_per_model=n, bad_file=False)
    dim = 3 * side * side
    budget = memory.working_set_bytes()
    assert n * dim * 4 > budget  # the whole float32 artifact array of one model would not fit
    projected, written = [], []
    real_project, real_write = artifacts.project, workspace.NpyStream.write

    def counting_project(space, images, manifold, **kw):
        p = real_project(space, images, manifold, **kw)
        projected.append(p.artifacts.numel() * p.artifacts.element_size())
        return p

    def counting_write(self, chunk):
        written.append((self.name, self.dtype, np.asarray(chunk).nbytes, len(chunk)))
        return real_write(self, chunk)

    monkeypatch.setattr(artifacts, "project", counting_project)
    monkeypatch.setattr(workspace.NpyStream, "write", counting_write)
    run(root, tmp_path / "ws", space_names=("freq",))
    limit = artifacts.CHUNK_SHARE * budget
    assert len(projected) >= 2 * 3 and max(projected) <= limit  # float32 chunks of toy_gan, toy_vae, real
    arts = [w for w in written if w[0] == "artifacts.npy"]
    refs = [w for w in written if w[0] == "reference.npy" and w[1] == np.float32]
    assert len(arts) >= 2 * 2 and max(b for *_, b, _ in arts) * 2 <= limit  # float16 on disk, float32 in flight
    assert sum(rows for *_, rows in arts) == 2 * n + 6
    assert len(refs) >= 2 and max(b for *_, b, _ in refs) <= limit  # the reference embedding went in chunks too
    assert sum(rows for *_, rows in refs) == 54
    ws = assert_readable(tmp_path / "ws")
    assert ws.artifacts("toy_gan", "freq").shape == (n, dim)


def test_streamed_npy_files_are_what_np_save_writes(tmp_path):
    import io

    cases = {"int.npy": np.arange(10, dtype=np.int64), "empty.npy": np.zeros((0, 7), np.float16),
             "images.npy": np.random.default_rng(0).integers(0, 256, (9, 3, 4, 4)).astype(np.uint8),
             "scalar.npy": np.array(3.5), "fortran.npy": np.asfortranarray(np.ones((4, 6), np.float32)),
             "flags.npy": np.array([True, False])}
    ws = Workspace.open_or_create(tmp_path / "ws")
    rel = ws.write_entry("arrays-0", cases)
    for name, arr in cases.items():
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
        assert (ws.path / rel / name).read_bytes() == buf.getvalue(), name
    assert ws.intact(rel)
    # rows streamed in chunks: the same bytes as one np.save
    big = np.random.default_rng(1).normal(size=(50, 33)).astype(np.float32)
    with ws.entry("arrays-1") as e:
        out = e.array("big.npy", big.shape, big.dtype)
        for a in range(0, 50, 7):
            out.write(big[a : a + 7])
    buf = io.BytesIO()
    np.save(buf, big)
    assert (ws.path / "arrays-1" / "big.npy").read_bytes() == buf.getvalue() and ws.intact("arrays-1")
    # a stream left short, or an error inside, leaves nothing behind
    with pytest.raises(ValueError, match="7 of 50 rows"):
        with ws.entry("arrays-2") as e:
            e.array("big.npy", big.shape, big.dtype).write(big[:7])
    with pytest.raises(TypeError, match="dtype"):
        with ws.entry("arrays-3") as e:
            e.array("big.npy", big.shape, big.dtype).write(big[:7].astype(np.float64))
    assert not (ws.path / "arrays-2").exists() and not (ws.path / "arrays-3").exists()
    assert not [p for p in ws.path.iterdir() if ".tmp-" in p.name]
