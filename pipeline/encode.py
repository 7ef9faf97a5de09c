"""Writing RGB frames out as a video file, a GIF, or a folder of numbered PNGs.

The kind of output follows from the output path (:func:`output_kind`).
:class:`FrameWriter` takes one frame at a time, so memory stays at a few
frames whatever the length:

- video (.mp4, .mov, .mkv, .webm): frames are piped raw into ffmpeg, which
  encodes a hidden temporary file beside the output; a second ffmpeg pass
  adds the audio of the source (copied, or re-encoded where the container
  needs it); the result is renamed onto the output path. A failed or
  interrupted run leaves no file at that path.
- .gif: frames go to a lossless temporary video, then ffmpeg builds one
  palette for the whole clip (``palettegen``) and applies it (``paletteuse``).
- folder: ``frame_000000.png``, ``frame_000001.png``, ... (the frame's index
  from 0, see :mod:`files`) each written atomically as it arrives.

Finished files get the usual mode of a new file (0o666 less the umask).
"""

from __future__ import annotations

import math
import numbers
import os
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from .files import FRAME_GLOB, check_output_folder, check_rgb, frame_path, save_image, temp_path
from .ffmpeg import FFmpegError, encoder_problem, encoders, ffmpeg_exe, probe, run_ffmpeg, stderr_head

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm")

# WebM holds only these video codecs, so the default H.264 cannot go there.
WEBM_VIDEO_CODECS = ("libvpx-vp9", "libvpx", "libaom-av1", "libsvtav1")

# --codec auto: H.264 on the GPU's own encoder where ffmpeg can use it, else x264.
AUTO_CODEC = "auto"
NVENC_CODEC = "h264_nvenc"
X264_CODEC = "libx264"
# x264's speed presets, fastest first. The default, veryfast, encodes a 1280x720
# dreamed clip in 24 ms of CPU a frame (medium: 60 ms; measured on the 2-core
# development machine), so x264 keeps up with 25+ frames/s on 2 cores, and at
# CRF 18 its files were no larger than medium's (2.3 against 3.1 MB for 96 frames).
SPEEDS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
# NVENC's presets run from p1 (fastest) to p7 (best); each x264 speed maps to one.
NVENC_PRESETS = dict(zip(SPEEDS, ("p1", "p1", "p2", "p3", "p3", "p4", "p5", "p6", "p7")))

# RGB frames become yuv420p the way HD video expects (BT.709 matrix, limited
# range), and the stream is tagged so: without tags, ffmpeg converts with
# the BT.601 matrix and players guess, which shifts colours slightly.
RGB_TO_YUV_FILTER = (
    "scale=out_color_matrix=bt709:out_range=tv,format=yuv420p,"
    "setparams=range=tv:color_primaries=bt709:color_trc=bt709:colorspace=bt709"
)

# Audio codecs copied unchanged into each container: those its usual players
# decode. Any other is re-encoded with AUDIO_FALLBACK_CODEC. (The MP4 muxer
# does accept PCM, from a .wav soundtrack say, but most players then stay
# silent.) None means the container takes any codec (Matroska).
AUDIO_COPY_CODECS: dict[str, frozenset[str] | None] = {
    ".mp4": frozenset({"aac", "mp3", "ac3", "eac3", "alac"}),
    ".mov": frozenset({"aac", "mp3", "ac3", "eac3", "alac"}),
    ".mkv": None,
    ".webm": frozenset({"opus", "vorbis"}),
}
AUDIO_FALLBACK_CODEC = {".mp4": "aac", ".mov": "aac", ".mkv": "aac", ".webm": "libopus"}

OutputKind = Literal["video", "gif", "frames"]


def output_kind(path: str | Path) -> OutputKind:
    """Which kind of output a path asks for.

    A path that ends in a slash, is an existing folder, or has no suffix is a
    frames folder; .mp4, .mov, .mkv and .webm are video files; .gif is a GIF.

    Raises:
        ValueError: any other suffix; the message lists the accepted kinds.
    """
    text = str(path)
    if text.endswith(("/", os.sep)) or Path(text).is_dir() or not Path(text).suffix:
        return "frames"
    suffix = Path(text).suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix == ".gif":
        return "gif"
    raise ValueError(
        f"{path}: cannot write {suffix!r} output; use a video file ({', '.join(VIDEO_SUFFIXES)}), "
        f"a .gif, or a folder for numbered PNGs (a path without suffix, or ending in /)"
    )


def padded_size(size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of the frames a video file holds for frames of ``size``: odd sides padded by one (yuv420p)."""
    width, height = size
    return width + width % 2, height + height % 2


def clear_frames_folder(folder: str | Path) -> None:
    """Remove the ``frame_*.png`` files an interrupted run left in a frames-folder output."""
    for path in Path(folder).glob(FRAME_GLOB):
        path.unlink()


@dataclass(frozen=True)
class EncodeSettings:
    """How video files are encoded (GIFs and PNG folders ignore these).

    Attributes:
        crf: constant-quality level, 0 (lossless) to 51 (worst); 18 is visually
            near-lossless for H.264 (``--crf``).
        codec: ffmpeg video encoder (``--codec``): "auto" is h264_nvenc where
            this ffmpeg can use it (an NVIDIA GPU), else libx264 (see
            :func:`video_codec`); .webm needs a VP9 or AV1 one, e.g. "libvpx-vp9".
        speed: encoder speed (``--speed``), one of ``SPEEDS``: x264/x265's
            ``-preset``, "ultrafast" to "veryslow" (slower gives smaller files
            at the same quality), or the matching NVENC preset p1..p7; other
            encoders ignore it.
        keep_audio: copy the source's audio into a video output
            (``--keep-audio`` / ``--no-audio``).
    """

    crf: int = 18
    codec: str = AUTO_CODEC
    speed: str = "veryfast"
    keep_audio: bool = True

    def __post_init__(self):
        if isinstance(self.crf, bool) or not isinstance(self.crf, int) or not 0 <= self.crf <= 51:
            raise ValueError(f"--crf {self.crf!r}: expected a whole number from 0 (lossless) to 51 (worst)")
        if not isinstance(self.codec, str) or not self.codec:
            raise ValueError(f"--codec {self.codec!r}: expected an ffmpeg encoder name such as 'libx264'")
        if self.speed not in SPEEDS:
            raise ValueError(f"--speed {self.speed!r}: expected one of {', '.join(SPEEDS)} (fastest first)")


def video_codec(requested: str) -> str:
    """The encoder a video file is written with: ``requested`` with "auto" and NVENC resolved.

    "auto" and "h264_nvenc" become h264_nvenc when this ffmpeg lists it and a
    one-frame trial encode works (an NVIDIA GPU and driver), else libx264; a
    fall-back from an NVENC that ffmpeg lists but cannot use is announced in one
    warning with the cause, once per process: for "auto" only where torch sees a
    CUDA GPU (most ffmpeg builds list NVENC, and on a machine without a GPU x264
    is what anyone expects). Any other name is returned as it is.
    """
    if requested not in (AUTO_CODEC, NVENC_CODEC):
        return requested
    exe = ffmpeg_exe()
    problem = encoder_problem(exe, NVENC_CODEC)
    if problem is None:
        return NVENC_CODEC
    if requested == NVENC_CODEC or (NVENC_CODEC in encoders(exe) and _cuda_present()):
        _warn_once(f"{NVENC_CODEC} cannot encode here ({problem}); encoding with {X264_CODEC}")
    return X264_CODEC


def _cuda_present() -> bool:
    import torch

    return torch.cuda.is_available()


def codec_args(codec: str, settings: EncodeSettings) -> list[str]:
    """ffmpeg's options for encoder ``codec`` at ``settings``' quality and speed."""
    args = ["-c:v", codec]
    if codec == NVENC_CODEC:
        # NVENC's constant quality: -cq on the same 1-51 scale as CRF (0 would mean "unset").
        return args + ["-preset", NVENC_PRESETS[settings.speed], "-rc", "vbr", "-cq", str(max(1, settings.crf)), "-b:v", "0"]
    args += ["-crf", str(settings.crf)]
    if codec.startswith("libx26"):
        args += ["-preset", settings.speed]
    if codec.startswith("libvpx"):
        # libvpx treats -crf as a cap under its default bitrate target;
        # -b:v 0 makes it a pure constant-quality encode like x264's.
        args += ["-b:v", "0"]
    return args


@lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    """``warnings.warn(message)`` the first time only: every video written in a process would repeat it."""
    warnings.warn(message, stacklevel=4)


class FrameWriter:
    """Writes RGB frames to a video file, a GIF or a frames folder.

    Use it as a context manager: leaving the block normally finishes the
    output (:meth:`close`); leaving it by an exception aborts
    (:meth:`abort`), which removes every temporary file and leaves nothing
    at ``path`` (a frames folder keeps the complete frames already written).

    Video frames of odd width or height are padded by one row or column
    (copies of the edge) to even sizes, which yuv420p needs; a warning says
    so once. Audio is taken from ``audio_source`` when it has an audio
    stream, ``settings.keep_audio`` is set and the output is a video file;
    otherwise the output has none.

    Example:
        >>> with FrameWriter("out.mp4", fps=info.fps, size=(info.width, info.height),
        ...                  audio_source=info.path) as writer:
        ...     for frame in read_frames(info.path):
        ...         writer.write(dream(frame))

    Args:
        path: output, see :func:`output_kind`.
        fps: frames per second, exact (an int or a Fraction such as
            ``VideoInfo.fps``; floats are refused because 29.97 is not 30000/1001).
        size: (width, height) in pixels of every frame written.
        settings: how to encode a video file.
        audio_source: file whose audio streams go into a video output.
        audio_start_s: second of ``audio_source`` that plays with the first
            frame (the ``--start`` the frames were read from).

    The arguments stay readable as attributes of the same names, with
    ``kind`` (see :func:`output_kind`), :attr:`frames_written` and
    ``audio_loop_s`` (see :meth:`add_audio`, for a sound known only at the end).

    Raises:
        ValueError: an unsupported output kind, a folder that is missing or not
            writable, a frames folder that already holds frames, a codec the
            container cannot hold, a bad fps/size/audio_start_s, or an
            ``audio_source`` that is missing or not media.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        fps: Fraction | int,
        size: tuple[int, int],
        settings: EncodeSettings = EncodeSettings(),
        audio_source: str | Path | None = None,
        audio_start_s: float = 0.0,
    ):
        self.kind = output_kind(path)
        self.path = Path(path)
        if isinstance(fps, bool) or not isinstance(fps, numbers.Rational) or fps <= 0:
            raise ValueError(f"fps={fps!r}: expected an int or Fraction > 0, e.g. Fraction(30000, 1001)")
        if not (len(size) == 2 and all(isinstance(n, numbers.Integral) and n >= 1 for n in size)):
            raise ValueError(f"size={size!r}: expected (width, height) in whole pixels >= 1")
        if not audio_start_s >= 0:
            raise ValueError(f"audio_start_s={audio_start_s!r}: expected seconds >= 0")
        self.fps = Fraction(fps)
        self.size = (int(size[0]), int(size[1]))
        self.settings = settings
        self.audio_start_s = audio_start_s
        self.audio_loop_s: float | None = None
        self._frames_written = 0
        self._closed = False
        self._temps: list[Path] = []
        self._pipe: _RawVideoPipe | None = None
        self._audio: tuple[Path, str | None] | None = None  # (source, its first audio codec)
        self._padded_size = self.size
        self.codec: str | None = None  # the video encoder used (see video_codec); None for GIFs and folders

        if self.kind == "frames":
            self._prepare_frames_folder()
            return
        check_output_folder(self.path.parent)
        suffix = self.path.suffix.lower()
        if self.kind == "gif":
            # Lossless RGB intermediate: the palette is computed from the
            # frames exactly as written, and odd sizes need no padding.
            output_args = ["-c:v", "ffv1"]
            self._encoded = self._temp_path(".partial.mkv")
        else:
            if suffix == ".webm" and settings.codec not in WEBM_VIDEO_CODECS:
                raise ValueError(
                    f"{self.path}: WebM cannot hold codec {settings.codec!r} (H.264); "
                    f"use --codec libvpx-vp9 (or one of {WEBM_VIDEO_CODECS}), or a .mp4/.mkv/.mov output"
                )
            self.codec = video_codec(settings.codec)
            self._audio = self._audio_plan(audio_source) if settings.keep_audio else None
            output_args = self._video_args(suffix, final=self._audio is None)
            self._encoded = self._temp_path(f".partial{suffix}")
            width, height = self.size
            self._padded_size = padded_size(self.size)
            if self._padded_size != self.size:
                warnings.warn(
                    f"{self.path}: padded {width}x{height} to "
                    f"{self._padded_size[0]}x{self._padded_size[1]} (yuv420p needs even sizes)",
                    stacklevel=2,
                )
        self._pipe = _RawVideoPipe(
            self._encoded, self._padded_size, self.fps, output_args, what=f"encoding {self.path}"
        )

    # --- public API ------------------------------------------------------------

    @property
    def frames_written(self) -> int:
        """Frames passed to :meth:`write` so far."""
        return self._frames_written

    def write(self, frame: np.ndarray) -> None:
        """Append one frame.

        Args:
            frame: (H, W, 3) RGB uint8 with (W, H) equal to ``size``.

        Raises:
            ValueError: wrong shape or dtype, or the writer is closed.
            FFmpegError: the encoder stopped; the message ends with ffmpeg's.
        """
        if self._closed:
            raise ValueError(f"{self.path}: the writer is closed; open a new FrameWriter to write more")
        check_rgb(frame, "frame")
        if (frame.shape[1], frame.shape[0]) != self.size:
            raise ValueError(
                f"frame: {frame.shape[1]}x{frame.shape[0]} does not match the writer's size "
                f"{self.size[0]}x{self.size[1]}; resize frames before writing (every frame must match)"
            )
        if self.kind == "frames":
            save_image(frame_path(self.path, self._frames_written), frame)
        else:
            if self._padded_size != self.size:
                # Repeat the last column/row rather than add black, so the
                # extra pixel is invisible even where a player shows it.
                dw, dh = self._padded_size[0] - self.size[0], self._padded_size[1] - self.size[1]
                frame = cv2.copyMakeBorder(frame, 0, dh, 0, dw, cv2.BORDER_REPLICATE)
            self._pipe.write(frame)
        self._frames_written += 1

    def add_audio(self, source: str | Path, *, start_s: float = 0.0, loop_s: float | None = None) -> None:
        """Put ``source``'s sound into the video when it closes, instead of any given before.

        For a sound that is complete only once the frames are (a live
        recording's), or a clip's sound looped under frames that loop it.
        Nothing is added where the constructor's ``audio_source`` would add
        nothing: ``source`` has no sound, ``keep_audio`` is off, or this is
        not a video file.

        Args:
            source: a media file.
            start_s: second of ``source`` that plays with the first frame
                (within the loop when looping).
            loop_s: play the first ``loop_s`` seconds of ``source`` over and
                over, sample-exact (silence fills a shorter sound); None: once.

        Raises:
            ValueError: the writer is closed, ``source`` is missing or not
                media, or a bad ``start_s`` / ``loop_s``.
        """
        if self._closed:
            raise ValueError(f"{self.path}: the writer is closed; add the audio before close()")
        if loop_s is not None and not (math.isfinite(loop_s) and loop_s > 0):
            raise ValueError(f"loop_s={loop_s!r}: expected seconds > 0")
        if not (math.isfinite(start_s) and 0 <= start_s and (loop_s is None or start_s < loop_s)):
            raise ValueError(f"start_s={start_s!r}: expected seconds >= 0 (and within the loop)")
        if self.kind != "video" or not self.settings.keep_audio:
            return
        self._audio = self._audio_plan(source)
        self.audio_start_s, self.audio_loop_s = start_s, loop_s

    def close(self) -> None:
        """Finish the output and move it to ``path``; calling it again does nothing.

        Raises:
            ValueError: no frame was written to a video or GIF (an empty file
                would be invalid); nothing is left at ``path``.
            FFmpegError: encoding or muxing failed; nothing is left at ``path``.
        """
        if self._closed:
            return
        self._closed = True
        if self._pipe is None:  # frames folder: every frame is already in place
            return
        try:
            if self._frames_written == 0:
                self._pipe.kill()
                raise ValueError(f"{self.path}: no frames were written; a video or GIF needs at least one")
            self._pipe.finish()
            result = self._finish_gif() if self.kind == "gif" else self._finish_video()
            os.replace(result, self.path)
        finally:
            self._remove_temps()

    def abort(self) -> None:
        """Stop without output: kill ffmpeg and remove temporary files."""
        if self._closed:
            return
        self._closed = True
        if self._pipe is not None:
            self._pipe.kill()
        self._remove_temps()

    def __enter__(self) -> FrameWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # --- steps -------------------------------------------------------------------

    def _prepare_frames_folder(self) -> None:
        """Create the frames folder (its parent must exist) and refuse one holding earlier frames."""
        if self.path.is_dir():
            check_output_folder(self.path)
            earlier = sorted(self.path.glob(FRAME_GLOB))
            if earlier:
                # Overwriting would mix runs: a shorter run leaves the old
                # run's last frames behind, looking like part of the new one.
                raise ValueError(
                    f"{self.path}: already holds {len(earlier)} frame_*.png files from an earlier run; "
                    f"delete them or choose another folder"
                )
        elif self.path.exists():
            raise ValueError(f"{self.path}: is a file; a frames folder needs a new or existing folder name")
        else:
            check_output_folder(self.path.parent)
            self.path.mkdir()

    def _audio_plan(self, audio_source: str | Path | None) -> tuple[Path, str | None] | None:
        """(source, its first audio codec) when the source has audio, else None."""
        if audio_source is None:
            return None
        source = Path(audio_source)
        if not source.is_file():
            raise ValueError(f"audio source {source}: no such file; pass an existing file, or --no-audio")
        media = probe(source)
        return (source, media.audio_codec) if media.has_audio else None

    def _video_args(self, suffix: str, *, final: bool) -> list[str]:
        """ffmpeg output arguments for the video stream; ``final`` when this file becomes the output."""
        return ["-vf", RGB_TO_YUV_FILTER, *codec_args(self.codec, self.settings)] + (_container_args(suffix) if final else [])

    def _finish_video(self) -> Path:
        """Add the audio when there is some; return the file to move onto ``path``."""
        if self._audio is None:
            return self._encoded
        source, codec = self._audio
        if self.audio_loop_s is not None:
            source, codec = self._one_loop(source), "pcm_s16le"
        suffix = self.path.suffix.lower()
        muxed = self._temp_path(f".muxed{suffix}")
        copyable = AUDIO_COPY_CODECS[suffix]
        if copyable is None or codec in copyable:
            try:
                self._mux_audio(source, "copy", muxed)
                return muxed
            except FFmpegError:
                pass  # the container refused the stream as it is; re-encoding below fixes that
        self._mux_audio(source, AUDIO_FALLBACK_CODEC[suffix], muxed)
        return muxed

    def _one_loop(self, source: Path) -> Path:
        """A WAV of one loop of ``source``'s sound, ``audio_loop_s`` long, starting at ``audio_start_s``.

        The loop is cut (or padded with silence) to the exact length here, and
        rotated to start where the first frame is, because ffmpeg's own
        ``-stream_loop`` repeats a file whole and mistimes a seek into it.
        """
        loop_s, start_s = self.audio_loop_s, self.audio_start_s
        one = f"[0:a:0]apad,atrim=end={loop_s:.6f}"
        if start_s > 0:  # [start, loop) then [0, start)
            one += (f",asplit[a][b];[a]atrim=start={start_s:.6f},asetpts=PTS-STARTPTS[tail];"
                    f"[b]atrim=end={start_s:.6f},asetpts=PTS-STARTPTS[head];[tail][head]concat=n=2:v=0:a=1")  # fmt: skip
        loop = self._temp_path(".loop.wav")
        run_ffmpeg(["-i", str(source), "-filter_complex", one, "-c:a", "pcm_s16le", str(loop)],
                   what=f"cutting one loop of the audio of {source} for {self.path}")  # fmt: skip
        return loop

    def _mux_audio(self, source: Path, audio_codec: str, muxed: Path) -> None:
        """Write ``muxed``: the encoded video as is, plus ``source``'s audio from
        ``audio_start_s`` on (or one loop of it, over and over), cut to the
        video's length (to within one audio packet, ~20-90 ms, when copied)."""
        duration_s = float(self._frames_written / self.fps)
        start = ["-stream_loop", "-1"] if self.audio_loop_s is not None else ["-ss", f"{self.audio_start_s:.6f}"]
        run_ffmpeg(
            [
                "-i", str(self._encoded),
                *start, "-i", str(source),
                "-map", "0:v", "-map", "1:a",
                "-c:v", "copy", "-c:a", audio_codec,
                "-t", f"{duration_s:.6f}",
                *_container_args(self.path.suffix.lower()),
                str(muxed),
            ],
            what=f"adding the audio of {source} to {self.path} (audio codec {audio_codec})",
        )  # fmt: skip

    def _finish_gif(self) -> Path:
        """Build the palette, then the GIF; return the GIF to move onto ``path``."""
        palette = self._temp_path(".palette.png")
        gif = self._temp_path(".partial.gif")
        run_ffmpeg(["-i", str(self._encoded), "-vf", "palettegen", str(palette)],
                   what=f"computing the palette of {self.path}")
        run_ffmpeg(["-i", str(self._encoded), "-i", str(palette), "-lavfi", "paletteuse", str(gif)],
                   what=f"writing {self.path}")
        return gif

    def _temp_path(self, suffix: str) -> Path:
        """A new hidden file beside the output, removed when the writer closes.

        The real suffix stays last because ffmpeg picks the container from it.
        """
        path = temp_path(self.path, suffix)
        self._temps.append(path)
        return path

    def _remove_temps(self) -> None:
        for temp in self._temps:
            temp.unlink(missing_ok=True)


def _container_args(suffix: str) -> list[str]:
    """Output options for the file that becomes the result."""
    # MP4/MOV index at the front, so playback over the web starts at once.
    return ["-movflags", "+faststart"] if suffix in (".mp4", ".mov") else []


class _RawVideoPipe:
    """An ffmpeg process reading raw RGB frames on stdin and encoding them to a file.

    (imageio-ffmpeg's ``write_frames`` does the same but lets ffmpeg's stderr
    go to the terminal and ignores its exit status, so a failure could not
    be reported with ffmpeg's message.)
    """

    def __init__(self, output: Path, size: tuple[int, int], fps: Fraction, output_args: list[str], *, what: str):
        self.what = what
        # stderr goes to a file, not a pipe: a pipe nobody reads while frames
        # are written fills up and blocks ffmpeg.
        self._stderr = tempfile.TemporaryFile()
        cmd = [
            ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{size[0]}x{size[1]}",
            # The rate as "num/den" keeps 30000/1001 exact (29.97 would drift).
            "-r", f"{fps.numerator}/{fps.denominator}",
            "-i", "pipe:0",
            *output_args, str(output),
        ]  # fmt: skip
        self._process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr)

    def write(self, frame: np.ndarray) -> None:
        """Send one (H, W, 3) uint8 frame of the pipe's size."""
        try:
            self._process.stdin.write(np.ascontiguousarray(frame).data)
        except BrokenPipeError:
            self._process.wait()
            self._raise_failure()

    def finish(self) -> None:
        """Close stdin, wait for ffmpeg to finish the file, and raise if it failed."""
        try:
            self._process.stdin.close()
        except BrokenPipeError:  # ffmpeg already exited; its status says why
            pass
        if self._process.wait() != 0:
            self._raise_failure()
        self._stderr.close()

    def kill(self) -> None:
        """Stop ffmpeg at once; the partial file is the caller's to remove."""
        self._process.kill()
        self._process.wait()
        try:
            self._process.stdin.close()  # unsent frames are dropped
        except BrokenPipeError:
            pass
        self._stderr.close()

    def _raise_failure(self) -> None:
        self._stderr.seek(0)
        message = stderr_head(self._stderr.read())
        self._stderr.close()
        raise FFmpegError(f"ffmpeg failed {self.what}: {message}")
