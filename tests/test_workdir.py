"""workdir: the lock, the job check, atomic frames, and a full disk part-way through a render."""

from __future__ import annotations

import builtins
import errno
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import read_png_frames
from dreamreel.pipeline.decode import read_frames
from dreamreel.pipeline.dream import ComputeSettings, DreamSettings
from dreamreel.pipeline.encode import EncodeSettings
from dreamreel.pipeline.workdir import DiskError, JobLocked, WorkDir, work_folder
from dreamreel.pipeline.zoom import ZoomSettings, dream_zoom

JOB = {"kind": "video", "input": "/clips/in.mp4", "dream": {"octaves": 3, "step": 0.01}, "video": {"blend": 0.6}}


def frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)


def write_lock(work: WorkDir, pid: int) -> None:
    work.frames.mkdir(parents=True, exist_ok=True)
    (work.path / "lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))


@pytest.fixture
def live_pid():
    """The pid of a process that stays alive for the test."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_work_folder_sits_beside_the_output(tmp_path):
    assert work_folder(tmp_path / "out.mp4") == tmp_path / "out.mp4.dreamreel"
    assert work_folder(f"{tmp_path}/frames/") == tmp_path / "frames.dreamreel"


def test_open_creates_the_folder_job_file_and_lock(tmp_path):
    work = WorkDir(tmp_path / "out.mp4", JOB)
    assert work.open() == 0
    assert json.loads((work.path / "job.json").read_text()) == JOB
    assert json.loads((work.path / "lock").read_text())["pid"] == os.getpid()
    work.release()
    assert not (work.path / "lock").exists() and (work.path / "job.json").exists()


# --- the lock ---------------------------------------------------------------------------


def test_a_live_owner_keeps_the_folder(tmp_path, live_pid):
    work = WorkDir(tmp_path / "out.mp4", JOB)
    write_lock(work, live_pid)
    with pytest.raises(JobLocked, match=rf"another dreamreel run \(pid {live_pid}\) is writing this output"):
        work.open()
    assert json.loads((work.path / "lock").read_text())["pid"] == live_pid  # left alone


def test_a_second_run_in_this_process_is_refused_until_the_first_releases(tmp_path):
    first, second = WorkDir(tmp_path / "out.mp4", JOB), WorkDir(tmp_path / "out.mp4", JOB)
    first.open()
    with pytest.raises(JobLocked, match=f"pid {os.getpid()}"):
        second.open()
    first.release()
    assert second.open() == 0


@pytest.mark.parametrize("content", ["dead", "", "not json", '{"pid": "12"}'])
def test_a_stale_or_broken_lock_is_taken_over(tmp_path, dead_pid, content):
    work = WorkDir(tmp_path / "out.mp4", JOB)
    if content == "dead":
        write_lock(work, dead_pid)
    else:
        work.frames.mkdir(parents=True)
        (work.path / "lock").write_text(content)
    work.save_frame(0, frame(0))
    assert work.open() == 1
    assert json.loads((work.path / "lock").read_text())["pid"] == os.getpid()


# --- the job check ------------------------------------------------------------------------


def test_other_settings_are_refused_naming_what_changed(tmp_path):
    work = WorkDir(tmp_path / "out.mp4", JOB)
    work.open()
    work.save_frame(0, frame(0))
    work.release()
    changed = {**JOB, "dream": {"octaves": 4, "step": 0.01}, "video": {"blend": 0.6}, "model": "vgg16"}
    with pytest.raises(ValueError, match=r"different job \(dream, model changed\).*original settings"):
        WorkDir(tmp_path / "out.mp4", changed).open()
    # Nothing was lost and the folder is not left locked: the original job resumes.
    again = WorkDir(tmp_path / "out.mp4", JOB)
    assert again.open() == 1
    np.testing.assert_array_equal(again.load_frame(0), frame(0))


# --- frames -------------------------------------------------------------------------------


def test_frames_round_trip_exactly_and_are_counted(tmp_path):
    work = WorkDir(tmp_path / "out.mp4", JOB)
    work.open()
    for t in (0, 1, 5):
        work.save_frame(t, frame(t))
    assert work.done() == {0, 1, 5}
    np.testing.assert_array_equal(work.load_frame(5), frame(5))
    assert sorted(p.name for p in work.frames.iterdir()) == ["000000.png", "000001.png", "000005.png"]


def test_a_failed_rename_leaves_the_old_frame_and_no_temporary_file(tmp_path, monkeypatch):
    work = WorkDir(tmp_path / "out.mp4", JOB)
    work.open()
    work.save_frame(0, frame(0))

    def no_rename(src, dst):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(DiskError, match="could not write .*000000.png \\(Input/output error\\)"):
        work.save_frame(0, frame(1))
    with pytest.raises(DiskError):
        work.save_frame(1, frame(1))
    monkeypatch.undo()
    np.testing.assert_array_equal(work.load_frame(0), frame(0))
    assert work.done() == {0}
    assert sorted(p.name for p in work.frames.iterdir()) == ["000000.png"]


def test_an_unreadable_frame_says_to_delete_it(tmp_path):
    work = WorkDir(tmp_path / "out.mp4", JOB)
    work.open()
    work.frame_path(3).write_bytes(b"\x89PNG half a frame")
    with pytest.raises(DiskError, match="000003.png is unreadable; delete it and rerun"):
        work.load_frame(3)


def test_an_impossible_work_folder_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="cannot create the work folder"):
        WorkDir(tmp_path / "file" / "out.mp4", JOB).open()


# --- a full disk part-way through a render --------------------------------------------------


def fill_disk_after(monkeypatch, frames: int) -> None:
    """Let the work folder take ``frames`` more frames, then fail every write with ENOSPC."""
    real_open = builtins.open
    written = []

    def open_or_full(path, mode="r", *args, **kwargs):
        if "w" in mode and str(path).endswith(".png.tmp"):
            if len(written) >= frames:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            written.append(path)
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("dreamreel.pipeline.workdir.open", open_or_full, raising=False)


@pytest.mark.usefixtures("one_torch_thread")
def test_disk_full_keeps_the_frames_and_a_rerun_finishes(tmp_path, monkeypatch, tiny_model, use_model):
    use_model(tiny_model)
    settings = DreamSettings(octaves=1, iterations=1, step=0.05, jitter=4, seed=1)
    compute, zoom, encode = ComputeSettings(device="cpu", precision="fp32"), ZoomSettings(iterations=1), EncodeSettings()

    def run(out):
        return dream_zoom(out, settings, compute, zoom, encode, frames=10, size=(32, 32), progress=False)

    run(tmp_path / "whole")

    out = tmp_path / "out.mp4"
    fill_disk_after(monkeypatch, 4)
    message = r"000004\.png \(No space left on device\); finished frames are kept: free some space and rerun the same"
    with pytest.raises(DiskError, match=message):
        run(out)
    work = WorkDir(out, {})
    assert work.done() == {0, 1, 2, 3}
    assert not out.exists() and not (work.path / "lock").exists()
    assert not list(work.frames.glob(".*.tmp"))
    whole = read_png_frames(tmp_path / "whole")
    for t in range(4):
        np.testing.assert_array_equal(work.load_frame(t), whole[t])

    monkeypatch.undo()  # space freed
    use_model(tiny_model)
    assert run(out).resumed_from == 4
    assert len(list(read_frames(out))) == 10 and not work.path.exists()
