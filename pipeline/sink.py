"""Where finished frames go: saved to the work folder and encoded, in the background.

Two worker threads run beside the model so that saving and encoding cost the
dreaming loop nothing (both release the GIL in OpenCV and ffmpeg):

1. the saver writes each finished frame to the work folder as a PNG;
2. the encoder feeds frames to the output writer strictly in order, as soon
   as the next one is saved: with video lanes, frames finish out of order.

Queues are bounded, so memory stays flat however long the render.
"""

from __future__ import annotations

import queue
import signal
import threading
from collections.abc import Callable

import numpy as np

from .workdir import WorkDir

QUEUE_FRAMES = 8  # frames in flight between the loop and the saver


class FrameSink:
    """Save and encode frames ``0..total-1`` that arrive in any order.

    Args:
        workdir: the job's work folder (already open).
        total: number of frames of the output.
        writer: a :class:`~dreamreel.pipeline.encode.FrameWriter`-like object
            with ``write(rgb)``, ``close()`` and ``abort()``.
        on_saved: called with each saved frame's index (progress bars).
    """

    def __init__(self, workdir: WorkDir, total: int, writer, on_saved: Callable[[int], None] | None = None):
        self.workdir = workdir
        self.total = total
        self.writer = writer
        self.on_saved = on_saved
        self.saved = workdir.done()
        self._recent: dict[int, np.ndarray] = {}
        self._cond = threading.Condition()
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_FRAMES)
        self._error: BaseException | None = None
        self._abort = False
        self._saver = threading.Thread(target=self._save_loop, name="dreamreel-saver", daemon=True)
        self._encoder = threading.Thread(target=self._encode_loop, name="dreamreel-encoder", daemon=True)
        self._saver.start()
        self._encoder.start()

    def put(self, index: int, rgb: np.ndarray) -> None:
        """Hand over finished frame ``index`` (H, W, 3) uint8; blocks when the queue is full."""
        self._put((index, rgb))

    def _put(self, item) -> None:
        while True:  # never block forever on a saver that died
            self.check()
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def check(self) -> None:
        """Re-raise an error from a worker thread in the caller's thread."""
        if self._error is not None:
            raise self._error

    def _save_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            index, rgb = item
            try:
                self.workdir.save_frame(index, rgb)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                self._fail(exc)
                return
            with self._cond:
                self.saved.add(index)
                if len(self._recent) < QUEUE_FRAMES:
                    self._recent[index] = rgb
                self._cond.notify_all()
            if self.on_saved:
                self.on_saved(index)

    def _encode_loop(self) -> None:
        try:
            for index in range(self.total):
                with self._cond:
                    self._cond.wait_for(lambda: index in self.saved or self._abort or self._error is not None)
                    if self._abort or self._error is not None:
                        return
                    rgb = self._recent.pop(index, None)
                self.writer.write(rgb if rgb is not None else self.workdir.load_frame(index))
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        with self._cond:
            if self._error is None:
                self._error = exc
            self._cond.notify_all()

    def finish(self) -> None:
        """Wait until every frame is saved and encoded, then finalise the output."""
        self._put(None)
        self._saver.join()
        self._encoder.join()
        self.check()
        self.writer.close()

    def end(self, *, stopped: bool) -> None:
        """:meth:`finish` the output; after a Ctrl-C (``stopped``), :meth:`abort` and raise KeyboardInterrupt."""
        if stopped:
            self.abort()
            raise KeyboardInterrupt
        self.finish()

    def abort(self) -> None:
        """Stop after saving what is queued; the output is not written."""
        if self._saver.is_alive():
            self._queue.put(None)
            self._saver.join()
        with self._cond:
            self._abort = True
            self._cond.notify_all()
        self._encoder.join()
        self.writer.abort()


class StopFlag:
    """First Ctrl-C: finish the frames in hand, then stop. Second: stop now."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ndreamreel: stopping after the frames in hand (Ctrl-C again to stop now)", flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
