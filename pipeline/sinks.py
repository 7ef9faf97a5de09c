"""Where the pictures of `dreamreel live` go: a window, a virtual camera, NDI, Spout, Syphon, a recording, or a host program.

A :class:`Sink` takes each output frame, RGB uint8 (H, W, 3), with a
:class:`FrameInfo` that says what the frame is (its number, when its source
frame arrived, the on-screen display). Any number of sinks run at once; the
live session opens them in its output thread, writes to each in turn, and
closes a sink that fails (one log line) while the others go on. A sink may
also hand controls back (:meth:`Sink.poll`: the window's keys) and ask the
session to stop (the window closed). Each class imports its I/O library in
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .controls import Change
from .sources import require

# Keys of the window and the controls they send (digits 1-9 choose a preset).
WINDOW_KEYS = {"space": "freeze", "f": "fullscreen", "o": "osd", "t": "tap"}
# The window opens at least this wide, the frame scaled by a whole factor (a 320x180 frame at 2x).
WINDOW_MIN_WIDTH = 640
# Frames the recording may fall behind the output before it drops some (about 4 s at 30 fps).
RECORD_QUEUE_FRAMES = 120


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

    def poll(self) -> list[Change]:
        """Controls that came in through this sink since the last call (the window's keys)."""
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

    Keys: 1-9 choose the presets in ``presets``, space freezes, F toggles full
    screen, O the on-screen display (frame rate, dream rate, latency), T taps
    the tempo, Esc or closing the window ends the session.
    """

    name = "window"

    def __init__(self, presets: tuple[str, ...] = (), title: str = "dreamreel live"):
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        self._pygame = require("pygame", "--window", "live")
        self.presets = tuple(presets)
        self.title = title
        self._screen = self._font = None
        self._fullscreen = False
        self._size = (0, 0)
        self._changes: list[Change] = []
        self._stop = False

    def open(self, size: tuple[int, int], fps: float) -> None:
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
                elif key in WINDOW_KEYS:
                    self._changes.append(Change(WINDOW_KEYS[key], None, f"key {key}"))
                elif key.isdigit() and 1 <= int(key) <= len(self.presets):
                    self._changes.append(Change("preset", self.presets[int(key) - 1], f"key {key}"))

    def poll(self) -> list[Change]:
        changes, self._changes = self._changes, []
        return changes

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
    """The output recorded to a video file through the encoder of the other commands (``--record FILE.mp4``).

    Frames are encoded in a thread of its own so the output never waits for
    ffmpeg; if the encoder falls ``RECORD_QUEUE_FRAMES`` behind, frames are
    dropped and counted (:attr:`dropped`). :meth:`close` finishes the file.

    Args:
        path: a .mp4, .mov, .mkv or .webm file (checked at once: a bad path
            is a ValueError before anything starts).
        settings: an :class:`~dreamreel.pipeline.encode.EncodeSettings`.
    """

    def __init__(self, path: str | Path, settings=None):
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
        self.dropped = 0
        self._writer = None
        self._queue: queue.Queue = queue.Queue(maxsize=RECORD_QUEUE_FRAMES)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def open(self, size: tuple[int, int], fps: float) -> None:
        from fractions import Fraction

        from .encode import FrameWriter

        self._writer = FrameWriter(self.path, fps=Fraction(fps).limit_denominator(1001), size=size, settings=self.settings)
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
        try:
            self._queue.put_nowait(frame)
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        """Encode what is queued and finish the file (or remove it when the encoder failed)."""
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
        if self._error is not None or self._writer.frames_written == 0:
            self._writer.abort()
        else:
            self._writer.close()
