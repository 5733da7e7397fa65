"""Nothing lost, nothing leaked: exports, the clean-up, interrupted first runs, damaged workspaces,
reruns that repair, the writer lock and durable writes (issue: data safety)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from fingerprint_core import check, cli, pipeline
from fingerprint_core.attribution import ship, train
from fingerprint_core.datasets import DatasetError
from fingerprint_core.workspace import MANIFEST, MARK, Workspace, WorkspaceError
from gmdata import make_gm_dataset
from test_attribution import trained_workspace
from test_pipeline import assert_readable, run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def gray(tmp_path):
    return make_gm_dataset(tmp_path / "data", bad_file=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return trained_workspace(tmp_path_factory, kinds=("rgb",), epochs=2)


def cli_run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def user_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ---- 1. --export never deletes what it did not write ------------------------------------------------------


def test_export_refuses_a_folder_with_other_files_and_the_workspace_itself(trained, tmp_path, capsys):
    home = tmp_path / "home"
    (home / "photos").mkdir(parents=True)
    (home / "notes.txt").write_text("mine")
    (home / "photos" / "a.png").write_bytes(b"not yours")
    before = user_files(home)
    code, _, err = cli_run(capsys, "train", trained, "--epochs", "2", "--quiet", "--export", home)
    assert code == 1 and "holds no previous export" in err and str(home) in err
    assert user_files(home) == before
    ws_before = user_files(trained)
    for target in (trained, trained / "attribution", trained.parent):
        code, _, err = cli_run(capsys, "train", trained, "--epochs", "2", "--quiet", "--export", target)
        assert code == 1 and "outside the workspace" in err, target
    assert user_files(trained) == ws_before
    Workspace.open(trained)


def test_export_writes_into_an_empty_folder_and_replaces_a_previous_export(trained, tmp_path):
    ws = Workspace.open(trained)
    out = tmp_path / "export"
    out.mkdir()
    kinds = list(ws.manifest["attribution"]["attributors"])
    assert ship.export(ws, out) == kinds
    record = json.loads((out / "record.json").read_text())
    assert record["format"] == ship.EXPORT_FORMAT and list(record["attributors"]) == kinds
    (out / "old").mkdir()  # a kind a previous export wrote
    (out / "old" / "weights.safetensors").write_bytes(b"x")
    record["attributors"]["old"] = {}
    (out / "record.json").write_text(json.dumps(record))
    assert ship.export(ws, out) == kinds
    assert not (out / "old").exists() and sorted(p.name for p in out.iterdir()) == sorted(["record.json", *kinds])
    (out / "rgb" / "mine.txt").write_text("a user's file inside a kind folder")
    with pytest.raises(ValueError, match="did not write"):
        ship.export(ws, out)
    assert (out / "rgb" / "mine.txt").read_text().startswith("a user's")


def test_a_previous_export_cannot_name_a_kind_outside_its_folder(trained, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "weights.safetensors").write_bytes(b"a user's file")
    out = tmp_path / "export"
    out.mkdir()
    (out / "record.json").write_text(json.dumps({"split": "x", "attributors": {"../outside": {}}}))
    with pytest.raises(ValueError, match="holds no previous export"):
        ship.export(Workspace.open(trained), out)
    assert (outside / "weights.safetensors").read_bytes() == b"a user's file"


# ---- 2. the clean-up never follows a link and removes only its own entries -------------------------------


def test_the_cleanup_never_follows_a_symlink_nor_removes_unmarked_files(gray, tmp_path):
    ws = tmp_path / "ws"
    run(gray, ws)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(ws / "models", elsewhere)  # the user moves models/ to another disk and links it
    (elsewhere / "keep-me.txt").write_text("user data")
    (elsewhere / "toy_gan" / "notes").mkdir()
    (elsewhere / "toy_gan" / "notes" / "n.txt").write_text("user data")
    stale = next((elsewhere / "toy_gan").glob("rgb-*"))
    shutil.copytree(stale, elsewhere / "toy_gan" / "rgb-0000000000000000")  # looks like an old entry of ours
    shutil.rmtree(ws / "models")
    (ws / "models").symlink_to(elsewhere, target_is_directory=True)
    (ws / "my-notes.txt").write_text("user data inside the workspace")
    (ws / "my-folder").mkdir()
    (ws / "my-folder" / "x.bin").write_bytes(b"1")
    before = user_files(elsewhere)
    report = run(gray, ws)  # computes nothing, commits with the clean-up
    assert report.computed == []
    assert user_files(elsewhere) == before
    assert (ws / "my-notes.txt").is_file() and (ws / "my-folder" / "x.bin").is_file()
    assert_readable(ws)


def test_the_cleanup_removes_its_own_stale_entries_and_interrupted_writes(gray, tmp_path):
    ws = tmp_path / "ws"
    run(gray, ws)
    own = next((ws / "models" / "toy_gan").glob("rgb-*"))
    stale = own.with_name("rgb-00000000deadbeef")
    shutil.copytree(own, stale)  # carries our inventory: an old entry of ours
    partial = own.with_name(".rgb-x.tmp-0123abcd")
    partial.mkdir()
    (partial / "artifacts.npy").write_bytes(b"half")
    run(gray, ws)
    assert not stale.exists() and not partial.exists() and own.is_dir()


# ---- 3. an interrupted first run resumes in place ------------------------------------------------------


def test_a_first_run_that_fails_before_its_first_save_resumes_in_the_same_folder(gray, tmp_path):
    ws = tmp_path / "ws"
    aside = tmp_path / "aside"
    shutil.move(str(gray / "real"), aside)
    (gray / "real").mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((16, 16), np.uint8)).save(gray / "real" / "one.png")  # one good image only
    with pytest.raises(DatasetError, match="at least 2"):
        run(gray, ws)
    assert (ws / MARK).is_file() and not (ws / MANIFEST).exists()
    with pytest.raises(WorkspaceError, match="stopped before its first save"):
        Workspace.open(ws)
    shutil.rmtree(gray / "real")
    shutil.move(str(aside), gray / "real")
    run(gray, ws)
    assert_readable(ws)


def test_a_first_run_killed_after_some_entries_resumes_and_reuses_them(gray, tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    real_commit = Workspace.commit
    calls = []

    def never_saved(self, **kw):  # the manifest is never written; the third save is a Ctrl-C
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(Workspace, "commit", never_saved)
    with pytest.raises(KeyboardInterrupt):
        run(gray, ws)
    assert not (ws / MANIFEST).exists()
    monkeypatch.setattr(Workspace, "commit", real_commit)
    report = run(gray, ws)
    # the real set's and the first model's entries were finished: verified and reused, not recomputed
    assert {"real/rgb", "real/freq", "toy_gan/rgb", "toy_gan/freq"} <= set(report.reused)
    assert sorted(report.computed) == ["toy_vae/freq", "toy_vae/rgb"]
    assert_readable(ws)


def test_ctrl_c_says_what_is_kept_and_a_rerun_resumes(gray, tmp_path, capsys, monkeypatch):
    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "fingerprint", interrupted)
    code, _, err = cli_run(capsys, "fingerprint", gray, "-w", tmp_path / "ws")
    assert code == 130 and "run the same command again to resume" in err
    assert "finished fingerprints are kept" not in err


# ---- 4. damaged workspaces: a message naming the file and the reason, on every command ----------------------


def _manifest(ws: Path) -> dict:
    return json.loads((ws / MANIFEST).read_text())


def _entry_file(ws: Path, name: str) -> Path:
    m = _manifest(ws)
    return ws / m["models"]["toy_gan"]["spaces"]["rgb"]["dir"] / name


def _set_manifest(value):
    def damage(ws: Path) -> Path:
        (ws / MANIFEST).write_text(json.dumps(value))
        return ws / MANIFEST
    return damage


def _models_as_list(ws: Path) -> Path:
    m = _manifest(ws)
    m["models"] = list(m["models"])
    (ws / MANIFEST).write_text(json.dumps(m))
    return ws / MANIFEST


def _no_config(ws: Path) -> Path:
    m = _manifest(ws)
    m.pop("config")
    (ws / MANIFEST).write_text(json.dumps(m))
    return ws / MANIFEST


def _missing_npy(ws: Path) -> Path:
    f = _entry_file(ws, "distance.npy")
    f.unlink()
    return f


def _truncated_npy(ws: Path) -> Path:
    f = _entry_file(ws, "distance.npy")
    f.write_bytes(f.read_bytes()[:200])
    return f


def _pickled_npy(ws: Path) -> Path:
    f = _entry_file(ws, "artifacts.npy")
    np.save(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return f


def _missing_design(ws: Path) -> Path:
    f = ws / _manifest(ws)["design"]
    f.unlink()
    return f


# one list of damages, shared with the app tests (tests/test_app_damage.py)
DAMAGES = {
    "manifest []": _set_manifest([]),
    "manifest null": _set_manifest(None),
    "models as a list": _models_as_list,
    "manifest without config": _no_config,
    "missing .npy": _missing_npy,
    "truncated .npy": _truncated_npy,
    "pickled .npy": _pickled_npy,
    "missing design table": _missing_design,
}


@pytest.fixture
def fresh(gray, tmp_path) -> Path:
    ws = tmp_path / "ws"
    run(gray, ws)
    return ws


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_every_command_names_the_damaged_file_and_check_repairs_it(damage, fresh, gray, capsys):
    ws = fresh
    bad = DAMAGES[damage](ws)
    in_manifest = bad.name == MANIFEST
    commands = [("info", ws), ("analyze", ws, "--quiet"), ("train", ws, "--epochs", "1", "--quiet"),
                ("attribute", ws, gray / "models" / "toy_gan"), ("fingerprint", gray, "-w", ws, "--quiet")]
    named = []
    for argv in commands:
        try:
            code, out, err = cli_run(capsys, *argv)
        except Exception as e:  # noqa: BLE001  (any traceback is the failure this test looks for)
            pytest.fail(f"manifpt {argv[0]} on a workspace with {damage}: {type(e).__name__}: {e}")
        assert "Traceback" not in err, (damage, argv[0], err)
        if code != 0:
            assert "error: " in err and (str(bad) in err or str(ws) in err), (damage, argv[0], err)
            named += [argv[0]] if str(bad) in err else []
        if in_manifest:
            assert code == 1 and str(bad) in err, (damage, argv[0], err)  # every command reads the manifest
    assert named, damage  # the commands that read the damaged file say which file and why
    if not in_manifest:  # `fingerprint` above recomputed the damaged entry (the rerun repairs): damage it again
        assert check.check(ws).ok
        DAMAGES[damage](ws)
    found = check.check(ws)
    assert not found.ok and any(str(bad) in d.file or str(bad) in d.reason for d in found.damages), found
    code, out, _ = cli_run(capsys, "check", ws, "--quiet")
    assert code == 1 and "damaged" in out and "recompute: manifpt fingerprint" in out
    code, out, _ = cli_run(capsys, "check", ws, "--repair", "--quiet")
    if code == 1:  # the manifest no longer says where the data is: the command to run is named
        assert "still to do: manifpt fingerprint DATA_ROOT" in out and damage in ("manifest []", "manifest null",
                                                                                   "manifest without config"), out
        assert any(p.name.startswith(f"{MANIFEST}.damaged-") for p in ws.iterdir())  # set aside, not deleted
        run(gray, ws)
    else:
        assert "repaired: recomputed the fingerprints" in out, out
    assert check.check(ws).ok
    assert_readable(ws)


# ---- 5. reruns verify entries before they count as reused ---------------------------------------------------


def test_a_rerun_recomputes_an_entry_whose_file_is_gone(fresh, gray):
    _entry_file(fresh, "artifacts.npy").unlink()
    report = run(gray, fresh)
    assert report.computed == ["toy_gan/rgb"] and "toy_gan/rgb" not in report.reused
    assert_readable(fresh)


def test_train_and_analyze_redo_a_damaged_entry(trained, tmp_path):
    ws_path = tmp_path / "ws"
    shutil.copytree(trained, ws_path)
    ws = Workspace.open(ws_path)
    entry = ws.manifest["attribution"]["attributors"]["rgb"]
    (ws_path / entry["dir"] / "weights.safetensors").unlink()
    logs = []
    train.train(ws_path, kinds=["rgb"], epochs=1, device="cpu", log=logs.append)
    assert not any("reused" in line for line in logs)
    ws = Workspace.open(ws_path)
    assert ws.intact(ws.manifest["attribution"]["attributors"]["rgb"]["dir"])
    from fingerprint_core.analysis.run import Settings, analyze

    small = Settings(bootstrap=20)
    first = analyze(ws, settings=small)
    ws = Workspace.open(ws_path)
    (ws_path / ws.manifest["analysis"]["dir"] / "metrics.json").unlink()
    again = analyze(Workspace.open(ws_path), settings=small)
    assert again["nmi"] == first["nmi"]
    ws = Workspace.open(ws_path)
    assert ws.intact(ws.manifest["analysis"]["dir"])


# ---- 9. the writer reloads the manifest under the lock; durable, portable writes ----------------------------


def test_fingerprint_keeps_what_another_writer_committed_after_it_opened_the_workspace(fresh, gray, monkeypatch):
    opened = Workspace.open_or_create

    def open_then_other_writer(path):
        ws = opened(path)
        other = Workspace.open(path)
        with other.writing():
            other.manifest["attribution"] = {"attributors": {}, "note": "committed by train meanwhile"}
            other.commit()
        return ws

    monkeypatch.setattr(Workspace, "open_or_create", staticmethod(open_then_other_writer))
    run(gray, fresh)
    assert _manifest(fresh)["attribution"]["note"] == "committed by train meanwhile"


def test_the_core_has_no_posix_only_lock_and_commits_are_fsynced(fresh, monkeypatch):
    sources = "\n".join(p.read_text() for p in (REPO / "fingerprint_core").rglob("*.py"))
    assert "fcntl" not in sources
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    ws = Workspace.open(fresh)
    with ws.writing():
        ws.commit()
    assert str(fresh / MANIFEST) not in synced  # the manifest is written under a temporary name...
    assert any(".workspace.json.tmp-" in s for s in synced) and str(fresh) in synced  # ...then the folder is synced


# ---- 7. a budget on the decoded pixels of one upload or archive -------------------------------------------


def _blank_png(side: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, "PNG")
    return buf.getvalue()


def test_a_zip_of_huge_blank_pngs_is_cut_at_the_decoded_pixel_budget():
    import io
    import zipfile

    from fingerprint_core.attribution import uploads

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(12):
            z.writestr(f"blank{i:02d}.png", _blank_png(3000))  # 9 MB decoded each, a few KB packed
    limits = uploads.Limits(max_decoded_bytes=40 * 2**20)
    batch = uploads.read_uploads([("bomb.zip", buf.getvalue())], limits=limits)
    assert len(batch.images) == 4 and sum(u.array.nbytes for u in batch.images) <= limits.max_decoded_bytes
    assert len(batch.errors) == 8
    name, reason = batch.errors[0]
    assert name == "bomb.zip/blank04.png" and "budget of 40 MB for decoded images" in reason and "needs 8.6 MB" in reason
    assert uploads.Limits().max_decoded_bytes >= 50 * 1024 * 1024 * 3  # the stated default takes 50 such images


def test_the_cli_budget_flag_and_the_env_setting(trained, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        (folder / f"big{i}.png").write_bytes(_blank_png(2000))  # 3.8 MB decoded each
    code, out, _ = cli_run(capsys, "attribute", trained, folder, "--json", "--max-decoded-mb", "8")
    doc = json.loads(out)
    assert len(doc["results"]) == 2 and len(doc["errors"]) == 1 and "budget" in doc["errors"][0]["reason"]
    monkeypatch.setenv("MANIFPT_MAX_DECODED_MB", "4")
    code, out, _ = cli_run(capsys, "attribute", trained, folder, "--json")
    doc = json.loads(out)
    assert len(doc["results"]) == 1 and "MANIFPT_MAX_DECODED_MB" in doc["errors"][0]["reason"]


# ---- 10. JPEG data, whatever its name, is attributed with a note ---------------------------------------


def test_jpeg_data_under_a_png_name_gets_a_note(trained, tmp_path, capsys):
    from PIL import Image

    ws = Workspace.open(trained)
    sample = np.asarray(ws.images(ws.model_names()[0])[0])[0]
    Image.fromarray(sample).save(tmp_path / "photo.png", format="JPEG", quality=90)
    Image.fromarray(sample).save(tmp_path / "honest.jpg", format="JPEG", quality=90)
    Image.fromarray(sample).save(tmp_path / "clean.png", format="PNG")
    code, out, _ = cli_run(capsys, "attribute", trained, tmp_path / "photo.png", tmp_path / "honest.jpg",
                           tmp_path / "clean.png", "--json")
    by_file = {Path(r["file"]).name: r["status"] for r in json.loads(out)["results"]}
    assert "JPEG data under a .png name" in by_file["photo.png"] and "JPEG-compressed" in by_file["photo.png"]
    assert "JPEG-compressed" in by_file["honest.jpg"] and "under a" not in by_file["honest.jpg"]
    assert by_file["clean.png"] == "ok"
