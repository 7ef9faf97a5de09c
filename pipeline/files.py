"""Picture files and atomic writes: the one place dreamreel reads and writes pictures.

Every array here is RGB ``uint8`` of shape (H, W, 3); OpenCV's BGR order never
leaves this module.

Writes are atomic: the bytes go to a hidden temporary file beside the target,
which is then renamed over it, so a reader never sees a half-written file and
a crash leaves any earlier file intact. Temporary files are created with the
usual mode of a new file (0o666 less the umask), so a finished output is
readable by whoever could read any other file the user makes (not only its
owner, as :func:`tempfile.mkstemp`'s 0o600 would leave it).

Frame files (a frames-folder output, a work folder) are named
``frame_000000.png``, ``frame_000001.png``, ...: the number is the frame's
index counting from 0, the same ``t`` as in schedules and progress.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

# Picture formats load_image reads and save_image writes, by suffix (OpenCV
# picks the encoder from it).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

# Work-folder PNGs (frames a job keeps for its resume): zlib level 1 with
# run-length matches only. PNG's row filters leave runs, which RLE finds,
# while dreamed detail leaves longer matches little to find: on dreamed
# frames it writes about 1.7x faster than plain level 1 at the same size
# (docs/performance.md, other figures).
WORK_PNG_PARAMS = (cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE)

# Name of frame ``t`` (counting from 0) in a frames folder or a work folder.
FRAME_NAME = "frame_{:06d}.png"
FRAME_GLOB = "frame_[0-9]*.png"


# --- checks ----------------------------------------------------------------------


def describe(value: object) -> str:
    """What an argument is, for error messages: "float32 array of shape (4, 4)"."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    shape = getattr(value, "shape", None)  # a torch tensor, without importing torch here
    if shape is not None and hasattr(value, "dtype"):
        return f"{value.dtype} tensor of shape {tuple(shape)}"
    return type(value).__name__


def check_rgb(image: object, name: str) -> None:
    """Raise ValueError unless ``image`` is an (H, W, 3) uint8 array; the message names ``name``."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must be an RGB uint8 array of shape (H, W, 3), got {describe(image)}")


def check_input_file(path: Path, kind: str) -> None:
    """Raise ValueError unless ``path`` is an existing, non-empty file (``kind``: "picture", "video")."""
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; expected a {kind} file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: file is empty (0 bytes); expected a {kind} file")


def check_output_folder(folder: Path) -> None:
    """Raise ValueError unless ``folder`` exists and this process may create files in it."""
    if not folder.is_dir():
        raise ValueError(f"{folder}: output folder does not exist; create it first (mkdir -p {folder})")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{folder}: output folder is not writable; choose another folder or fix its permissions")


def check_not_an_input(output: Path, inputs: Mapping[str, str | Path | None]) -> None:
    """Raise ValueError if writing ``output`` would overwrite one of ``inputs``.

    Args:
        output: the output path.
        inputs: what each input is called in messages (``"input"``, ``"--audio"``) → its path, or None.
    """
    for name, source in inputs.items():
        if source is not None and output.exists() and Path(source).exists() and os.path.samefile(output, source):
            raise ValueError(f"OUTPUT {output} is the {name} file; choose another name so the {name} file is kept")


# --- atomic writes -------------------------------------------------------------------


def temp_path(beside: Path, suffix: str) -> Path:
    """Create a new, empty, hidden file beside ``beside`` and return its path.

    Its name starts with ``.NAME.`` and ends in ``suffix`` (keep the real
    suffix last where a tool picks the format from it, as ffmpeg does). Its
    mode is that of any new file (0o666 less the umask), so renaming it onto
    an output gives the output the usual mode.
    """
    while True:
        path = beside.with_name(f".{beside.name}.{secrets.token_hex(4)}{suffix}")
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            continue


def remove_temps(folder: Path, name: str | None = None) -> None:
    """Delete the temporary files :func:`temp_path` made in ``folder`` (beside ``name`` only, if given).

    A process killed outright (SIGKILL, a power cut) cannot remove its
    temporary files; whoever owns the folder or the output next (a resumed
    render, holding the job's lock) removes them with this.
    """
    pattern = re.compile(rf"\.{re.escape(name) if name else '.+'}\.[0-9a-f]{{8}}(\..*)?")  # temp_path's names
    if folder.is_dir():
        for path in folder.iterdir():
            if pattern.fullmatch(path.name) and path.is_file():
                path.unlink(missing_ok=True)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it to ``path``.

    Raises:
        OSError: the write or the rename failed (disk full, permissions);
            ``path`` is untouched and no temporary file is left.
    """
    tmp = temp_path(path, ".partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- pictures ----------------------------------------------------------------------


def load_image(path: str | Path) -> np.ndarray:
    """Read a picture file as RGB.

    Grey pictures are expanded to three channels and an alpha channel is
    dropped (transparent pixels keep whatever colour they store). A JPEG's
    EXIF orientation is applied, so phone photos come out upright.

    Args:
        path: any format OpenCV reads (PNG, JPEG, WebP, TIFF, BMP, ...).

    Returns:
        (H, W, 3) RGB uint8.

    Raises:
        ValueError: the file is missing, is a folder, or is not a picture.
    """
    path = Path(path)
    check_input_file(path, "picture")
    # imdecode on the bytes, rather than imread on the name, because imread
    # cannot open non-ASCII paths on Windows.
    data = np.fromfile(path, dtype=np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise ValueError(f"{path}: not a picture OpenCV can read (expected PNG, JPEG, WebP, TIFF or BMP)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def save_image(path: str | Path, rgb: np.ndarray, *, work: bool = False) -> None:
    """Write an RGB picture atomically; the format comes from the suffix.

    Args:
        path: ends in one of ``IMAGE_SUFFIXES``.
        rgb: (H, W, 3) RGB uint8.
        work: a PNG a job keeps in its work folder: written with
            :data:`WORK_PNG_PARAMS`, for speed; lossless like any PNG.

    Raises:
        ValueError: unknown suffix, a folder that does not exist or is not
            writable, or ``rgb`` not (H, W, 3) uint8.
        OSError: the write failed; ``path`` is untouched.
    """
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"{path}: cannot save a picture as {path.suffix or 'no suffix'!r}; use one of {', '.join(IMAGE_SUFFIXES)}")
    check_rgb(rgb, "rgb")
    check_output_folder(path.parent)
    params = WORK_PNG_PARAMS if work and path.suffix.lower() == ".png" else ()
    ok, encoded = cv2.imencode(path.suffix.lower(), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"{path}: OpenCV could not encode a {rgb.shape[1]}x{rgb.shape[0]} picture as {path.suffix}")
    write_atomically(path, encoded.tobytes())


# --- frame files -------------------------------------------------------------------


def frame_path(folder: Path, index: int) -> Path:
    """``folder/frame_NNNNNN.png`` of frame ``index`` (counting from 0)."""
    return folder / FRAME_NAME.format(index)


def frame_indices(folder: Path) -> set[int]:
    """Indices of the frame files in ``folder`` (none if it does not exist)."""
    return {int(p.stem.removeprefix("frame_")) for p in folder.glob(FRAME_GLOB)}
