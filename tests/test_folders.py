"""A folder of the user's own digits (digitlab.folders, `digitlab data --dataset folder:PATH`)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from digitlab import preprocessing as pp
from digitlab.cli import main
from digitlab.errors import DataError
from digitlab.folders import read_digit_folder, write_digit_folder


def draw_one(path, width=18):
    im = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(im).line([(100, 30), (100, 170)], fill=0, width=width)
    im.save(path)


def make_folder(root):
    (root / "1").mkdir(parents=True)
    (root / "7").mkdir()
    draw_one(root / "1" / "a.png")
    draw_one(root / "1" / "b.jpg", width=10)
    im = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(im).line([(30, 30), (170, 30), (90, 170)], fill=0, width=16)
    im.save(root / "7" / "seven.png")
    (root / "7" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    Image.new("L", (50, 50), 255).save(root / "7" / "blank.png")  # no ink
    (root / "7" / "notes.txt").write_text("not a digit")
    (root / "extra").mkdir()  # not a class folder: ignored
    draw_one(root / "extra" / "x.png")


def test_reads_class_folders_through_mnist_preprocessing_and_skips_bad_files(tmp_path):
    make_folder(tmp_path)
    digits = read_digit_folder(tmp_path)
    assert digits.files == ["1/a.png", "1/b.jpg", "7/seven.png"] and list(digits.y) == [1, 1, 7]
    assert digits.x.shape == (3, 28, 28) and digits.x.dtype == np.float32
    assert np.allclose(digits.x[0], pp.to_mnist(pp.read_image_file(tmp_path / "1" / "a.png")))
    bad = dict(digits.bad)
    assert set(bad) == {"7/broken.png", "7/blank.png", "7/notes.txt"}
    assert "ink" in bad["7/blank.png"].lower() or "blank" in bad["7/blank.png"].lower()


def test_refuses_a_folder_without_class_folders_or_digits(tmp_path):
    with pytest.raises(DataError, match="no subfolders named 0"):
        read_digit_folder(tmp_path)
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "bad.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="no readable digit image.*3/bad.png"):
        read_digit_folder(tmp_path)
    with pytest.raises(DataError, match="is not a folder"):
        read_digit_folder(tmp_path / "missing")


def test_written_folder_reads_back(tmp_path):
    x = np.zeros((2, 28, 28), np.float32)
    x[0, 4:24, 13:15] = 1.0
    x[1, 4:24, 8:20] = 1.0
    write_digit_folder(tmp_path, x, np.array([1, 8]))
    digits = read_digit_folder(tmp_path)
    assert list(digits.y) == [1, 8] and not digits.bad
    assert np.array_equal(digits.x, x)  # MNIST-style digits are taken as they are: export, read, same pixels


def test_cli_data_reads_a_folder_and_names_bad_files(tmp_path, capsys):
    make_folder(tmp_path / "mine")
    assert main(["data", "--dataset", f"folder:{tmp_path / 'mine'}", "--out", str(tmp_path / "grid.png")]) == 0
    out = capsys.readouterr().out
    assert "3 read, 3 skipped" in out and "skipped: 7/broken.png" in out
    assert (tmp_path / "grid.png").stat().st_size > 0
    assert main(["data", "--dataset", "nonsense"]) == 2
