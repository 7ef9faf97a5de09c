"""files: pictures in and out, atomic writes with the usual mode, the one RGB check, frame names."""

from __future__ import annotations

import errno
import os

import cv2
import numpy as np
import pytest

from dreamreel.pipeline.files import (
    IMAGE_SUFFIXES,
    check_rgb,
    frame_indices,
    frame_path,
    load_image,
    save_image,
    temp_path,
    write_atomically,
)

LOSSY = (".jpg", ".jpeg")


def test_png_round_trip_is_exact_and_leaves_no_temp_file(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    save_image(tmp_path / "a.png", rgb)
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), rgb)
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_work_png_is_lossless_and_run_length_coded(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    flat = np.full((64, 96, 3), 90, np.uint8)
    for name, rgb in (("noise", noise), ("flat", flat)):
        save_image(tmp_path / f"{name}.png", rgb, work=True)
        np.testing.assert_array_equal(load_image(tmp_path / f"{name}.png"), rgb)
    # run-length matching still shrinks what repeats: a flat picture is a few hundred bytes, not 18 kB
    assert (tmp_path / "flat.png").stat().st_size < 0.05 * flat.nbytes < (tmp_path / "noise.png").stat().st_size


@pytest.mark.parametrize("suffix", IMAGE_SUFFIXES)
def test_every_suffix_that_is_accepted_is_saved_in_rgb_order(tmp_path, suffix):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 255  # pure red: a swapped channel order would read back blue
    rgb[4:8, 4:8] = (10, 200, 30)
    save_image(tmp_path / f"a{suffix.upper()}", rgb)
    back = load_image(tmp_path / f"a{suffix.upper()}")
    if suffix in LOSSY:
        assert back[12:, 12:, 0].min() > 200 and back[12:, 12:, 2].max() < 60
    else:
        np.testing.assert_array_equal(back, rgb)


def test_grey_and_alpha_pictures_load_as_rgb(tmp_path):
    cv2.imwrite(str(tmp_path / "grey.png"), np.full((4, 6), 77, np.uint8))
    cv2.imwrite(str(tmp_path / "bgra.png"), np.full((4, 6, 4), (10, 20, 30, 0), np.uint8))
    np.testing.assert_array_equal(load_image(tmp_path / "grey.png"), np.full((4, 6, 3), 77, np.uint8))
    np.testing.assert_array_equal(load_image(tmp_path / "bgra.png"), np.full((4, 6, 3), (30, 20, 10), np.uint8))


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image  # Pillow comes with imageio; OpenCV cannot write EXIF

    picture = Image.fromarray(np.zeros((20, 40, 3), np.uint8))  # stored landscape
    exif = picture.getexif()
    exif[0x0112] = 6  # Orientation: turn 90 degrees clockwise to display
    picture.save(tmp_path / "phone.jpg", exif=exif)
    assert load_image(tmp_path / "phone.jpg").shape == (40, 20, 3)


def test_load_image_rejects_what_is_not_a_picture(tmp_path):
    (tmp_path / "notes.png").write_text("not a picture")
    (tmp_path / "empty.png").write_bytes(b"")
    for path, message in [
        (tmp_path / "missing.png", "no such file"),
        (tmp_path, "is a folder"),
        (tmp_path / "empty.png", "file is empty"),
        (tmp_path / "notes.png", "not a picture"),
    ]:
        with pytest.raises(ValueError, match=message) as err:
            load_image(path)
        assert str(path) in str(err.value)


def test_save_image_rejects_bad_folder_suffix_and_array(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="does not exist"):
        save_image(tmp_path / "no_such_dir" / "a.png", rgb)
    with pytest.raises(ValueError, match=r"\.tga"):
        save_image(tmp_path / "a.tga", rgb)
    with pytest.raises(ValueError, match=r"rgb must be an RGB uint8 array of shape \(H, W, 3\), got uint8 array of shape \(4, 4\)"):
        save_image(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "value, got",
    [
        (np.zeros((4, 4, 3), np.float32), "float32 array of shape (4, 4, 3)"),
        (np.zeros((4, 4, 4), np.uint8), "uint8 array of shape (4, 4, 4)"),
        ([[0, 0, 0]], "list"),
    ],
)
def test_check_rgb_names_the_argument_and_what_came(value, got):
    check_rgb(np.zeros((2, 3, 3), np.uint8), "frame")  # fine
    with pytest.raises(ValueError) as err:
        check_rgb(value, "frame")
    assert str(err.value) == f"frame must be an RGB uint8 array of shape (H, W, 3), got {got}"


# --- atomic writes and their mode ------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_give_the_usual_mode_of_a_new_file(tmp_path, umask):
    # A temporary file renamed onto the target used to keep mkstemp's 0o600.
    previous = os.umask(umask)
    try:
        write_atomically(tmp_path / "a.bin", b"data")
        save_image(tmp_path / "a.png", np.zeros((2, 2, 3), np.uint8))
        made = temp_path(tmp_path / "b.mp4", ".partial.mp4")
    finally:
        os.umask(previous)
    for path in (tmp_path / "a.bin", tmp_path / "a.png", made):
        assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~umask), path.name
    assert made.name.startswith(".b.mp4.") and made.name.endswith(".partial.mp4") and made.stat().st_size == 0


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    write_atomically(tmp_path / "a.bin", b"old")

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match="No space left"):
        write_atomically(tmp_path / "a.bin", b"new")
    assert (tmp_path / "a.bin").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_temporary_names_never_collide(tmp_path):
    names = {temp_path(tmp_path / "out.mp4", ".partial").name for _ in range(200)}
    assert len(names) == 200 and len(list(tmp_path.iterdir())) == 200


# --- frame files ------------------------------------------------------------------------


def test_frame_files_are_numbered_from_0_and_listed_back(tmp_path):
    assert frame_path(tmp_path, 0).name == "frame_000000.png"
    assert frame_path(tmp_path, 123).name == "frame_000123.png"
    for t in (0, 1, 5):
        save_image(frame_path(tmp_path, t), np.zeros((2, 2, 3), np.uint8))
    (tmp_path / ".frame_000007.png.1234.partial").write_bytes(b"")  # a write cut short
    (tmp_path / "notes.txt").write_text("")
    assert frame_indices(tmp_path) == {0, 1, 5}
    assert frame_indices(tmp_path / "missing") == set()
