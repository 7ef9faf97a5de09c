"""The benchmark's generated clip: a fixed picture seen through a window that pans.

Deterministic for a seed, with detail for the network and edges for the flow.
Heavy modules (OpenCV) are imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path

# The window pans right and down by this many pixels per frame (real motion for the flow stage).
PAN_PX_PER_FRAME = (3, 1)
CLIP_FPS = 24
CLIP_SEED = 0


def pan_texture(size: tuple[int, int], frames: int, seed: int = CLIP_SEED):
    """The picture a pan of ``frames`` frames of ``size`` = (width, height) looks at.

    Smooth coloured noise at three scales plus soft-edged discs: detail for the
    network and edges for the flow. Deterministic for a given seed.

    Returns:
        (H, W, 3) uint8, large enough for :func:`pan_frame` up to ``frames - 1``.
    """
    import cv2
    import numpy as np

    width = size[0] + PAN_PX_PER_FRAME[0] * (frames - 1)
    height = size[1] + PAN_PX_PER_FRAME[1] * (frames - 1)
    rng = np.random.default_rng(seed)
    picture = np.zeros((height, width, 3), np.float32)
    for cell_px, weight in ((96, 0.55), (24, 0.3), (6, 0.15)):
        grid = rng.random((height // cell_px + 2, width // cell_px + 2, 3), dtype=np.float32)
        picture += weight * cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    picture = (picture * 255).clip(0, 255).astype(np.uint8)
    for _ in range(max(8, width * height // 6000)):
        centre = (int(rng.integers(width)), int(rng.integers(height)))
        radius = int(rng.integers(4, max(5, min(width, height) // 6)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.circle(picture, centre, radius, colour, thickness=-1, lineType=cv2.LINE_AA)
    return cv2.GaussianBlur(picture, (3, 3), 0.7)


def pan_frame(texture, size: tuple[int, int], index: int):
    """Frame ``index`` of the pan over ``texture``: an (H, W, 3) uint8 view."""
    x0, y0 = PAN_PX_PER_FRAME[0] * index, PAN_PX_PER_FRAME[1] * index
    return texture[y0 : y0 + size[1], x0 : x0 + size[0]]


def write_pan_clip(path: Path, texture, size: tuple[int, int], frames: int) -> Path:
    """Encode the first ``frames`` frames of the pan as a silent, near-lossless H.264 file (x264)."""
    from dreamreel.pipeline.encode import EncodeSettings, FrameWriter

    settings = EncodeSettings(crf=16, codec="libx264", speed="veryfast", keep_audio=False)
    with FrameWriter(path, fps=CLIP_FPS, size=size, settings=settings) as writer:
        for index in range(frames):
            writer.write(pan_frame(texture, size, index))
    return path
