"""The work folder that makes long renders resumable.

A job writing ``OUTPUT`` keeps its state in ``OUTPUT.dreamreel/`` beside it:

* ``job.json``: what the job is (input file, settings); a rerun with other
  settings is refused instead of mixing two looks in one video;
* ``frames/000000.png``…: every finished frame, written to a temporary name
  and renamed, so a frame on disk is always whole;
* ``lock``: the process id of the run that owns the folder.

Finished frames are the whole state: a video lane or a zoom loop restarts
from the last frame it wrote (the carried picture is always the 8-bit frame
that was saved, and each frame's random source depends only on its index),
so a resumed run produces the same frames as an uninterrupted one. (With
video ``--batch`` > 1 the batch composition changes float rounding, so a
resumed run matches only to within the dream's own variation.)
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
from pathlib import Path

import cv2
import numpy as np

SUFFIX = ".dreamreel"
# PNG level 1: ~3x faster to write than the default level 3 for ~10% more
# bytes; the frames are temporary.
PNG_COMPRESSION = 1


class JobLocked(ValueError):
    """Another live run owns the work folder."""


class DiskError(OSError):
    """Writing to the work folder failed (disk full, permissions)."""


def work_folder(output: str | Path) -> Path:
    """``OUTPUT.dreamreel`` beside the output path."""
    output = Path(output)
    return output.parent / (output.name.rstrip("/") + SUFFIX)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class WorkDir:
    """The work folder of one job.

    Args:
        output: the job's output path.
        job: JSON-serialisable description of the job (input and settings).
    """

    def __init__(self, output: str | Path, job: dict):
        self.path = work_folder(output)
        self.job = json.loads(json.dumps(job, default=str))
        self.frames = self.path / "frames"
        self._locked = False

    # -- lifecycle ------------------------------------------------------------

    def open(self) -> int:
        """Create or reopen the folder, take the lock; returns frames already done.

        Raises:
            JobLocked: a live run holds the lock.
            ValueError: the folder belongs to a job with other settings.
        """
        try:
            self.frames.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"cannot create the work folder {self.path}: {exc.strerror}") from None
        self._lock()
        job_file = self.path / "job.json"
        if job_file.exists():
            try:
                old = json.loads(job_file.read_text())
            except (OSError, ValueError):
                old = None
            if old is not None and old != self.job:
                self.release()
                changed = sorted(k for k in set(old) | set(self.job) if old.get(k) != self.job.get(k))
                raise ValueError(
                    f"{self.path} holds frames of a different job ({', '.join(changed)} changed): "
                    f"rerun with the original settings to resume, or delete the folder to start over"
                )
        self._write(job_file, json.dumps(self.job, indent=1).encode())
        return len(self.done())

    def _lock(self) -> None:
        lock = self.path / "lock"
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    owner = json.loads(lock.read_text())
                except (OSError, ValueError):
                    owner = {}
                same_host = owner.get("host") == me["host"]
                if same_host and isinstance(owner.get("pid"), int) and _alive(owner["pid"]):
                    raise JobLocked(
                        f"another dreamreel run (pid {owner['pid']}) is writing this output; "
                        f"wait for it, or stop it first (its work folder is {self.path})"
                    ) from None
                lock.unlink(missing_ok=True)  # stale: its run was killed
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self._locked = True
            return
        raise JobLocked(f"could not take the lock {lock}")

    def release(self) -> None:
        """Drop the lock (frames stay)."""
        if self._locked:
            (self.path / "lock").unlink(missing_ok=True)
            self._locked = False

    def remove(self) -> None:
        """Delete the whole folder after the output is safely written."""
        self.release()
        shutil.rmtree(self.path, ignore_errors=True)

    # -- frames ---------------------------------------------------------------

    def frame_path(self, index: int) -> Path:
        return self.frames / f"{index:06d}.png"

    def done(self) -> set[int]:
        """Indices of the frames on disk."""
        return {int(p.stem) for p in self.frames.glob("[0-9]*.png")}

    def save_frame(self, index: int, rgb: np.ndarray) -> None:
        """Write frame ``index`` (H, W, 3) RGB uint8, atomically.

        Raises:
            DiskError: the write failed; earlier frames are untouched.
        """
        ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
        if not ok:
            raise DiskError(f"could not encode frame {index} as PNG")
        self._write(self.frame_path(index), data.tobytes())

    def load_frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as (H, W, 3) RGB uint8."""
        bgr = cv2.imread(str(self.frame_path(index)), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DiskError(f"frame {self.frame_path(index)} is unreadable; delete it and rerun to redo it")
        return bgr[:, :, ::-1].copy()

    def _write(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            hint = "free some space and" if exc.errno == errno.ENOSPC else "fix that and"
            raise DiskError(
                f"could not write {path} ({exc.strerror}); finished frames are kept: {hint} rerun the same command to continue"
            ) from None
