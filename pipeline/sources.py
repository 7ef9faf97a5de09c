"""Where the pictures of `dreamreel live` come from: a clip, a camera, NDI, the screen, or a host program.

A :class:`Source` delivers RGB uint8 (H, W, 3) frames as they arrive. The
live session reads it in a thread of its own and keeps only the newest
frame, so a source never has to drop frames itself; when it stops
delivering, the session holds the last frame and calls :meth:`Source.close`
and :meth:`Source.open` again to reconnect. Each class imports its I/O
library when it opens, so :class:`LoopedFile` and :class:`FrameFeed` need
none of them (tests and host programs use these two).
"""

from __future__ import annotations

import importlib
import queue
import threading
import time
from pathlib import Path

import cv2
import numpy as np

# How long read() waits for a frame before it says None (nothing yet), in
# seconds: long enough for any real frame rate, short enough that a session
# notices a stalled source and a stop within a moment.
READ_TIMEOUT_S = 0.5
# NDI finds senders by multicast DNS, which containers and some networks
# block; asking this address too finds the senders on this machine anyway.
NDI_EXTRA_IPS = "127.0.0.1"


def require(module: str, flag: str, extra: str):
    """Import an optional I/O library, or raise the one line that says which ``pip install`` brings it.

    Raises:
        ValueError: the module is not installed (exit code 2 at the command line).
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(f"{flag} needs the {module} package: pip install \"dreamreel[{extra}]\"") from None


class Source:
    """A live picture source. Subclasses implement :meth:`open`, :meth:`read` and :meth:`close`.

    Attributes:
        name: for messages (``"camera 0"``, ``"clip.mp4"``).
        fps: frames per second it delivers, once open; None where unknown
            (the session then runs its output at ``--fps`` or 30).
    """

    name = "source"
    fps: float | None = None

    def open(self) -> None:
        """Connect; raise ValueError naming the flag when the source cannot be opened."""

    def read(self) -> np.ndarray | None:
        """The next frame, RGB uint8 (H, W, 3); None when none came within about ``READ_TIMEOUT_S``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the device; calling it twice does nothing."""


class LoopedFile(Source):
    """A video file played in a loop at its own frame rate, as a camera would deliver it (the source every test uses).

    Args:
        path: any video file OpenCV reads.
        max_side: downscale so the longest side is at most this (as ``--max-side``).
    """

    def __init__(self, path: str | Path, max_side: int | None = None):
        from .decode import probe_video

        self.path = Path(path)
        self.name = self.path.name
        self.max_side = max_side
        info = probe_video(self.path)  # ValueError naming the file for a missing or unreadable one
        self.fps = float(info.fps)
        self._frames = None
        self._due = 0.0

    def open(self) -> None:
        self._frames = self._loop()
        self._due = time.monotonic()

    def _loop(self):
        from .decode import read_frames

        while True:
            count = 0
            for frame in read_frames(self.path, max_side=self.max_side):
                count += 1
                yield frame
            if count == 0:
                raise ValueError(f"--input {self.path}: no frames could be read")

    def read(self) -> np.ndarray | None:
        frame = next(self._frames)
        # Deliver frame k at k / fps from the start; a late one goes at once and the clock catches up.
        self._due = max(self._due + 1 / self.fps, time.monotonic() - 1 / self.fps)
        wait = self._due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        return frame

    def close(self) -> None:
        if self._frames is not None:
            self._frames.close()
            self._frames = None


class FrameFeed(Source):
    """Frames a host program hands over with :meth:`put`, newest first: the session shows what was put last.

    Args:
        fps: the rate the host puts frames at (the output's rate); None = the session's ``--fps`` or 30.
    """

    name = "frame feed"

    def __init__(self, fps: float | None = None):
        self.fps = fps
        self._queue: queue.Queue = queue.Queue(maxsize=1)

    def put(self, frame: np.ndarray) -> None:
        """Hand over one RGB uint8 (H, W, 3) frame; a frame not yet taken is replaced."""
        from .files import check_rgb

        check_rgb(frame, "frame")
        while True:
            try:
                self._queue.put_nowait(frame)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    pass

    def read(self) -> np.ndarray | None:
        try:
            return self._queue.get(timeout=READ_TIMEOUT_S)
        except queue.Empty:
            return None


class Camera(Source):
    """A camera through OpenCV (``--camera N``), newest frame only.

    The session reads it continuously in its own thread, so OpenCV's few
    buffered frames never pile up; where the backend allows, its buffer is
    also set to one frame.
    """

    def __init__(self, index: int):
        self.index = index
        self.name = f"camera {index}"
        self._capture = None

    def open(self) -> None:
        quiet = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # our one line says it, not OpenCV's warnings
        try:
            capture = cv2.VideoCapture(self.index)
        finally:
            cv2.utils.logging.setLogLevel(quiet)
        if not capture.isOpened():
            capture.release()
            raise ValueError(f"--camera {self.index}: no camera could be opened there (on Linux, ls /dev/video* lists them)")
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 1 <= fps <= 240 else None
        self._capture = capture

    def read(self) -> np.ndarray | None:
        ok, bgr = self._capture.read()
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if ok else None

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class NDISource(Source):
    """An NDI sender on the network (``--ndi NAME``): the first whose name contains NAME.

    Needs ``pip install "dreamreel[ndi]"`` (ndi-python, which brings the NDI runtime).
    """

    FIND_TIMEOUT_S = 5.0

    def __init__(self, name: str):
        self._ndi = require("NDIlib", "--ndi", "ndi")
        self.wanted = name
        self.name = f"NDI {name!r}"
        self._find = self._recv = None

    def open(self) -> None:
        ndi = self._ndi
        if not ndi.initialize():
            raise ValueError("--ndi: the NDI runtime could not start on this machine")
        settings = ndi.FindCreate()
        settings.extra_ips = NDI_EXTRA_IPS
        self._find = ndi.find_create_v2(settings)
        deadline = time.monotonic() + self.FIND_TIMEOUT_S
        found = []
        while time.monotonic() < deadline:
            ndi.find_wait_for_sources(self._find, 500)
            names = [s.ndi_name for s in ndi.find_get_current_sources(self._find)]
            found = [s for s in ndi.find_get_current_sources(self._find) if self.wanted in s.ndi_name]
            if found:
                break
        if not found:
            self.close()
            listed = ", ".join(names) if names else "none"
            raise ValueError(f"--ndi {self.wanted!r}: no NDI sender of that name within {self.FIND_TIMEOUT_S:g} s (found: {listed})")
        create = ndi.RecvCreateV3()
        create.color_format = ndi.RECV_COLOR_FORMAT_RGBX_RGBA
        self._recv = ndi.recv_create_v3(create)
        ndi.recv_connect(self._recv, found[0])

    def read(self) -> np.ndarray | None:
        ndi = self._ndi
        kind, video, _, _ = ndi.recv_capture_v2(self._recv, int(READ_TIMEOUT_S * 1000))
        if kind != ndi.FRAME_TYPE_VIDEO:
            return None
        frame = np.ascontiguousarray(video.data[:, :, :3])
        ndi.recv_free_video_v2(self._recv, video)
        return frame

    def close(self) -> None:
        if self._recv is not None:
            self._ndi.recv_destroy(self._recv)
            self._recv = None
        if self._find is not None:
            self._ndi.find_destroy(self._find)
            self._find = None


def parse_region(text: str) -> tuple[int, int, int, int]:
    """``WxH+X+Y`` (X11 geometry) → (left, top, width, height); raises ValueError naming ``--screen``."""
    try:
        size, x, y = text.split("+")
        width, height = (int(v) for v in size.lower().split("x"))
        region = (int(x), int(y), width, height)
    except ValueError:
        raise ValueError(f"--screen {text!r}: expected a region WIDTHxHEIGHT+LEFT+TOP such as 640x360+0+0") from None
    if width < 16 or height < 16:
        raise ValueError(f"--screen {text!r}: width and height must be at least 16 pixels")
    return region


class ScreenSource(Source):
    """A region of the screen through ``mss`` (``--screen [WxH+X+Y]``), captured at ``fps``.

    Args:
        region: (left, top, width, height) in pixels; None = the whole first monitor.
        fps: captures per second.
    """

    def __init__(self, region: tuple[int, int, int, int] | None = None, fps: float = 30.0):
        self._mss = require("mss", "--screen", "live")
        self.region = region
        self.fps = fps
        self.name = "screen"
        self._grabber = None
        self._due = 0.0

    def open(self) -> None:
        try:
            self._grabber = self._mss.mss()
        except Exception as exc:  # noqa: BLE001 - mss raises its own error type for a missing display
            raise ValueError(f"--screen: cannot capture the screen here ({exc})") from None
        if self.region is None:
            monitor = self._grabber.monitors[1]
            self.region = (monitor["left"], monitor["top"], monitor["width"], monitor["height"])
        self._due = time.monotonic()

    def read(self) -> np.ndarray | None:
        self._due = max(self._due + 1 / self.fps, time.monotonic() - 1 / self.fps)
        wait = self._due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        left, top, width, height = self.region
        shot = self._grabber.grab({"left": left, "top": top, "width": width, "height": height})
        return cv2.cvtColor(np.asarray(shot), cv2.COLOR_BGRA2RGB)

    def close(self) -> None:
        if self._grabber is not None:
            self._grabber.close()
            self._grabber = None


class NewestFrame:
    """The newest frame a source delivered, with its number and arrival time; thread-safe.

    One thread :meth:`put` s, others :meth:`wait_newer` for a frame they have
    not seen. Older frames are simply replaced: a reader that falls behind
    gets the newest, and :attr:`count` tells how many it skipped.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self.count = 0  # frames put so far; the newest is number count - 1
        self.arrival_s = 0.0  # time.monotonic() of the newest

    def put(self, frame: np.ndarray, arrival_s: float) -> None:
        with self._cond:
            self._frame, self.arrival_s = frame, arrival_s
            self.count += 1
            self._cond.notify_all()

    def wait_newer(self, seen: int, timeout_s: float) -> tuple[int, np.ndarray, float] | None:
        """(number, frame, arrival time) of the newest frame once it is numbered ``seen`` or later; None after ``timeout_s``."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.count > seen, timeout=timeout_s):
                return None
            return self.count - 1, self._frame, self.arrival_s

    def newest(self) -> tuple[int, np.ndarray, float] | None:
        with self._cond:
            return None if self._frame is None else (self.count - 1, self._frame, self.arrival_s)
