"""`manifpt train` and `manifpt attribute`: the JSON contract, the readable table, and what the user
sees for every kind of bad input (each named, while the good files of the same call are attributed)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fingerprint_core.attribution import uploads
from fingerprint_core.cli import main
from test_attribution import toy_dataset, traced, trained_workspace

RNG = np.random.default_rng(7)


def png(array: np.ndarray, mode: str | None = None, fmt: str = "PNG", **kw) -> bytes:
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


def good_png() -> bytes:
    return png(traced("toy_checker", 1, RNG)[0, ..., 0])


def png_with_size(width: int, height: int) -> bytes:
    """A valid 8 x 8 PNG whose header claims width x height (CRC fixed): no pixels are ever made."""
    data = bytearray(png(np.zeros((8, 8), np.uint8)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return buffer.getvalue()


def declare_size(archive: bytes, size: int) -> bytes:
    """The archive with its (first) central-directory entry claiming `size` unpacked bytes."""
    data = bytearray(archive)
    at = data.index(b"PK\x01\x02")
    data[at + 24 : at + 28] = struct.pack("<I", size)
    return bytes(data)


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    return trained_workspace(tmp_path_factory, kinds=("rgb",))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder of good and bad inputs, as a user might hand them in."""
    d = tmp_path_factory.mktemp("inputs")
    (d / "good.png").write_bytes(good_png())
    (d / "text.png").write_text("this is not an image")
    (d / "truncated.png").write_bytes(good_png()[:60])
    (d / "huge.png").write_bytes(png_with_size(30000, 30000))
    (d / "escape.zip").write_bytes(zip_bytes({"../escape.png": good_png(), "inside.png": good_png()}))
    (d / "many.zip").write_bytes(zip_bytes({f"{i}.png": b"" for i in range(10_001)}))
    (d / "big.zip").write_bytes(declare_size(zip_bytes({"big.png": good_png()}), 2**31))
    colour = RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    (d / "cmyk.jpg").write_bytes(png(colour, "CMYK", "JPEG"))
    (d / "deep.png").write_bytes(png((traced("toy_checker", 1, RNG)[0, ..., 0].astype(np.uint16) * 257), "I;16"))
    (d / "alpha.png").write_bytes(png(np.dstack([colour, np.full((16, 16), 128, np.uint8)])))
    frames = [Image.fromarray(np.full((16, 16), v, np.uint8)) for v in (0, 100, 200)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    (d / "animated.gif").write_bytes(buffer.getvalue())
    (d / "small.png").write_bytes(png(np.zeros((28, 28), np.uint8)))
    return d


BAD = {  # file -> what the user reads
    "text.png": "not an image: unrecognised file format (the file looks like text)",
    "truncated.png": "truncated or corrupt image data",
    "huge.png": "image is 30000 x 30000 (900.0 megapixels), over the 50.0-megapixel limit",
    "escape.zip/../escape.png": "unsafe path in archive (../ leads outside the archive); refused",
    "many.zip": "archive has 10001 entries, over the limit of 10000; nothing was read from it",
    "big.zip": "archive unpacks to 2.0 GiB, over the limit of 1.0 GiB; nothing was read from it",
}
NOTED = {  # file -> a note in its status (decoded, and attributed with a warning)
    "cmyk.jpg": "CMYK image converted to RGB; colour image converted to grayscale",
    "deep.png": "16-bit image reduced to 8 bits",
    "alpha.png": "alpha channel dropped",
    "animated.gif": "animated image with 3 frames: only the first frame is used",
    "small.png": "image is 28 x 28, resized to 16 x 16",
}


def rel(folder: Path, name: str) -> str:
    """A reported file name relative to folder (not os.path.relpath: it would fold the ../)."""
    return name.removeprefix(f"{folder}/")


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_follows_the_contract(ws, inputs, capsys):
    code, out, _ = run(capsys, "attribute", ws, inputs / "good.png", "--json", "--top", "2")
    assert code == 0
    doc = json.loads(out)
    assert set(doc) == {"schema", "report", "results", "errors"} and doc["errors"] == []
    assert doc["schema"] == "manifpt-attribute/2" and doc["report"]["attributor"]["kind"] == "rgb"
    [r] = doc["results"]
    assert set(r) == {"file", "status", "top", "design", "verdict", "model", "p_real", "open_set_score", "nearest_real", "sha256"}
    assert r["sha256"] == hashlib.sha256((inputs / "good.png").read_bytes()).hexdigest()
    assert r["file"] == str(inputs / "good.png") and r["status"] == "ok"
    assert len(r["top"]) == 2 and all(set(t) == {"model", "p"} for t in r["top"])
    assert r["top"][0]["model"] == "toy_checker" and r["top"][0]["p"] >= r["top"][1]["p"]
    assert set(r["design"]) == {"family", "upsampling", "loss", "normalization"}
    assert r["design"]["upsampling"] == {"value": "transposed_conv", "p": pytest.approx(r["design"]["upsampling"]["p"])}
    assert all(set(v) == {"value", "p"} and 0 <= v["p"] <= 1 for v in r["design"].values())
    assert r["verdict"] == "known" and r["model"] == "toy_checker" and isinstance(r["open_set_score"], float)
    assert 0 <= r["p_real"] <= 1
    assert set(r["nearest_real"]) == {"rgb"} and isinstance(r["nearest_real"]["rgb"], int)


def test_every_bad_input_is_named_with_its_reason_and_the_good_ones_are_attributed(ws, inputs, capsys):
    code, out, _ = run(capsys, "attribute", ws, inputs, "--json")
    assert code == 0
    doc = json.loads(out)
    errors = {rel(inputs, e["file"]): e["reason"] for e in doc["errors"]}
    for name, reason in BAD.items():
        assert name in errors, f"{name} not reported: {errors}"
        assert errors[name].startswith(reason), (name, errors[name])
    results = {rel(inputs, r["file"]): r for r in doc["results"]}
    assert set(results) == {"good.png", "escape.zip/inside.png", *NOTED}
    assert results["good.png"]["status"] == "ok"
    for name, note in NOTED.items():
        assert results[name]["status"].startswith("warning: ") and note in results[name]["status"], results[name]["status"]


def test_the_readable_table_names_files_and_verdicts(ws, inputs, capsys):
    code, out, err = run(capsys, "attribute", ws, inputs / "good.png", inputs / "text.png", inputs / "alpha.png")
    assert code == 0
    assert "verdict" in out.splitlines()[0] and "good.png" in out and "known" in out
    assert f"{inputs / 'text.png'}: not an image" in err
    assert f"{inputs / 'alpha.png'}: warning: alpha channel dropped" in err


def test_nothing_attributed_exits_with_1(ws, inputs, capsys):
    code, out, err = run(capsys, "attribute", ws, inputs / "text.png", "--json")
    assert code == 1
    assert json.loads(out)["results"] == []


def test_a_workspace_without_an_attributor_names_the_command(gray_workspace_root, inputs, capsys):
    code, _, err = run(capsys, "attribute", gray_workspace_root / "gm-gray", inputs / "good.png")
    assert code == 1
    assert "has no trained attributor" in err and "manifpt train" in err and "Traceback" not in err


def test_train_prints_test_accuracy_per_head(tmp_path, capsys, one_thread):
    from fingerprint_core.pipeline import fingerprint

    data = toy_dataset(tmp_path / "data", n_per_model=20, n_real=200)
    fingerprint(data, tmp_path / "ws", space_names=("rgb",), device="cpu")
    code, out, _ = run(capsys, "train", tmp_path / "ws", "--epochs", "2", "--quiet")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "test accuracy per head (rows) and attributor (columns)"
    assert lines[1].split() == ["kind", "rgb"] and any(line.split()[0] == "model" for line in lines[2:])
    code, _, err = run(capsys, "train", tmp_path / "ws", "--spaces", "fused")
    assert code == 1 and "cannot train fused" in err


# ---- uploads: the same rules from memory ------------------------------------------------------------
def test_uploads_from_memory_match_paths(inputs):
    names = ["good.png", "text.png", "escape.zip", "alpha.png"]
    from_memory = uploads.read_uploads([(n, (inputs / n).read_bytes()) for n in names])
    from_disk = uploads.read_paths([inputs / n for n in names])
    assert [u.name for u in from_memory.images] == ["good.png", "escape.zip/inside.png", "alpha.png"]
    assert [rel(inputs, u.name) for u in from_disk.images] == [u.name for u in from_memory.images]
    assert all(np.array_equal(a.array, b.array) for a, b in zip(from_memory.images, from_disk.images, strict=True))
    assert [(rel(inputs, f), r) for f, r in from_disk.errors] == from_memory.errors


def test_nested_archives_symlinks_and_absolute_names_in_a_zip_are_refused():
    link = zipfile.ZipInfo("link.png")
    link.external_attr = (0o120777 << 16)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr(link, "/etc/passwd")
        zf.writestr("inner.zip", zip_bytes({"x.png": good_png()}))
        zf.writestr("disguised.png", zip_bytes({"x.png": good_png()}))
        zf.writestr(zipfile.ZipInfo("/abs.png"), good_png())
        zf.writestr("notes.txt", "hello")
        zf.writestr("ok.png", good_png())
    batch = uploads.read_uploads([("a.zip", buffer.getvalue())])
    assert [u.name for u in batch.images] == ["a.zip/ok.png"]
    assert dict(batch.errors) == {
        "a.zip/link.png": "symbolic link in archive: not followed",
        "a.zip/inner.zip": "nested archive: archives inside an archive are not opened",
        "a.zip/disguised.png": "nested archive: archives inside an archive are not opened",
        "a.zip//abs.png": "unsafe path in archive (an absolute name); refused",
        "a.zip/notes.txt": "not an image file (extension .txt); skipped",
    }


def test_limits_count_members_declared_size_and_bytes_actually_unpacked():
    small = uploads.Limits(max_members=2, max_archive_bytes=10_000)
    three = zip_bytes({"a.png": good_png(), "b.png": good_png(), "c.png": good_png()})
    assert uploads.read_uploads([("three.zip", three)], limits=small).errors == [
        ("three.zip", "archive has 3 entries, over the limit of 2; nothing was read from it")]
    big = zip_bytes({"a.png": bytes(20_000)})
    assert uploads.read_uploads([("big.zip", big)], limits=small).errors == [
        ("big.zip", "archive unpacks to 19.5 KiB, over the limit of 9.8 KiB; nothing was read from it")]
    # a header that understates the size: the bytes read are what counts, and the member is refused
    lying = declare_size(zip_bytes({"a.png": good_png()}), 10)
    [(name, reason)] = uploads.read_uploads([("lying.zip", lying)]).errors
    assert name == "lying.zip/a.png" and reason.startswith("corrupt archive member")


def test_a_symlink_inside_a_folder_is_not_followed(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "secret.png").write_bytes(good_png())
    (tmp_path / "in" / "good.png").write_bytes(good_png())
    os.symlink(tmp_path / "secret.png", tmp_path / "in" / "link.png")
    batch = uploads.read_paths([tmp_path / "in"])
    assert [Path(u.name).name for u in batch.images] == ["good.png"]
    assert batch.errors == [(str(tmp_path / "in" / "link.png"), "symbolic link: not followed")]
