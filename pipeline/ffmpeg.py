"""Running the ffmpeg binary that imageio-ffmpeg ships, and reading what it says.

imageio-ffmpeg brings ffmpeg but not ffprobe, so stream facts (duration, audio
channels, rotation) are parsed from the banner that ``ffmpeg -i FILE`` prints.
Every call uses an explicit argument list (no shell), and a failure raises
:class:`FFmpegError` carrying the tail of ffmpeg's own message.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# The last lines of ffmpeg's stderr name the actual problem; more is noise.
ERROR_TAIL_LINES = 4
# Listing the encoders and a one-frame trial encode each take milliseconds;
# this only stops a hung driver from hanging the caller.
PROBE_TIMEOUT_S = 30
TRIAL_SIZE = (256, 144)  # (width, height) of the trial frame: above NVENC's minimum size
_ENCODER_LINE = re.compile(r"^ V\S{5} (\S+)", re.MULTILINE)
_LOG_PREFIX = re.compile(r"^(\[[^\]]*\] *)+")  # "[h264_nvenc @ 0x55d2] " before a log line


class FFmpegError(RuntimeError):
    """ffmpeg exited with an error; the message ends with what ffmpeg said."""


@lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def run_ffmpeg(args: list[str], *, what: str, stdout=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    """Run ``ffmpeg -hide_banner -nostdin -y ARGS``.

    Args:
        args: arguments after the global options.
        what: a few words for the error message ("muxing audio into out.mp4").
        stdout: where ffmpeg's stdout goes (``subprocess.PIPE`` to read raw data).

    Raises:
        FFmpegError: ffmpeg exited non-zero; the message ends with its last lines.
    """
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", *args]
    proc = subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise FFmpegError(f"ffmpeg failed {what}: {stderr_tail(proc.stderr)}")
    return proc


@lru_cache(maxsize=8)
def encoders(exe: str) -> frozenset[str]:
    """Names of the video encoders the ffmpeg binary ``exe`` was built with (``ffmpeg -encoders``).

    A listed encoder may still be unusable: NVENC is listed by most builds and
    needs an NVIDIA GPU and driver at run time (see :func:`encoder_problem`).
    """
    proc = subprocess.run([exe, "-hide_banner", "-nostdin", "-encoders"], capture_output=True, timeout=PROBE_TIMEOUT_S)
    # Lines read " V....D libx264   libx264 H.264 / AVC ...": flags (V = video), then the name.
    return frozenset(m[1] for m in _ENCODER_LINE.finditer(proc.stdout.decode("utf-8", "replace")))


@lru_cache(maxsize=8)
def encoder_problem(exe: str, encoder: str) -> str | None:
    """Why ``encoder`` cannot encode here, or None when a one-frame trial encode works.

    The trial encodes one black frame of ``TRIAL_SIZE`` to nothing (``-f null``),
    which fails in a few milliseconds where, say, NVENC has no GPU or driver.
    """
    if encoder not in encoders(exe):
        return f"this ffmpeg ({exe}) has no {encoder} encoder"
    width, height = TRIAL_SIZE
    cmd = [
        exe, "-hide_banner", "-nostdin", "-loglevel", "error", "-f", "lavfi",
        "-i", f"color=c=black:s={width}x{height}:r=1", "-frames:v", "1", "-c:v", encoder, "-f", "null", "-",
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"a one-frame trial encode with {encoder} took over {PROBE_TIMEOUT_S} s"
    if proc.returncode == 0:
        return None
    first = _lines(proc.stderr)[:1] or ["(no message)"]
    return _LOG_PREFIX.sub("", first[0])  # "[h264_nvenc @ 0x5594] Cannot load libcuda.so.1" → the cause


def stderr_tail(stderr: bytes) -> str:
    """The last few non-empty lines of ffmpeg's stderr, joined on one line."""
    return " | ".join(_lines(stderr)[-ERROR_TAIL_LINES:]) or "(no message)"


def stderr_head(stderr: bytes) -> str:
    """The first few non-empty lines of ffmpeg's stderr, joined on one line.

    For a run with ``-loglevel error`` these name the cause: from ffmpeg 7 on,
    the first error is followed by lines about each thread stopping.
    """
    return " | ".join(_lines(stderr)[:ERROR_TAIL_LINES]) or "(no message)"


def _lines(stderr: bytes) -> list[str]:
    return [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]


@dataclass(frozen=True)
class MediaInfo:
    """What ``ffmpeg -i`` says about a file.

    Attributes:
        duration_s: container duration in seconds, or None when unknown.
        has_video: a video stream that is not a still cover picture.
        has_audio: at least one audio stream.
        audio_codec: codec name of the first audio stream ("aac"), or None.
        audio_channels: channel layout of the first audio stream ("stereo", "5.1").
        rotation_deg: display rotation of the video stream, counter-clockwise
            (a player turns the decoded picture this far to show it upright).
        container: the demuxer names ffmpeg reports ("mov,mp4,m4a,3gp,3g2,mj2",
            "png_pipe"); empty when the banner has none.
    """

    duration_s: float | None
    has_video: bool
    has_audio: bool
    audio_codec: str | None
    audio_channels: str | None
    rotation_deg: int
    container: str = ""

    @property
    def is_still_image(self) -> bool:
        """True for a picture file (PNG, JPEG, ...): ffmpeg reads those with
        its image demuxers, ``image2`` and the ``*_pipe`` family."""
        return self.container == "image2" or self.container.endswith("_pipe")


_INPUT = re.compile(r"Input #0, (.+?), from ")
_DURATION = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_AUDIO = re.compile(r"Stream #\d+:\d+.*?: Audio: (\w+)[^,]*, \d+ Hz, ([^,]+),")
_VIDEO = re.compile(r"Stream #\d+:\d+.*?: Video: (.*)")
# ffmpeg >= 5 reports rotation only as display-matrix side data, printed
# "displaymatrix: rotation of -90.00 degrees" by older releases and "Display
# Matrix: rotation of -90.00 degrees" by newer ones (9.0, bundled here). The
# legacy "rotate" tag that ffmpeg 4 printed as well is clockwise, the
# opposite sense, so it is not read.
_ROTATION = re.compile(r"display ?matrix: rotation of\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)


def probe(path: str | Path) -> MediaInfo:
    """Read stream facts from ``ffmpeg -i PATH``.

    Raises:
        ValueError: ffmpeg cannot open the file as media at all.
    """
    proc = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    text = proc.stderr.decode("utf-8", "replace")
    if "Input #0" not in text:
        raise ValueError(f"{path}: not a media file ffmpeg can read ({stderr_tail(proc.stderr)})")
    container = m[1] if (m := _INPUT.search(text)) else ""
    duration = None
    if m := _DURATION.search(text):
        duration = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
    videos = [v for v in _VIDEO.findall(text) if "attached pic" not in v]
    audio = _AUDIO.search(text)
    rotation = 0
    if m := _ROTATION.search(text):
        rotation = int(round(float(m[1]))) % 360
    return MediaInfo(
        duration_s=duration,
        has_video=bool(videos),
        has_audio=audio is not None,
        audio_codec=audio[1] if audio else None,
        audio_channels=audio[2].strip() if audio else None,
        rotation_deg=rotation,
        container=container,
    )
