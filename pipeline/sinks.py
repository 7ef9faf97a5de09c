"""Where the pictures of `dreamreel live` go: a window, a virtual camera, NDI, Spout, Syphon, a recording, or a host program.

A :class:`Sink` takes each output frame, RGB uint8 (H, W, 3), with a
:class:`FrameInfo` that says what the frame is (its number, when its source
frame arrived, the on-screen display). Any number of sinks run at once; the
live session opens them in its output thread, writes to each in turn, and
closes a sink that fails (one log line) while the others go on. A sink may
also hand keys back (:meth:`Sink.poll`: the window's; the session turns them
into controls with :func:`~dreamreel.pipeline.controls.key_change`) and ask
the session to stop (the window closed). Each class imports its I/O library in
its constructor, so a missing one is reported before anything starts
(:func:`~dreamreel.pipeline.sources.require`), and :class:`MemorySink`
needs none (tests and host programs use it).
"""

from __future__ import annotations

import collections
import os
import queue
import sys
import threading
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .sources import LoopedFile, require

# The window opens at least this wide, the frame scaled by a whole factor (a 320x180 frame at 2x).
WINDOW_MIN_WIDTH = 640
# Frames the recording may fall behind the output before it drops some (about 4 s at 30 fps).
RECORD_QUEUE_FRAMES = 120
# A frame that reaches the recording this many frames ahead of its clock is
# left out (the output ran fast); a late one is preceded by the frame held on
# screen meanwhile, repeated.
RECORD_AHEAD_FRAMES = 2
# The recorded sound is kept within this of the frames: a gap (samples the
# sound card lost, its clock running slow) is filled with silence, an overlap
# cut. Each correction is a click, so smaller drifts are left alone.
SOUND_SYNC_S = 0.04
# Blocks of sound the recording may fall behind (about 10 s of 10 ms blocks).
SOUND_QUEUE_BLOCKS = 1000


@dataclass(frozen=True)
class FrameInfo:
    """What an output frame is, for the sinks that care.

    Attributes:
        index: output frame number, from 0.
        arrival_s: ``time.monotonic()`` when its source frame arrived (the
            output's own clock time in live zoom); latency is now minus this.
        source_index: number of the source frame shown (-1 in live zoom).
        dream_index: number of the source frame the dream on it was made
            from (-1: none yet); equal to ``source_index`` on a frame that
            shows its own dream, smaller where an earlier dream is warped onto it.
        source: the source frame, RGB uint8 (H, W, 3), or None in live zoom.
        osd: whether the on-screen display is on; ``osd_lines`` its text.
        fullscreen: whether the window should fill the screen.
        message: a warning to show on screen (a stalled source), or None.
    """

    index: int
    arrival_s: float
    source_index: int = -1
    dream_index: int = -1
    source: np.ndarray | None = None
    osd: bool = False
    osd_lines: tuple[str, ...] = ()
    fullscreen: bool = False
    message: str | None = None


class Sink:
    """An output of a live session. Subclasses implement :meth:`open`, :meth:`write` and :meth:`close`.

    All calls come from the session's output thread.
    """

    name = "sink"

    def open(self, size: tuple[int, int], fps: float) -> None:
        """Start, for frames of ``size`` (width, height) at ``fps``; raise ValueError naming the flag if it cannot."""

    def write(self, frame: np.ndarray, info: FrameInfo) -> None:
        """Take one RGB uint8 (H, W, 3) frame. Keep it short: the output loop waits for it."""
        raise NotImplementedError

    def poll(self) -> list[tuple[str, float]]:
        """Keys pressed in this sink's window since the last call: (name, ``time.monotonic()`` when seen)."""
        return []

    @property
    def stop_requested(self) -> bool:
        """True once this sink asks the session to end (its window was closed)."""
        return False

    def close(self) -> None:
        """Finish and release everything; calling it twice does nothing."""


class MemorySink(Sink):
    """Keeps the last ``keep`` frames with their :class:`FrameInfo`, for tests and host programs.

    Args:
        keep: frames kept (the oldest go first); None keeps every frame.
    """

    name = "memory"

    def __init__(self, keep: int | None = None):
        self.frames: collections.deque[tuple[np.ndarray, FrameInfo]] = collections.deque(maxlen=keep)
        self.written = 0
        self._cond = threading.Condition()

    def write(self, frame: np.ndarray, info: FrameInfo) -> None:
        with self._cond:
            self.frames.append((frame, info))
            self.written += 1
            self._cond.notify_all()

    def wait_for(self, count: int, timeout_s: float) -> bool:
        """Wait until ``count`` frames have been written in all; False after ``timeout_s``."""
        with self._cond:
            return self._cond.wait_for(lambda: self.written >= count, timeout=timeout_s)


class WindowSink(Sink):
    """A window (pygame-ce, SDL2) showing the output scaled to its size, with full screen and an on-screen display.

    Its keys go to the session (:meth:`poll`), which gives them their meaning
    (:func:`~dreamreel.pipeline.controls.key_change`: 1-9 and 0 presets, space
    freeze, F full screen, O on-screen display, T tap tempo); Esc or closing
    the window ends the session.
    """

    name = "window"

    def __init__(self, title: str = "dreamreel live"):
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        self._pygame = require("pygame", "--window", "live")
        self.title = title
        self._screen = self._font = None
        self._fullscreen = False
        self._size = (0, 0)
        self._keys: list[tuple[str, float]] = []
        self._stop = False

    def open(self, size: tuple[int, int], fps: float) -> None:
        # SDL shows a window surface through OpenGL by default; on X11 that
        # loads Mesa's libGL and with it libLLVM, and a later `import triton`
        # (torch.compile imports it, and torchvision through torch._dynamo)
        # then crashes the process on the clash of LLVM symbols. The window
        # only blits one picture a frame, which SDL does as well without
        # OpenGL; a user who needs it can still set the variable.
        os.environ.setdefault("SDL_FRAMEBUFFER_ACCELERATION", "0")
        pygame = self._pygame
        try:
            pygame.display.init()
            pygame.font.init()
            scale = max(1, -(-WINDOW_MIN_WIDTH // size[0]))
            self._size = size
            self._screen = pygame.display.set_mode((size[0] * scale, size[1] * scale), pygame.RESIZABLE)
        except pygame.error as exc:
            raise ValueError(f"--window: no window can open here ({exc}); is there a display (DISPLAY, WAYLAND_DISPLAY)?") from None
        pygame.display.set_caption(self.title)
        self._font = pygame.font.Font(None, 22)

    def write(self, frame: np.ndarray, info: FrameInfo) -> None:
        pygame = self._pygame
        self._handle_events()
        if info.fullscreen != self._fullscreen:
            self._fullscreen = info.fullscreen
            flags = pygame.FULLSCREEN if info.fullscreen else pygame.RESIZABLE
            self._screen = pygame.display.set_mode((0, 0) if info.fullscreen else self._screen.get_size(), flags)
        picture = pygame.image.frombuffer(np.ascontiguousarray(frame).data, (frame.shape[1], frame.shape[0]), "RGB")
        target = self._screen.get_size()
        self._screen.blit(pygame.transform.scale(picture, target) if picture.get_size() != target else picture, (0, 0))
        lines = [*(info.osd_lines if info.osd else ()), *([info.message] if info.message else [])]
        if lines:
            self._draw_text(lines)
        pygame.display.flip()

    def _draw_text(self, lines: list[str]) -> None:
        pygame = self._pygame
        rendered = [self._font.render(line, True, (255, 255, 255)) for line in lines]
        width = max(r.get_width() for r in rendered) + 12
        height = sum(r.get_height() for r in rendered) + 8
        box = pygame.Surface((width, height), pygame.SRCALPHA)
        box.fill((0, 0, 0, 160))
        self._screen.blit(box, (8, 8))
        y = 12
        for r in rendered:
            self._screen.blit(r, (14, y))
            y += r.get_height()

    def _handle_events(self) -> None:
        pygame = self._pygame
        for event in pygame.event.get():
            if event.type == pygame.QUIT:
                self._stop = True
            elif event.type == pygame.KEYDOWN:
                key = pygame.key.name(event.key)
                if key == "escape":
                    self._stop = True
                else:
                    self._keys.append((key, time.monotonic()))

    def poll(self) -> list[tuple[str, float]]:
        keys, self._keys = self._keys, []
        return keys

    @property
    def stop_requested(self) -> bool:
        return self._stop

    def close(self) -> None:
        if self._screen is not None:
            self._pygame.display.quit()
            self._screen = None


class VirtualCameraSink(Sink):
    """A virtual camera other programs (OBS, Zoom, a browser) open like a webcam, through pyvirtualcam.

    On Linux it needs the v4l2loopback kernel module; on Windows and macOS
    the OBS virtual camera.
    """

    name = "virtual camera"

    def __init__(self, device: str | None = None):
        self._pyvirtualcam = require("pyvirtualcam", "--virtual-camera", "live")
        self.device = device
        self._camera = None

    def open(self, size: tuple[int, int], fps: float) -> None:
        pyvirtualcam = self._pyvirtualcam
        try:
            self._camera = pyvirtualcam.Camera(width=size[0], height=size[1], fps=fps, fmt=pyvirtualcam.PixelFormat.RGB, device=self.device)
        except RuntimeError as exc:
            raise ValueError(f"--virtual-camera: {exc}") from None

    def write(self, frame: np.ndarray, info: FrameInfo) -> None:
        self._camera.send(frame)

    def close(self) -> None:
        if self._camera is not None:
            self._camera.close()
            self._camera = None


class NDISink(Sink):
    """An NDI sender other programs (OBS, Resolume, TouchDesigner, vMix) receive over the network."""

    def __init__(self, name: str):
        self._ndi = require("NDIlib", "--ndi-out", "ndi")
        self.sender_name = name
        self.name = f"NDI {name!r}"
        self._send = None
        self._frame = None
        self._rgbx: np.ndarray | None = None

    def open(self, size: tuple[int, int], fps: float) -> None:
        ndi = self._ndi
        if not ndi.initialize():
            raise ValueError("--ndi-out: the NDI runtime could not start on this machine")
        settings = ndi.SendCreate()
        settings.ndi_name = self.sender_name
        self._send = ndi.send_create(settings)
        if self._send is None:
            raise ValueError(f"--ndi-out {self.sender_name!r}: NDI could not create the sender")
        self._frame = ndi.VideoFrameV2()
        self._frame.FourCC = ndi.FOURCC_VIDEO_TYPE_RGBX
        self._frame.frame_rate_N, self._frame.frame_rate_D = round(fps * 1000), 1000
        self._rgbx = np.full((size[1], size[0], 4), 255, np.uint8)

    def write(self, frame: np.ndarray, info: FrameInfo) -> None:
        self._rgbx[:, :, :3] = frame
        self._frame.data = self._rgbx
        self._ndi.send_send_video_v2(self._send, self._frame)

    def close(self) -> None:
        if self._send is not None:
            self._ndi.send_destroy(self._send)
            self._send = None


class SpoutSink(Sink):
    """A Spout sender (Windows: Resolume, TouchDesigner), through SpoutGL."""

    def __init__(self, name: str):
        if sys.platform != "win32":
            raise ValueError("--spout: Spout exists on Windows only; use --ndi-out NAME elsewhere")
        self._spout = require("SpoutGL", "--spout", "spout")
        self.sender_name = name
        self.name = f"Spout {name!r}"
        self._sender = None
        self._size = (0, 0)

    def open(self, size: tuple[int, int], fps: float) -> None:
        self._sender = self._spout.SpoutSender()
        self._sender.setSenderName(self.sender_name)
        self._size = size

    def write(self, frame: np.ndarray, info: FrameInfo) -> None:
        from OpenGL import GL  # SpoutGL's own dependency

        rgba = np.dstack([frame, np.full(frame.shape[:2], 255, np.uint8)])
        self._sender.sendImage(rgba.tobytes(), self._size[0], self._size[1], GL.GL_RGBA, False, 0)

    def close(self) -> None:
        if self._sender is not None:
            self._sender.releaseSender()
            self._sender = None


class SyphonSink(Sink):
    """A Syphon server (macOS: Resolume, MadMapper, VDMX), through syphon-python."""

    def __init__(self, name: str):
        if sys.platform != "darwin":
            raise ValueError("--syphon: Syphon exists on macOS only; use --ndi-out NAME elsewhere")
        self._syphon = require("syphon", "--syphon", "syphon")
        self.server_name = name
        self.name = f"Syphon {name!r}"
        self._server = None

    def open(self, size: tuple[int, int], fps: float) -> None:
        from syphon.utils.raw import create_mtl_texture

        self._server = self._syphon.SyphonMetalServer(self.server_name)
        self._texture = create_mtl_texture(self._server.device, size[0], size[1])
        self._rgba = np.full((size[1], size[0], 4), 255, np.uint8)

    def write(self, frame: np.ndarray, info: FrameInfo) -> None:
        from syphon.utils.numpy import copy_image_to_mtl_texture

        self._rgba[:, :, :3] = frame
        copy_image_to_mtl_texture(self._rgba, self._texture)
        self._server.publish_frame_texture(self._texture)

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


class RecordSink(Sink):
    """The output recorded to a video file in real time, through the encoder of the other commands (``--record FILE.mp4``).

    The recording keeps the show's timing: each frame lands where the clock
    says it was shown, and a frame held on screen (a slow output, a stalled
    source) is repeated for as long, so the file lasts as long as the show
    and its sound stays in step. The sound is, where there is one:

    * ``audio_in``'s input (``--audio-in``), as it was heard while each frame
      was shown, recorded beside the file and muxed in at the end;
    * else a looped ``clip``'s own sound (``--input FILE`` with sound),
      looped with its pictures: the first frame recorded plays with the
      sound of the clip's frame it shows.

    Frames are encoded in a thread of its own so the output never waits for
    ffmpeg; if the encoder falls ``RECORD_QUEUE_FRAMES`` behind, frames are
    dropped and counted (:attr:`dropped`; the picture then runs that much
    ahead of the sound). :meth:`close` finishes the file.

    Args:
        path: a .mp4, .mov, .mkv or .webm file (checked at once: a bad path
            is a ValueError before anything starts).
        settings: an :class:`~dreamreel.pipeline.encode.EncodeSettings`
            (``keep_audio`` off: no sound).
        clip: the session's looped clip, whose sound the recording carries.
        audio_in: the running :class:`~dreamreel.pipeline.audio_in.AudioIn`,
            whose input the recording carries (rather than the clip's); an
            attribute of the same name that may be set until the sink opens.
        clock: ``time.monotonic``, or a test's.
    """

    def __init__(
        self,
        path: str | Path,
        settings=None,
        *,
        clip: LoopedFile | None = None,
        audio_in=None,
        clock: Callable[[], float] = time.monotonic,
    ):
        from .encode import EncodeSettings, output_kind
        from .files import check_output_folder

        self.path = Path(path)
        self.name = f"recording {self.path}"
        if output_kind(self.path) != "video":
            raise ValueError(f"--record {path}: expected a video file name ending in .mp4, .mov, .mkv or .webm")
        try:
            check_output_folder(self.path.parent)
        except ValueError as exc:
            raise ValueError(f"--record {path}: {exc}") from None
        self.settings = settings or EncodeSettings()
        self.clip = clip if clip is not None and clip.has_audio else None
        self.audio_in = audio_in
        self.dropped = 0
        self._clock = clock
        self._room: _RoomSound | None = None
        self._writer = None
        self._queue: queue.Queue = queue.Queue(maxsize=RECORD_QUEUE_FRAMES)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._start_s: float | None = None  # when the first frame was shown: the recording's time 0
        self._first_source = 0  # the source frame it showed
        self._slots = 0  # frames the recording holds so far
        self._previous: np.ndarray | None = None

    def open(self, size: tuple[int, int], fps: float) -> None:
        from fractions import Fraction

        from .encode import FrameWriter
        from .files import temp_path

        self._writer = FrameWriter(self.path, fps=Fraction(fps).limit_denominator(1001), size=size, settings=self.settings)
        if self.audio_in is not None and self.settings.keep_audio:
            self._room = _RoomSound(self.audio_in, temp_path(self.path, ".sound.wav"))
        self._thread = threading.Thread(target=self._encode, name="dreamreel-record", daemon=True)
        self._thread.start()

    def _encode(self) -> None:
        try:
            while (frame := self._queue.get()) is not None:
                self._writer.write(frame)
        except BaseException as exc:  # noqa: BLE001 - reported by the next write() in the output thread
            self._error = exc

    def write(self, frame: np.ndarray, info: FrameInfo) -> None:
        if self._error is not None:
            raise self._error
        now = self._clock()
        if self._start_s is None:
            self._start_s, self._first_source = now, max(info.source_index, 0)
            if self._room is not None:
                self._room.start(now)
        slot = round((now - self._start_s) * float(self._writer.fps))
        if slot + RECORD_AHEAD_FRAMES < self._slots:
            return
        while self._slots < slot:  # the frame on screen meanwhile
            self._put(self._previous)
        self._put(frame)
        self._previous = frame

    def _put(self, frame: np.ndarray) -> None:
        self._slots += 1
        try:
            self._queue.put_nowait(frame)
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        """Encode what is queued, add the sound and finish the file (or remove it when the encoder failed)."""
        if self._thread is None:
            return
        while self._thread.is_alive():  # an encoder that failed takes nothing more
            try:
                self._queue.put(None, timeout=0.5)
                break
            except queue.Full:
                continue
        self._thread.join()
        self._thread = None
        sound = self._room.finish() if self._room is not None else None
        try:
            if self._error is not None or self._writer.frames_written == 0:
                self._writer.abort()
                return
            if sound is not None:
                self._writer.add_audio(sound)
            elif self.clip is not None:
                loop = self.clip.loop_frames
                first = self._first_source % loop if loop else self._first_source
                self._writer.add_audio(self.clip.path, start_s=first / self.clip.fps, loop_s=loop / self.clip.fps if loop else None)
            self._writer.close()
        finally:
            if self._room is not None:
                self._room.path.unlink(missing_ok=True)


class _RoomSound:
    """The sound card's input written to a WAV file beside the recording, sample for sample in step with its frames."""

    def __init__(self, audio_in, path: Path):
        self.audio_in = audio_in
        self.path = path
        self._queue: queue.Queue = queue.Queue(maxsize=SOUND_QUEUE_BLOCKS)
        self._start_s = 0.0
        self._thread: threading.Thread | None = None
        self._written = 0  # samples in the file
        self._failed = False

    def start(self, start_s: float) -> None:
        """Record from ``start_s`` (the recording's first frame, on the sound's clock) on."""
        self._start_s = start_s
        self._thread = threading.Thread(target=self._write, name="dreamreel-record-sound", daemon=True)
        self._thread.start()
        self.audio_in.add_listener(self._heard)

    def _heard(self, samples: np.ndarray, time_s: float) -> None:
        try:
            self._queue.put_nowait((samples, time_s))
        except queue.Full:  # the disk stalled: the gap is filled with silence once it writes again
            pass

    def _write(self) -> None:
        rate = self.audio_in.sample_rate
        tolerance = round(SOUND_SYNC_S * rate)
        wav = None
        correcting = True  # the first block is put exactly in place
        try:
            while (block := self._queue.get()) is not None:
                samples, time_s = block
                if wav is None:
                    wav = wave.open(str(self.path), "wb")
                    wav.setnchannels(samples.shape[1])
                    wav.setsampwidth(2)
                    wav.setframerate(rate)
                late = round((time_s - self._start_s) * rate) - self._written  # samples missing before this block
                if correcting or abs(late) > tolerance:  # put in place exactly, over as many blocks as that takes
                    if late > 0:
                        wav.writeframes(np.zeros((late, samples.shape[1]), "<i2").tobytes())
                        self._written += late
                    correcting = -late >= len(samples)
                    samples = samples[max(0, -late) :]
                wav.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
                self._written += len(samples)
        except OSError:  # a full disk: the recording goes on without its sound
            self._failed = True
        finally:
            if wav is not None:
                wav.close()

    def finish(self) -> Path | None:
        """Stop recording; the WAV file, or None when no sound came."""
        if self._thread is None:
            return None
        self.audio_in.remove_listener(self._heard)
        while self._thread.is_alive():  # one that failed takes nothing more
            try:
                self._queue.put(None, timeout=0.5)
                break
            except queue.Full:
                continue
        self._thread.join()
        self._thread = None
        return self.path if self._written and not self._failed else None
