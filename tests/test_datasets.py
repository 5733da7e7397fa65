"""datasets: image folders, npz and idx readers, GM dataset checks, hashes, Fashion-MNIST."""

from __future__ import annotations

import gzip
import io
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fingerprint_core import datasets
from fingerprint_core.datasets import (
    REQUIRED_COLUMNS,
    VOCABULARY,
    BadFile,
    DatasetError,
    content_hash,
    open_dataset,
    read_images,
)

RNG = np.random.default_rng(0)


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def images(n: int, h: int, w: int, c: int | None = None) -> np.ndarray:
    shape = (n, h, w) if c is None else (n, h, w, c)
    return RNG.integers(0, 256, shape, dtype=np.uint8)


# --- read_images: folders ---------------------------------------------------------------------


def test_grayscale_folder_with_nested_files_npz_layouts_junk_and_bad_files(tmp_path):
    a, b = images(2, 16, 16)
    write_png(tmp_path / "a.png", a)
    write_png(tmp_path / "sub" / "deeper" / "b.PNG", b)
    nhw, nhwc, nchw = images(2, 16, 16), images(3, 16, 16, 1), images(1, 16, 16, 1)
    np.savez(tmp_path / "sub" / "nhw.npz", nhw)
    np.savez_compressed(tmp_path / "sub" / "nhwc.npz", nhwc)
    np.savez(tmp_path / "sub" / "nchw.npz", nchw.transpose(0, 3, 1, 2))
    # junk that is silently ignored
    (tmp_path / "README.txt").write_text("samples of dcgan")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x01junk")
    (tmp_path / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tmp_path / ".cache").mkdir()
    write_png(tmp_path / ".cache" / "thumb.png", images(1, 3, 3)[0])
    # bad files, which are listed
    (tmp_path / "sub" / "text.png").write_text("not an image")
    png = io.BytesIO()
    Image.fromarray(images(1, 16, 16)[0]).save(png, "PNG")
    (tmp_path / "cut.png").write_bytes(png.getvalue()[:100])
    np.savez(tmp_path / "float.npz", images=np.zeros((2, 16, 16), np.float32))
    np.savez(tmp_path / "shape.npz", np.zeros((2, 5, 7, 9), np.uint8))
    (tmp_path / "zip.npz").write_bytes(b"PK\x03\x04 not really a zip")

    out = read_images(tmp_path)

    assert out.images.shape == (8, 1, 16, 16) and out.images.dtype == np.uint8
    assert out.sources == [
        "a.png",
        "sub/deeper/b.PNG",
        "sub/nchw.npz[0]",
        "sub/nhw.npz[0]", "sub/nhw.npz[1]",
        "sub/nhwc.npz[0]", "sub/nhwc.npz[1]", "sub/nhwc.npz[2]",
    ]
    by_source = dict(zip(out.sources, out.images[:, 0], strict=True))
    np.testing.assert_array_equal(by_source["a.png"], a)
    np.testing.assert_array_equal(by_source["sub/deeper/b.PNG"], b)
    np.testing.assert_array_equal(by_source["sub/nhw.npz[1]"], nhw[1])
    np.testing.assert_array_equal(by_source["sub/nhwc.npz[2]"], nhwc[2, ..., 0])
    np.testing.assert_array_equal(by_source["sub/nchw.npz[0]"], nchw[0, ..., 0])
    bad = {f.file: f.reason for f in out.bad_files}
    assert all(isinstance(f, BadFile) for f in out.bad_files)
    assert set(bad) == {
        "cut.png", "float.npz[images]", "shape.npz[arr_0]", "sub/text.png", "zip.npz"
    }
    assert bad["cut.png"].startswith("truncated or corrupt image data")
    assert bad["sub/text.png"].startswith("not an image")
    assert "float32" in bad["float.npz[images]"] and "uint8" in bad["float.npz[images]"]
    assert "(2, 5, 7, 9)" in bad["shape.npz[arr_0]"]
    assert bad["zip.npz"].startswith("not a readable npz file")
    assert out.warnings == []


def test_sources_are_sorted_by_relative_path(tmp_path):
    for name in ["b/z.png", "a.png", "b/a.png", "c.png"]:
        write_png(tmp_path / name, images(1, 8, 8)[0])
    assert read_images(tmp_path).sources == ["a.png", "b/a.png", "b/z.png", "c.png"]


def test_rgb_folder_with_rgb_npz_layouts(tmp_path):
    first = images(1, 12, 10, 3)[0]
    write_png(tmp_path / "0.png", first)
    nhwc, nchw = images(2, 12, 10, 3), images(2, 12, 10, 3)
    np.savez(tmp_path / "1.npz", nhwc)
    np.savez(tmp_path / "2.npz", nchw.transpose(0, 3, 1, 2))
    out = read_images(tmp_path)
    assert out.images.shape == (5, 3, 12, 10)
    np.testing.assert_array_equal(out.images[0], first.transpose(2, 0, 1))
    np.testing.assert_array_equal(out.images[1:3], nhwc.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(out.images[3:], nchw.transpose(0, 3, 1, 2))
    assert out.warnings == [] and out.bad_files == []


def test_npz_with_several_arrays_names_each_array(tmp_path):
    np.savez(tmp_path / "x.npz", b=images(1, 8, 8), a=images(2, 8, 8))
    out = read_images(tmp_path / "x.npz")
    assert out.sources == ["x.npz[a][0]", "x.npz[a][1]", "x.npz[b][0]"]


def test_single_image_file_is_read_whatever_its_name(tmp_path):
    write_png(tmp_path / "one.png", images(1, 8, 6, 3)[0])
    (tmp_path / "one.png").rename(tmp_path / "one.data")
    out = read_images(tmp_path / "one.data")
    assert out.images.shape == (1, 3, 8, 6) and out.sources == ["one.data"]


def test_first_good_image_sets_the_shape_and_conversions_are_aggregated(tmp_path):
    write_png(tmp_path / "0.png", images(1, 8, 8)[0])  # grayscale 8 x 8 sets the target
    for i in range(3):
        write_png(tmp_path / f"{i + 1}.png", images(1, 8, 8, 3)[0])
    out = read_images(tmp_path)
    assert out.images.shape == (4, 1, 8, 8)
    assert out.warnings == [
        f"{tmp_path.name}: 3 images were RGB and were converted to grayscale (ITU-R 601-2 luma) "
        "(e.g. 1.png)"
    ]


def test_conversion_to_a_given_shape_uses_pillow_and_warns_about_resizing(tmp_path):
    root = tmp_path
    model = root / "models" / "dcgan"
    big, small = images(5, 64, 64, 3), images(2, 16, 16)
    for i, array in enumerate(big):
        write_png(model / f"big{i}.png", array)
    for i, array in enumerate(small):
        write_png(model / f"small{i}.png", array)

    out = read_images(model, shape=(3, 32, 32), root=root)

    assert out.images.shape == (7, 3, 32, 32)
    assert out.sources[0] == "models/dcgan/big0.png"
    shrunk = Image.fromarray(big[0]).resize((32, 32), Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(out.images[0], np.asarray(shrunk).transpose(2, 0, 1))
    grown = np.asarray(Image.fromarray(small[0]).resize((32, 32), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(out.images[5], np.stack([grown] * 3))
    assert out.warnings == [
        "models/dcgan: 5 images were 64 x 64 and were resized to 32 x 32; resizing can erase "
        "high-frequency artifacts (the fingerprint), so results for these images are less "
        "reliable (e.g. models/dcgan/big0.png)",
        "models/dcgan: 2 images were grayscale and were repeated to 3 channels (RGB) "
        "(e.g. models/dcgan/small0.png)",
        "models/dcgan: 2 images were 16 x 16 and were resized to 32 x 32; resizing can erase "
        "high-frequency artifacts (the fingerprint), so results for these images are less "
        "reliable (e.g. models/dcgan/small0.png)",
    ]


def test_rgb_to_grayscale_matches_pillow_luma(tmp_path):
    rgb = images(1, 8, 8, 3)[0]
    np.savez(tmp_path / "x.npz", rgb[None])
    out = read_images(tmp_path / "x.npz", shape=(1, 8, 8))
    np.testing.assert_array_equal(out.images[0, 0], np.asarray(Image.fromarray(rgb).convert("L")))


def test_decoding_notes_become_one_warning_per_kind(tmp_path):
    for i in range(4):
        write_png(tmp_path / f"{i}.png", images(1, 8, 8, 4)[0])  # RGBA
    out = read_images(tmp_path)
    assert out.images.shape == (4, 3, 8, 8)
    assert out.warnings == [f"{tmp_path.name}: alpha channel dropped (4 files, e.g. 0.png)"]


def test_pixel_limit_applies_to_files_and_arrays(tmp_path):
    write_png(tmp_path / "a.png", images(1, 20, 20)[0])
    np.savez(tmp_path / "b.npz", images(2, 20, 20))
    write_idx(tmp_path / "c-idx3-ubyte", images(2, 20, 20))
    out = read_images(tmp_path, max_pixels=100)
    assert len(out.images) == 0
    assert [f.file for f in out.bad_files] == ["a.png", "b.npz[arr_0]", "c-idx3-ubyte"]
    assert all("megapixel limit" in f.reason for f in out.bad_files)


def test_empty_folder_gives_an_empty_set(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    out = read_images(tmp_path)
    assert out.images.shape == (0, 1, 1, 1) and out.sources == [] and out.bad_files == []
    assert read_images(tmp_path, shape=(3, 8, 8)).images.shape == (0, 3, 8, 8)


def test_missing_path_and_bad_shape_argument_fail_clearly(tmp_path):
    with pytest.raises(DatasetError, match="gone"):
        read_images(tmp_path / "gone")
    with pytest.raises(ValueError, match="shape=.*C 1 or 3"):
        read_images(tmp_path, shape=(2, 8, 8))


# --- idx files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"])
def test_idx_images_plain_and_gz(tmp_path, name):
    array = images(3, 5, 7)
    write_idx(tmp_path / name, array)
    out = read_images(tmp_path / name)
    assert out.images.shape == (3, 1, 5, 7)
    np.testing.assert_array_equal(out.images[:, 0], array)
    assert out.sources == [f"{name}[0]", f"{name}[1]", f"{name}[2]"]


def test_bad_idx_files_are_listed(tmp_path):
    (tmp_path / "a-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03" + bytes(12))  # float type
    write_idx(tmp_path / "b-idx3-ubyte", images(3, 5, 7))
    data = (tmp_path / "b-idx3-ubyte").read_bytes()
    (tmp_path / "b-idx3-ubyte").write_bytes(data[:-10])
    out = read_images(tmp_path)
    bad = {f.file: f.reason for f in out.bad_files}
    assert "unsigned bytes" in bad["a-idx3-ubyte"]
    assert bad["b-idx3-ubyte"].startswith("truncated idx data")


# --- open_dataset -------------------------------------------------------------------------------

CSV = """model,family,upsampling,loss,normalization,params
dcgan,gan,transposed_conv,non_saturating,batch,3.5M
vae, vae ,nearest_conv,elbo,none,1M
"""


def make_dataset(root: Path, csv: str = CSV, models=("dcgan", "vae"), real: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "models.csv").write_text(csv)
    for name in models:
        write_png(root / "models" / name / "0.png", images(1, 8, 8)[0])
    if real:
        write_png(root / "real" / "0.png", images(1, 8, 8)[0])
    return root


def dataset_error(root: Path, **kw) -> str:
    with pytest.raises(DatasetError) as info:
        open_dataset(root, **kw)
    return str(info.value)


def test_open_dataset_reads_the_design_table(tmp_path):
    ds = open_dataset(make_dataset(tmp_path / "gm"))
    assert list(ds.design.columns) == [*REQUIRED_COLUMNS, "params"]
    assert ds.model_names() == ["dcgan", "vae"]
    assert ds.design.loc[1, "family"] == "vae"  # whitespace stripped
    assert ds.design.loc[0, "params"] == "3.5M"
    assert ds.model_dir("vae") == tmp_path / "gm" / "models" / "vae"
    assert ds.real_dir() == tmp_path / "gm" / "real"
    assert ds.warnings == []
    with pytest.raises(DatasetError, match="unknown model 'gone'.*dcgan, vae"):
        ds.model_dir("gone")


def test_required_columns_may_come_in_any_order(tmp_path):
    csv = "loss,model,normalization,upsampling,family\nhinge,dcgan,spectral,none,gan\n"
    ds = open_dataset(make_dataset(tmp_path, csv, models=("dcgan",)))
    assert list(ds.design.columns) == list(REQUIRED_COLUMNS)
    assert ds.design.iloc[0].tolist() == ["dcgan", "gan", "none", "hinge", "spectral"]


def test_csv_saved_by_a_spreadsheet_with_a_byte_order_mark(tmp_path):
    root = make_dataset(tmp_path)
    (root / "models.csv").write_bytes(b"\xef\xbb\xbf" + CSV.replace("\n", "\r\n").encode())
    assert open_dataset(root).model_names() == ["dcgan", "vae"]


def test_values_outside_the_vocabulary_are_warnings(tmp_path):
    csv = CSV.replace("non_saturating", "GAN-loss").replace(",batch,", ",Batch,")
    ds = open_dataset(make_dataset(tmp_path, csv))
    assert len(ds.warnings) == 2
    loss, norm = sorted(ds.warnings)
    assert "'dcgan'" in loss and "loss 'GAN-loss'" in loss and "non_saturating" in loss
    assert "normalization 'Batch'" in norm and "did you mean 'batch'?" in norm
    assert set(VOCABULARY) == {"family", "upsampling", "loss", "normalization"}


def test_missing_root_and_missing_csv(tmp_path):
    assert "nowhere" in dataset_error(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    assert "models.csv" in dataset_error(tmp_path / "empty")


def test_missing_required_column(tmp_path):
    csv = "model,family,upsampling,normalization\ndcgan,gan,none,batch\n"
    message = dataset_error(make_dataset(tmp_path, csv, models=("dcgan",)))
    assert message == (
        "models.csv has no column 'loss' (required: model, family, upsampling, loss, normalization)"
    )


def test_empty_and_duplicate_model_names(tmp_path):
    header = "model,family,upsampling,loss,normalization\n"
    rows = "dcgan,gan,none,hinge,batch\n ,gan,none,hinge,batch\n"
    empty = make_dataset(tmp_path / "a", header + rows, models=("dcgan",))
    assert "row 2 has an empty model name" in dataset_error(empty)
    twice = make_dataset(tmp_path / "b", header + "dcgan,gan,none,hinge,batch\n" * 2,
                         models=("dcgan",))
    assert "'dcgan' more than once" in dataset_error(twice)
    no_rows = make_dataset(tmp_path / "c", header, models=())
    assert "no models" in dataset_error(no_rows)


def test_model_folder_without_row_and_row_without_folder(tmp_path):
    extra = make_dataset(tmp_path / "a", models=("dcgan", "vae", "foo"))
    assert dataset_error(extra) == "models/foo has no row in models.csv"
    csv = CSV + "bar,gan,none,hinge,batch,\n"
    missing = make_dataset(tmp_path / "b", csv)
    assert dataset_error(missing) == "models.csv lists 'bar' but there is no folder models/bar"


def test_a_row_cannot_point_outside_models(tmp_path):
    csv = CSV + "../real,gan,none,hinge,batch,\n"
    assert "'../real'" in dataset_error(make_dataset(tmp_path, csv))


def test_real_folder_is_required_unless_told_otherwise(tmp_path):
    root = make_dataset(tmp_path, real=False)
    assert "real/" in dataset_error(root)
    ds = open_dataset(root, require_real=False)
    assert ds.real_dir() is None


# --- content_hash -------------------------------------------------------------------------------


def test_content_hash_follows_content_names_and_skips_dotfiles(tmp_path):
    root = make_dataset(tmp_path / "gm")
    first = content_hash(root)
    assert first == content_hash(root) and len(first) == 64
    (root / ".DS_Store").write_bytes(b"finder state")
    assert content_hash(root) == first  # dotfiles are not content

    image = root / "models" / "vae" / "0.png"
    data = bytearray(image.read_bytes())
    data[-1] ^= 1
    image.write_bytes(bytes(data))
    changed = content_hash(root)
    assert changed != first
    data[-1] ^= 1
    image.write_bytes(bytes(data))
    assert content_hash(root) == first

    image.rename(image.with_name("1.png"))
    assert content_hash(root) != first


def test_content_hash_of_a_file_depends_only_on_its_bytes(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"abc")
    (tmp_path / "b.bin").write_bytes(b"abc")
    (tmp_path / "c.bin").write_bytes(b"abd")
    assert content_hash(tmp_path / "a.bin") == content_hash(tmp_path / "b.bin")
    assert content_hash(tmp_path / "a.bin") != content_hash(tmp_path / "c.bin")


# --- Fashion-MNIST ------------------------------------------------------------------------------


def write_tiny_fashion_mnist(folder: Path, n: int = 3) -> np.ndarray:
    folder.mkdir(parents=True, exist_ok=True)
    pixels = RNG.integers(1, 256, (n, 28, 28), dtype=np.uint8)  # no zeros, so padding shows
    for split in ("train", "t10k"):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", pixels)
        write_idx(folder / f"{split}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8))
    return pixels


@pytest.fixture
def no_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    monkeypatch.setattr(datasets, "SYSTEM_FASHION_MNIST_DIR", tmp_path / "no-system-copy")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def test_find_fashion_mnist_honours_the_environment(no_fashion_mnist, monkeypatch):
    folder = no_fashion_mnist / "fm"
    pixels = write_tiny_fashion_mnist(folder)
    monkeypatch.setenv("FASHION_MNIST_DIR", str(folder))
    assert datasets.find_fashion_mnist() == folder
    x, y = datasets.load_fashion_mnist("test")
    assert x.shape == (3, 1, 32, 32) and x.dtype == np.uint8
    assert y.dtype == np.int64 and y.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(x[:, 0, 2:30, 2:30], pixels)
    assert x.sum() == pixels.astype(np.int64).sum()  # everything else is zero padding


def test_find_fashion_mnist_uses_the_user_cache(no_fashion_mnist):
    folder = no_fashion_mnist / "cache" / "manifpt" / "fashion-mnist"
    write_tiny_fashion_mnist(folder)
    assert datasets.find_fashion_mnist() == folder


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the XDG layout is Linux's")
def test_the_user_cache_is_xdg_cache_home_else_dot_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert datasets.fashion_mnist_cache_dir() == tmp_path / "xdg" / "manifpt" / "fashion-mnist"
    for unset in (monkeypatch.delenv, lambda name: monkeypatch.setenv(name, "")):
        unset("XDG_CACHE_HOME")
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        assert datasets.fashion_mnist_cache_dir() == tmp_path / "home" / ".cache" / "manifpt" / "fashion-mnist"


def test_an_incomplete_fashion_mnist_dir_is_an_error(no_fashion_mnist, monkeypatch):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(no_fashion_mnist))
    with pytest.raises(DatasetError, match="FASHION_MNIST_DIR=.*train-images-idx3-ubyte"):
        datasets.find_fashion_mnist()


def test_missing_fashion_mnist_says_how_to_get_it(no_fashion_mnist):
    with pytest.raises(DatasetError) as info:
        datasets.find_fashion_mnist()
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "FASHION_MNIST_DIR" in message
    assert "python -m fingerprint_core.datasets download" in message


def test_load_fashion_mnist_rejects_unknown_split():
    with pytest.raises(ValueError, match="split='val'"):
        datasets.load_fashion_mnist("val")


def _real_fashion_mnist_present() -> bool:
    try:
        datasets.find_fashion_mnist()
    except DatasetError:
        return False
    return True


@pytest.mark.skipif(not _real_fashion_mnist_present(), reason="Fashion-MNIST is not installed")
def test_real_fashion_mnist_is_padded_to_32():
    x, y = datasets.load_fashion_mnist("train")
    assert x.shape == (60000, 1, 32, 32) and x.dtype == np.uint8
    assert y.shape == (60000,) and y.dtype == np.int64 and set(np.unique(y)) == set(range(10))
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert x[:, 0][:, border].max() == 0
    assert x[:, 0, 2:30, 2:30].max() == 255
    assert len(datasets.FASHION_MNIST_CLASSES) == 10
    assert datasets.load_fashion_mnist("test")[0].shape == (10000, 1, 32, 32)
