"""Reading videos as RGB uint8 frames (pictures are :mod:`files`' business).

Every array here is RGB ``uint8`` of shape (H, W, 3); OpenCV's BGR order never
leaves this module. Videos are streamed one frame at a time, so memory stays
at a few frames whatever the length.

Facts about a video come from two readers that are each right about
different things: ``ffmpeg -i`` (via :mod:`ffmpeg`) knows the container,
streams, duration and rotation; OpenCV's ``VideoCapture`` decodes the frames
and knows the frame rate and the frame count the container announces.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from . import ffmpeg
from .files import check_input_file

# Frame rates are stored as exact fractions. OpenCV reports a float, and the
# NTSC family (24000/1001, 30000/1001, 60000/1001) is the only common case
# that is not a whole number, so 1001 is the largest denominator needed.
FPS_MAX_DENOMINATOR = 1001

# Smallest --max-side accepted: the networks' first layers need some pixels.
MIN_MAX_SIDE = 16

# A video that ends this much before its announced frame count is reported
# as truncated. Less is normal: MP4 and MOV announce an exact count, but for
# Matroska and WebM OpenCV derives it from the container's duration, which
# includes an audio track running on past the last frame (by up to an audio
# packet, ~0.1 s, even in files dreamreel writes).
TRUNCATION_TOLERANCE_S = 0.5

# cv2.rotate code that turns a decoded frame upright, by counter-clockwise
# display rotation in degrees (the sense ffmpeg reports).
_UPRIGHT = {
    90: cv2.ROTATE_90_COUNTERCLOCKWISE,
    180: cv2.ROTATE_180,
    270: cv2.ROTATE_90_CLOCKWISE,
}


# --- videos ------------------------------------------------------------------


@dataclass(frozen=True)
class VideoInfo:
    """What a video holds, as read before decoding it.

    Attributes:
        path: the file.
        width: frame width in pixels as displayed (after rotation, before
            any ``max_side`` scaling).
        height: frame height in pixels, likewise.
        fps: frames per second, exact (``Fraction(30000, 1001)`` for NTSC).
        frame_count_estimate: frames the container announces, or None when it
            does not say. Only an estimate: a damaged file holds fewer, so
            loops run until decoding stops, never to this number.
        duration_s: container duration in seconds, or None when unknown.
        rotation_deg: counter-clockwise display rotation (0, 90, 180, 270)
            that :func:`read_frames` applies; a phone video shot upright has 90
            or 270.
        has_audio: the file has at least one audio stream.
        audio_channels: channel layout of the first audio stream ("stereo",
            "5.1"), or None.
    """

    path: Path
    width: int
    height: int
    fps: Fraction
    frame_count_estimate: int | None
    duration_s: float | None
    rotation_deg: int
    has_audio: bool
    audio_channels: str | None


def probe_video(path: str | Path) -> VideoInfo:
    """Check that ``path`` is a video with a decodable frame, and describe it.

    The first frame is decoded, so a file whose header is intact but whose
    frames are not is caught here rather than halfway through a run.

    Raises:
        ValueError: the file is missing, a folder, empty, not media, audio
            only, a still picture, or has no decodable frame.
    """
    path = Path(path)
    check_input_file(path, "video")
    media = ffmpeg.probe(path)
    if media.is_still_image:
        raise ValueError(f"{path}: is an image, not a video; dream it with `dreamreel image`")
    if not media.has_video:
        what = "only audio" if media.has_audio else "no streams ffmpeg can use"
        raise ValueError(f"{path}: has no video stream ({what}); expected a video file")
    capture = _open_capture(path)
    try:
        fps = capture.get(cv2.CAP_PROP_FPS)
        if not math.isfinite(fps) or fps <= 0:
            raise ValueError(
                f"{path}: OpenCV reads no frame rate from this file; "
                f"re-encode it with a fixed rate, e.g. ffmpeg -i {path.name} -r 30 fixed.mp4"
            )
        # 0 or -1 (or NaN from some builds) when the container does not say.
        count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        ok, frame = capture.read()
        if not ok:
            raise ValueError(f"{path}: has a video stream but not one frame decodes; the file is damaged")
    finally:
        capture.release()
    rotation = _quarter_turns(media.rotation_deg) * 90
    height, width = _upright(frame, rotation).shape[:2]
    return VideoInfo(
        path=path,
        width=width,
        height=height,
        fps=Fraction(fps).limit_denominator(FPS_MAX_DENOMINATOR),
        frame_count_estimate=int(count) if math.isfinite(count) and count > 0 else None,
        duration_s=media.duration_s,
        rotation_deg=rotation,
        has_audio=media.has_audio,
        audio_channels=media.audio_channels,
    )


def check_clip_options(
    *, start_s: float = 0.0, end_s: float | None = None, max_frames: int | None = None, max_side: int | None = None
) -> None:
    """Raise ValueError naming the flag for a bad ``--start``, ``--end``, ``--max-frames`` or ``--max-side``.

    The checks :func:`read_frames` makes before it opens the file; callers
    make them too before work that would be wasted on a refusal.
    """
    if not (math.isfinite(start_s) and start_s >= 0):  # also refuses NaN
        raise ValueError(f"--start {start_s}: expected a finite number of seconds >= 0")
    if end_s is not None and not (math.isfinite(end_s) and end_s > start_s):
        raise ValueError(
            f"--end {end_s}: expected a finite number of seconds after --start ({start_s}); leave --end out to read to the end"
        )
    if max_frames is not None and not (isinstance(max_frames, numbers.Integral) and max_frames >= 1):
        raise ValueError(f"--max-frames {max_frames}: expected a whole number >= 1")
    _check_max_side(max_side)


def _check_max_side(max_side: int | None) -> None:
    if max_side is not None and not (isinstance(max_side, numbers.Integral) and max_side >= MIN_MAX_SIDE):
        raise ValueError(f"--max-side {max_side}: expected a whole number of pixels >= {MIN_MAX_SIDE}")


def output_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """Frame size (width, height) that :func:`read_frames` yields for ``max_side``.

    A frame whose longest side exceeds ``max_side`` is shrunk, keeping its
    aspect ratio, to a longest side of ``max_side`` (one less when that is
    odd) and both sides even, as yuv420p video needs. A frame that already
    fits is left as it is (never enlarged, odd sizes kept).

    Example:
        >>> output_size(1920, 1080, 500)
        (500, 282)

    Raises:
        ValueError: ``max_side`` below ``MIN_MAX_SIDE`` (naming ``--max-side``).
    """
    _check_max_side(max_side)
    longest = max(width, height)
    if max_side is None or longest <= max_side:
        return width, height
    new_longest = max_side // 2 * 2
    scale = new_longest / longest

    def even(side: int) -> int:
        return max(2, round(side * scale / 2) * 2)

    return (new_longest, even(height)) if width >= height else (even(width), new_longest)


def read_frames(
    path: str | Path,
    *,
    start_s: float = 0.0,
    end_s: float | None = None,
    max_frames: int | None = None,
    max_side: int | None = None,
    skip: int = 0,
) -> Iterator[np.ndarray]:
    """Stream a video's frames, upright, as RGB arrays.

    The file and the options are checked now; frames are decoded as the
    iterator is consumed. The first frame is number ``round(start_s * fps)``
    and the last is the one before ``round(end_s * fps)``. The first frame
    is reached by seeking (:func:`_seek`), so a reader that starts late in a
    long video (a lane, a resumed run) does not decode everything before it.

    If the file ends clearly before the frame count its container announces
    (a truncated download; see ``TRUNCATION_TOLERANCE_S``), a warning names
    the frame where decoding stopped, and the frames that did decode are
    still yielded.

    Args:
        path: a video file.
        start_s: first second to read (``--start``); a Fraction such as
            ``index / info.fps`` lands exactly on frame ``index``.
        end_s: second to stop before (``--end``); None reads to the end.
        max_frames: most frames to yield (``--max-frames``); None for all.
        max_side: shrink frames so the longest side is at most this many
            pixels (``--max-side``), see :func:`output_size`; None keeps the
            size.
        skip: start this many frames after the clip's first frame (a lane
            or a resumed run part-way into the clip). The clip's frames are
            counted by index from its first frame, so ``skip=k`` yields
            exactly the clip's frames k, k+1, ... (no seconds rounded again),
            and `max_frames` still counts from the clip's first frame.

    Yields:
        (H, W, 3) RGB uint8 frames, all the same size.

    Raises:
        ValueError: a bad option (naming its flag), a file :func:`probe_video`
            rejects, or ``--start`` at or past the end of the video (raised
            by the iterator when the real frame count falls short).
    """
    check_clip_options(start_s=start_s, end_s=end_s, max_frames=max_frames, max_side=max_side)
    if not (isinstance(skip, numbers.Integral) and skip >= 0):
        raise ValueError(f"skip {skip}: expected a whole number of frames >= 0")
    info = probe_video(path)
    if info.duration_s is not None and start_s >= info.duration_s:
        raise ValueError(
            f"--start {start_s}: {info.path} is only {info.duration_s:.3f} s long; choose a start before its end"
        )
    first = round(start_s * info.fps)
    stop = round(end_s * info.fps) if end_s is not None else None
    if stop is not None and stop <= first:
        raise ValueError(
            f"--end {end_s}: falls in the same frame as --start {start_s} "
            f"(one frame lasts {float(1 / info.fps):.4f} s at {float(info.fps):.3f} fps)"
        )
    if max_frames is not None:
        stop = min(stop, first + max_frames) if stop is not None else first + max_frames
    return _stream(info, first + skip, stop, output_size(info.width, info.height, max_side))


def _stream(info: VideoInfo, first: int, stop: int | None, size: tuple[int, int]) -> Iterator[np.ndarray]:
    """Frames ``first`` (inclusive) to ``stop`` (exclusive, None = end), upright and resized to ``size``."""
    capture = _open_capture(info.path)
    try:
        _seek(capture, first)
        index = first
        while stop is None or index < stop:
            ok, bgr = capture.read()
            if not ok and index == first > 0:
                raise ValueError(f"--start: frame {first} was asked for, but {info.path} ends before it")
            if not ok:
                missing = (info.frame_count_estimate or 0) - index
                if missing > TRUNCATION_TOLERANCE_S * info.fps:
                    warnings.warn(
                        f"{info.path}: decoding stopped at frame {index}, but the file announces "
                        f"about {info.frame_count_estimate}; it may be truncated or damaged. "
                        f"The {index - first} frames read are used.",
                        stacklevel=2,
                    )
                return
            frame = cv2.cvtColor(_upright(bgr, info.rotation_deg), cv2.COLOR_BGR2RGB)
            if (frame.shape[1], frame.shape[0]) != size:
                frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
            yield frame
            index += 1
    finally:
        capture.release()


def _seek(capture: cv2.VideoCapture, index: int) -> None:
    """Make frame ``index`` the next one ``capture`` reads.

    OpenCV's FFmpeg backend seeks to the keyframe before the frame, then
    decodes forward to it by timestamp: exact for constant-rate video (the
    tests compare it with decoding from the start for MP4, Matroska and WebM
    with B-frames). Where the backend refuses to seek, frames are decoded and
    dropped. Past the end, the next read fails.
    """
    if index == 0 or capture.set(cv2.CAP_PROP_POS_FRAMES, index):
        return
    for _ in range(index):
        if not capture.grab():
            return


def _open_capture(path: Path) -> cv2.VideoCapture:
    """A VideoCapture on ``path`` that yields frames as stored, without rotating them.

    OpenCV can apply the rotation itself (CAP_PROP_ORIENTATION_AUTO), but
    whether it does by default has changed between releases, so it is turned
    off and :func:`_upright` applies the angle ffmpeg reports: one rule
    whichever OpenCV is installed. A backend that does not know the property
    does not rotate either, so the ``set`` result needs no check.
    """
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        capture.release()
        raise ValueError(f"{path}: OpenCV cannot open this video (its FFmpeg backend rejected the file)")
    capture.set(cv2.CAP_PROP_ORIENTATION_AUTO, 0)
    return capture


def _quarter_turns(rotation_deg: int) -> int:
    """Nearest number of quarter turns (0-3) to a display rotation in degrees."""
    return round(rotation_deg / 90) % 4


def _upright(frame: np.ndarray, rotation_deg: int) -> np.ndarray:
    """Turn a decoded frame counter-clockwise by ``rotation_deg`` (a multiple of 90)."""
    code = _UPRIGHT.get(rotation_deg)
    return frame if code is None else cv2.rotate(frame, code)
