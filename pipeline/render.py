"""The render job: where finished frames go, shared by `video`, `zoom` and the distributed renderer.

A job writing ``OUTPUT`` keeps its state in the work folder ``OUTPUT.dreamreel/``
beside it:

* ``job.json``: what the job is (kind, input files, settings); a rerun with
  other settings is refused instead of mixing two looks in one video;
* ``frames/frame_000000.png``…: every finished frame, by index from 0 (see
  :mod:`files`), written atomically, so a frame on disk is always whole;
* ``lock``: an OS file lock (:mod:`filelock`) held while a run owns the
  folder. The kernel drops it when its process ends, however it ends, so a
  killed run never blocks the next and a reused process id means nothing;
  ``owner.json`` names the holder's pid for the error message only.

A folder that holds no finished picture holds nothing to lose: a run that
fails or is stopped before its first frame removes it, and a job with other
settings replaces one that was killed before its first frame, so the
corrected rerun of a refused command is never refused for the mistake.
Whoever takes the lock also removes the hidden temporary files a killed run
left beside the output and in the folder (its ``.OUTPUT.*.partial.mp4``).

Finished frames are the whole state: a video lane or a zoom loop restarts
from the last frame it wrote (the carried picture is always the 8-bit frame
that was saved, and each frame's random source depends only on its index),
so a resumed run produces the same frames as an uninterrupted one. (With
video ``--batch`` > 1 the batch composition changes float rounding, so a
resumed run matches only to within the dream's own variation.)

Using a job, in four steps::

    with RenderJob.open(out, job_record("zoom", compute, ...), total, writer=lambda: FrameWriter(...)) as job:
        ...                                     # load the model; job.done, job.load_frame() to resume
        with job.running(desc="zooming", progress=True):
            for t in frames_to_do:              # any order
                if job.stop_requested:          # first Ctrl-C or SIGTERM
                    break
                job.put(t, rgb)                 # or job.add_saved(t): a worker wrote it
        return job.finish()                     # RenderResult; Interrupted after a Ctrl-C or SIGTERM

Leaving the ``with`` block by an exception aborts: the writer is killed, the
lock released, the finished frames kept for a rerun. While running, two
threads work beside the caller so that saving and encoding cost the dreaming
loop nothing (both release the GIL in OpenCV and ffmpeg): one saves each frame
to the work folder, one feeds frames to the writer strictly in order as soon
as the next one is saved (video lanes finish frames out of order). Queues are
bounded, so memory stays flat however long the render.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .encode import FrameWriter, clear_frames_folder, output_kind
from .files import frame_indices, frame_path, load_image, remove_temps, save_image, write_atomically

SUFFIX = ".dreamreel"
QUEUE_FRAMES = 8  # frames in flight between the loop and the savers
# Saving a 1280x720 frame (PNG, plain level 1) took 90-160 ms of one core on
# the 16-core GPU host while flow ran beside it, so 3 savers capped a GPU
# video at about 25 frames/s; savers share the queue.
SAVER_THREADS = 6
# Signals that stop a render after the frames in hand: Ctrl-C, and the polite
# kill of process managers and schedulers (`kill PID`, `timeout`, systemd).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class JobLocked(ValueError):
    """Another live run owns the work folder."""


class DiskError(OSError):
    """Writing to the work folder failed (disk full, permissions)."""


class Interrupted(KeyboardInterrupt):
    """A render was stopped by a signal (Ctrl-C's SIGINT or SIGTERM); finished frames are kept.

    Attributes:
        signum: the signal; a command line exits with 128 + signum (130, 143).
    """

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass(frozen=True)
class RenderResult:
    """What a render did.

    Attributes:
        output: the finished output path.
        frames: frames in the output.
        fps: frames per second of the output.
        seconds: wall time from :meth:`RenderJob.running` to the finished output.
        resumed_from: frames already on disk when the job opened (0 = a fresh start).
        lanes: parallel lanes the frames were dreamed in (video ``--batch``).
    """

    output: Path
    frames: int
    fps: float
    seconds: float
    resumed_from: int
    lanes: int = 1


def work_folder(output: str | Path) -> Path:
    """``OUTPUT.dreamreel`` beside the output path."""
    output = Path(output)
    return output.parent / (output.name.rstrip("/") + SUFFIX)


def job_record(kind: str, compute, **parts) -> dict:
    """What a job is, as ``job.json`` stores it: its ``kind``, ``compute``'s fields but the device and compile, and ``parts``.

    ``compute`` is a :class:`~dreamreel.pipeline.dream.ComputeSettings`; the
    device and ``compile`` are left out because they change only float
    rounding, so a render begun on one device, or compiled, may be finished
    on another, or not. Its files (a model file, ``weights``, ``labels``,
    ``guide``: its ``input_files()``) are recorded as their
    :func:`file_stamp`, so a file changed between two runs is a changed job,
    not a mixed look. Parts hold the job's settings and :func:`file_stamp` of
    its input files.
    """
    settings = {name: value for name, value in asdict(compute).items() if name not in ("device", "compile")}
    for flag, path in compute.input_files().items():
        settings[flag.removeprefix("--")] = file_stamp(path)
    return json.loads(json.dumps({"kind": kind, "compute": settings, **parts}, default=str))


def file_stamp(path: str | Path | None) -> dict | None:
    """An input file as ``job.json`` records it: absolute path, size and modification time (None stays None)."""
    if path is None:
        return None
    stat = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": stat.st_size, "mtime": int(stat.st_mtime)}


class RenderJob:
    """One render: work folder and lock, frame saver, encoder, progress bar and Ctrl-C.

    Make one with :meth:`open`; see the module docstring for the order of calls.

    Attributes:
        output: the output path.
        total: frames of the output.
        done: indices of the frames already on disk when the job opened.
        writer: the output's :class:`~dreamreel.pipeline.encode.FrameWriter`.
    """

    def __init__(self, output: Path, total: int, lock, done: set[int]):
        """Use :meth:`open`."""
        self.output = output
        self.folder = work_folder(output)
        self.frames = self.folder / "frames"
        self.total = total
        self.done = frozenset(done)
        self.writer: FrameWriter | None = None
        self._lock = lock
        self._saved = set(done)
        self._recent: dict[int, np.ndarray] = {}
        self._cond = threading.Condition()
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_FRAMES)
        self._error: BaseException | None = None
        self._aborting = self._saver_done = self._closed = False
        self._savers: list[threading.Thread] = []
        self._encoder: threading.Thread | None = None
        self._savers_running = 0
        self._bar = None
        self._stop_signal: int | None = None
        self._start_time = 0.0

    # -- open ---------------------------------------------------------------------

    @classmethod
    def open(cls, output: str | Path, job: dict, total: int, *, writer: Callable[[], FrameWriter]) -> RenderJob:
        """Create or reopen the work folder of ``output``, take its lock, check the job, then make the writer.

        Call it once everything the job needs has been checked (model,
        objective, schedules, input and output): a refusal before this leaves
        nothing on disk.

        Args:
            output: the output path.
            job: what the job is (:func:`job_record`); JSON-serialisable.
            total: frames of the output.
            writer: makes the output's writer; called once the folder is open
                and, on a resume into a frames folder, the interrupted run's
                partial copy there is removed (it is re-written from the work folder).

        Raises:
            JobLocked: a live run holds the lock (a ValueError: exit code 2).
            ValueError: the folder cannot be made, or holds finished frames
                of a job with other settings; or ``writer`` refused the output.
                Unless it holds finished frames, the folder is removed again.
        """
        from filelock import FileLock, Timeout

        output = Path(output)
        folder = work_folder(output)
        try:
            (folder / "frames").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"cannot create the work folder {folder}: {exc.strerror}") from None
        lock = FileLock(folder / "lock", timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise JobLocked(
                f"another dreamreel run{_owner(folder)} is writing this output; "
                f"wait for it, or stop it first (its work folder is {folder})"
            ) from None
        try:
            # the lock is ours: what a killed run of this output left behind goes
            for temps in (output.parent, folder, folder / "frames", output):
                remove_temps(temps, output.name if temps == output.parent else None)
            if _holds_pictures(folder):
                _check_job(folder / "job.json", job)
            else:  # nothing to lose: whatever job this was, it becomes this one
                _empty(folder)
            _write(folder / "owner.json", json.dumps({"pid": os.getpid()}).encode())
            _write(folder / "job.json", json.dumps(job, indent=1, default=str).encode())
            render = cls(output, total, lock, frame_indices(folder / "frames"))
            if render.done and output_kind(output) == "frames":
                clear_frames_folder(output)
            render.writer = writer()
        except BaseException:
            _release(folder, lock)
            raise
        return render

    def load_frame(self, index: int) -> np.ndarray:
        """Finished frame ``index`` as (H, W, 3) RGB uint8, from the work folder.

        Raises:
            DiskError: the file is damaged.
        """
        path = frame_path(self.frames, index)
        try:
            return load_image(path)
        except ValueError:
            raise DiskError(f"frame {path} is unreadable; delete it and rerun to redo it") from None

    # -- run ----------------------------------------------------------------------

    @contextmanager
    def running(self, *, desc: str, progress: bool = True) -> Iterator[RenderJob]:
        """Start the saver and the encoder and show a progress bar (``desc``); catch Ctrl-C and SIGTERM inside the block.

        The first Ctrl-C (or SIGTERM) sets :attr:`stop_requested` (the caller
        finishes the frames in hand); a second raises :class:`Interrupted`
        at once. Leaving the block gives both signals back; the saver and the
        encoder run on until :meth:`finish` or :meth:`abort`.
        """
        from tqdm import tqdm

        self._bar = tqdm(total=self.total, initial=len(self.done), desc=desc, unit="frame", disable=not progress)
        self._savers = [threading.Thread(target=self._save_loop, name="dreamreel-saver", daemon=True) for _ in range(SAVER_THREADS)]
        self._encoder = threading.Thread(target=self._encode_loop, name="dreamreel-encoder", daemon=True)
        self._savers_running = len(self._savers)
        for thread in [*self._savers, self._encoder]:
            thread.start()
        self._start_time = time.perf_counter()
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {signum: signal.signal(signum, self._on_signal) for signum in STOP_SIGNALS}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    @property
    def stop_requested(self) -> bool:
        """True after the first Ctrl-C or SIGTERM: stop dreaming new frames, then call :meth:`finish`."""
        return self._stop_signal is not None

    def put(self, index: int, rgb: np.ndarray) -> None:
        """Hand over finished frame ``index`` (H, W, 3) RGB uint8; blocks while the saver is behind.

        Raises:
            DiskError: saving an earlier frame failed.
        """
        self._put((index, rgb))

    def add_saved(self, index: int) -> None:
        """Frame ``index`` is already in the work folder (a Ray worker wrote it): count it and encode it in turn."""
        self._put((index, None))

    def finish(self, *, lanes: int = 1) -> RenderResult:
        """Wait until every frame is saved and encoded, finalise the output and delete the work folder.

        After a Ctrl-C or SIGTERM (:attr:`stop_requested`) the output is not
        written: :meth:`abort`, then raise :class:`Interrupted`.

        Args:
            lanes: reported in the result (video ``--batch``).

        Raises:
            DiskError, FFmpegError: saving or encoding failed; frames are kept.
            Interrupted: Ctrl-C was pressed, or SIGTERM came.
        """
        if self._stop_signal is not None:
            self.abort()
            raise Interrupted(self._stop_signal)
        if self._encoder is None:
            raise RuntimeError("RenderJob.finish() called before running(): no frame was rendered")
        self._stop_savers()
        self._encoder.join()
        self._raise_worker_error()
        self.writer.close()
        self._bar.close()
        seconds = time.perf_counter() - self._start_time
        shutil.rmtree(self.folder, ignore_errors=True)
        self._lock.release()
        self._closed = True
        return RenderResult(self.output, self.total, float(self.writer.fps), seconds, len(self.done), lanes)

    def abort(self) -> None:
        """Stop after saving the frames handed over; write no output, keep the frames, drop the lock.

        A work folder left without any finished picture is removed. Calling it
        again, or after :meth:`finish`, does nothing.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self._encoder is not None:
                self._stop_savers()
                with self._cond:
                    self._aborting = True
                    self._cond.notify_all()
                self._encoder.join()
                self._bar.close()
            if self.writer is not None:
                self.writer.abort()
        finally:
            _release(self.folder, self._lock)

    def __enter__(self) -> RenderJob:
        return self

    def __exit__(self, *exc) -> None:
        self.abort()

    # -- inside ------------------------------------------------------------------

    def _put(self, item) -> None:
        while True:  # never block forever on a saver that died
            self._raise_worker_error()
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _stop_savers(self) -> None:
        """Let the savers save what is queued, then end them (one None each; a saver that failed takes none)."""
        for _ in self._savers:
            while any(saver.is_alive() for saver in self._savers):
                try:
                    self._queue.put(None, timeout=0.5)
                    break
                except queue.Full:
                    continue
        for saver in self._savers:
            saver.join()

    def _raise_worker_error(self) -> None:
        """Re-raise an error from the saver or the encoder in the caller's thread."""
        if self._error is not None:
            raise self._error

    def _save_loop(self) -> None:
        while (item := self._queue.get()) is not None:
            index, rgb = item
            try:
                if rgb is not None:  # None: written by a worker (add_saved)
                    self._save_frame(index, rgb)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                self._fail(exc)
                return
            with self._cond:  # the savers share the bar too
                self._saved.add(index)
                if rgb is not None and len(self._recent) < QUEUE_FRAMES:
                    self._recent[index] = rgb
                self._cond.notify_all()
                self._bar.update(1)
        with self._cond:
            self._savers_running -= 1
            self._saver_done = self._savers_running == 0
            self._cond.notify_all()

    def _encode_loop(self) -> None:
        index = 0
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(
                        lambda: index >= self.total or index in self._saved or self._saver_done
                        or self._aborting or self._error is not None
                    )  # fmt: skip
                    if index >= self.total or self._aborting or self._error is not None:
                        return
                    if index not in self._saved:  # the saver has finished, yet frame `index` never came
                        raise RuntimeError(f"frame {index} of {self.total} was never rendered")
                    rgb = self._recent.pop(index, None)
                self.writer.write(rgb if rgb is not None else self.load_frame(index))
                index += 1
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        with self._cond:
            if self._error is None:
                self._error = exc
            self._cond.notify_all()

    def _save_frame(self, index: int, rgb: np.ndarray) -> None:
        path = frame_path(self.frames, index)
        try:
            save_image(path, rgb, work=True)
        except OSError as exc:
            raise _disk_error(path, exc) from None

    def _on_signal(self, signum, frame) -> None:
        if self._stop_signal is not None:
            raise Interrupted(signum)
        self._stop_signal = signum
        again = "Ctrl-C again" if signum == signal.SIGINT else f"{signal.Signals(signum).name} again"
        print(f"\ndreamreel: stopping after the frames in hand ({again} to stop now)", flush=True)


def _owner(folder: Path) -> str:
    """`` (pid N)`` of the run holding ``folder``'s lock, as it recorded itself; empty if unknown."""
    try:
        return f" (pid {int(json.loads((folder / 'owner.json').read_text())['pid'])})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _holds_pictures(folder: Path) -> bool:
    """Whether a work folder holds a finished picture: a frame, or a video lane's part."""
    return any(folder.rglob("*.png"))


def _empty(folder: Path) -> None:
    """Remove all but the lock and the frames folder from a work folder that holds no finished picture."""
    for entry in folder.iterdir():
        if entry.name not in ("lock", "frames"):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _release(folder: Path, lock) -> None:
    """Release a job's lock, removing its work folder first if it holds no finished picture (as :meth:`RenderJob.finish` does)."""
    try:
        if not _holds_pictures(folder):
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        lock.release()


def _changed(old: dict, new: dict) -> list[str]:
    """Keys whose values differ, and inside settings dicts their keys: ``["compute.guide", "dream.octaves"]``."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += [f"{key}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            changed.append(key)
    return changed


def _check_job(job_file: Path, job: dict) -> None:
    """Raise ValueError if ``job_file`` describes another job than ``job`` (naming the settings that differ)."""
    try:
        old = json.loads(job_file.read_text())
    except (OSError, ValueError):
        return  # a job file cut short: nothing to compare
    job = json.loads(json.dumps(job, default=str))
    if isinstance(old, dict) and old != job:
        changed = _changed(old, job)
        raise ValueError(
            f"{job_file.parent} holds frames of a different job ({', '.join(changed)} changed): "
            f"rerun with the original settings to resume, or delete the folder to start over"
        )


def _write(path: Path, data: bytes) -> None:
    try:
        write_atomically(path, data)
    except OSError as exc:
        raise _disk_error(path, exc) from None


def _disk_error(path: Path, exc: OSError) -> DiskError:
    hint = "free some space and" if exc.errno == errno.ENOSPC else "fix that and"
    return DiskError(
        f"could not write {path} ({exc.strerror}); finished frames are kept: {hint} rerun the same command to continue"
    )
