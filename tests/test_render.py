"""render: the job's lock, job check, frames in and out of order, stop, abort, resume, and a full disk."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from conftest import read_png_frames
from dreamreel.pipeline.decode import read_frames
from dreamreel.pipeline.dream import ComputeSettings, DreamSettings
from dreamreel.pipeline.encode import EncodeSettings
from dreamreel.pipeline.files import frame_path, save_image
from dreamreel.pipeline.render import DiskError, JobLocked, RenderJob, file_stamp, job_record, work_folder
from dreamreel.pipeline.zoom import ZoomSettings, dream_zoom

JOB = {"kind": "video", "input": "/clips/in.mp4", "dream": {"octaves": 3, "step": 0.01}, "video": {"blend": 0.6}}


def frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)


class ListWriter:
    """A FrameWriter stand-in that keeps what it is given."""

    fps = Fraction(25)

    def __init__(self):
        self.frames: list[np.ndarray] = []
        self.closed = self.aborted = False

    def write(self, rgb):
        self.frames.append(rgb)

    def close(self):
        self.closed = True

    def abort(self):
        self.aborted = True


def open_job(tmp_path: Path, total: int = 4, job: dict = JOB) -> RenderJob:
    return RenderJob.open(tmp_path / "out.mp4", job, total, writer=ListWriter)


def render(job: RenderJob, indices) -> None:
    with job.running(desc="test", progress=False):
        for t in indices:
            job.put(t, frame(t))


@pytest.fixture
def live_pid():
    """The pid of a process that stays alive for the test (and holds no lock)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


# --- the job ---------------------------------------------------------------------------


def test_work_folder_sits_beside_the_output(tmp_path):
    assert work_folder(tmp_path / "out.mp4") == tmp_path / "out.mp4.dreamreel"
    assert work_folder(f"{tmp_path}/frames/") == tmp_path / "frames.dreamreel"


def test_frames_arrive_in_any_order_and_are_written_in_order(tmp_path):
    with open_job(tmp_path) as job:
        assert job.done == frozenset()
        assert json.loads((job.folder / "job.json").read_text()) == JOB
        render(job, [2, 0, 3, 1])
        result = job.finish()
    assert [int(rgb[0, 0, 0]) for rgb in job.writer.frames] == [int(frame(t)[0, 0, 0]) for t in range(4)]
    for t, rgb in enumerate(job.writer.frames):
        np.testing.assert_array_equal(rgb, frame(t))
    assert job.writer.closed and not job.writer.aborted
    assert (result.frames, result.fps, result.resumed_from, result.lanes) == (4, 25.0, 0, 1)
    assert not job.folder.exists()  # deleted once the output is written


def test_an_error_aborts_keeps_the_frames_and_a_rerun_resumes_from_them(tmp_path):
    with pytest.raises(RuntimeError, match="model fell over"):
        with open_job(tmp_path) as job:
            render(job, [0, 1])
            raise RuntimeError("model fell over")
    assert job.writer.aborted and not job.writer.closed
    assert sorted(p.name for p in job.frames.iterdir()) == ["frame_000000.png", "frame_000001.png"]

    with open_job(tmp_path) as again:  # the lock was released
        assert again.done == {0, 1}
        np.testing.assert_array_equal(again.load_frame(1), frame(1))
        render(again, [2, 3])
        result = again.finish()
    assert result.resumed_from == 2
    for t, rgb in enumerate(again.writer.frames):  # frames 0 and 1 come from the work folder
        np.testing.assert_array_equal(rgb, frame(t))


def test_first_ctrl_c_finishes_the_frames_in_hand_then_stops(tmp_path):
    with open_job(tmp_path) as job:
        with job.running(desc="test", progress=False):
            job.put(0, frame(0))
            os.kill(os.getpid(), signal.SIGINT)  # the handler only sets the flag
            time.sleep(0.05)
            assert job.stop_requested
            job.put(1, frame(1))  # the frame in hand
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back
        with pytest.raises(KeyboardInterrupt):
            job.finish()
    assert job.writer.aborted and not job.writer.closed
    assert job.folder.is_dir()
    with open_job(tmp_path) as again:
        assert again.done == {0, 1}


def test_sigterm_stops_like_ctrl_c_and_says_which_signal(tmp_path):
    from dreamreel.pipeline.render import Interrupted

    before = signal.getsignal(signal.SIGTERM)  # SIG_DFL, or the handler a local Ray left in this process
    with open_job(tmp_path) as job:
        with job.running(desc="test", progress=False):
            job.put(0, frame(0))
            os.kill(os.getpid(), signal.SIGTERM)  # the handler only sets the flag
            time.sleep(0.05)
            assert job.stop_requested
        assert signal.getsignal(signal.SIGTERM) is before  # given back
        with pytest.raises(Interrupted) as stopped:
            job.finish()
    assert stopped.value.signum == signal.SIGTERM and isinstance(stopped.value, KeyboardInterrupt)
    with open_job(tmp_path) as again:
        assert again.done == {0}


def test_frames_another_process_wrote_are_encoded_in_turn(tmp_path):
    with open_job(tmp_path, total=3) as job:
        with job.running(desc="test", progress=False):
            job.put(0, frame(0))
            for t in (2, 1):  # as a distributed worker leaves them in the work folder
                save_image(frame_path(job.frames, t), frame(t))
                job.add_saved(t)
        job.finish()
    for t, rgb in enumerate(job.writer.frames):
        np.testing.assert_array_equal(rgb, frame(t))


def test_a_frame_never_put_is_an_error_not_a_hang(tmp_path):
    with pytest.raises(RuntimeError, match="frame 1 of 3 was never rendered"):
        with open_job(tmp_path, total=3) as job:
            render(job, [0, 2])
            job.finish()


def test_other_settings_are_refused_naming_what_changed(tmp_path):
    with open_job(tmp_path) as job:
        render(job, [0])
    changed = {**JOB, "dream": {"octaves": 4, "step": 0.01}, "model": "vgg16"}
    with pytest.raises(ValueError, match=r"different job \(dream.octaves, model changed\).*original settings"):
        open_job(tmp_path, job=changed)
    with open_job(tmp_path) as again:  # nothing lost, and the refusal left the folder unlocked
        assert again.done == {0}


def test_job_record_keeps_settings_and_input_files_but_not_the_device_or_compile(tmp_path):
    clip = tmp_path / "in.mp4"
    clip.write_bytes(b"12345")
    record = job_record("video", ComputeSettings(device="cpu", precision="fp32"), input=file_stamp(clip), clip={"max_frames": 3})
    assert record["kind"] == "video" and record["clip"] == {"max_frames": 3}
    assert record["input"] == {"path": str(clip.resolve()), "size": 5, "mtime": int(clip.stat().st_mtime)}
    assert record["compute"]["precision"] == "fp32" and "device" not in record["compute"] and "compile" not in record["compute"]
    assert file_stamp(None) is None
    assert job_record("video", ComputeSettings(device="cuda", compile="on"), input=file_stamp(clip), clip={"max_frames": 3}) == {
        **record, "compute": {**record["compute"], "precision": "auto"}
    }  # fmt: skip


def test_an_impossible_work_folder_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="cannot create the work folder"):
        RenderJob.open(tmp_path / "file" / "out.mp4", JOB, 4, writer=ListWriter)


def test_a_writer_that_refuses_releases_the_lock_and_leaves_no_work_folder(tmp_path):
    def refuse():
        raise ValueError("--codec nope: not an encoder")

    with pytest.raises(ValueError, match="--codec nope"):
        RenderJob.open(tmp_path / "out.mp4", JOB, 4, writer=refuse)
    assert not work_folder(tmp_path / "out.mp4").exists()  # nothing was done, nothing is left
    fixed = {**JOB, "dream": {"octaves": 4, "step": 0.01}}  # the corrected rerun may change any setting
    with open_job(tmp_path, job=fixed) as job:
        assert json.loads((job.folder / "job.json").read_text()) == fixed


def test_a_job_without_finished_frames_is_replaced_by_one_with_other_settings(tmp_path):
    # A run killed before its first frame leaves its job record (and a lane plan) behind.
    folder = work_folder(tmp_path / "out.mp4")
    (folder / "frames").mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps(JOB))
    (folder / "plan.json").write_text("{}")
    fixed = {**JOB, "video": {"blend": 0.9}}
    with open_job(tmp_path, job=fixed) as job:
        assert json.loads((job.folder / "job.json").read_text()) == fixed
        assert not (job.folder / "plan.json").exists()  # the old job's plan goes with it
        render(job, [0])
    with pytest.raises(ValueError, match=r"different job \(video.blend changed\)"):  # now it holds a frame: kept
        open_job(tmp_path)


def test_an_abort_before_any_frame_removes_the_work_folder(tmp_path):
    with pytest.raises(RuntimeError, match="the model would not load"):
        with open_job(tmp_path):
            raise RuntimeError("the model would not load")
    assert not work_folder(tmp_path / "out.mp4").exists()


def test_files_behind_the_settings_are_stamped_so_a_changed_file_is_a_changed_job(tmp_path):
    guide, labels = tmp_path / "guide.png", tmp_path / "classes.txt"
    guide.write_bytes(b"a guide")
    labels.write_text("me\n")
    compute = ComputeSettings(model=str(labels), weights=str(labels), labels=str(labels), guide=str(guide))
    record = job_record("zoom", compute)
    for name in ("model", "weights", "labels", "guide"):
        assert record["compute"][name] == file_stamp(guide if name == "guide" else labels)
    assert job_record("zoom", ComputeSettings())["compute"]["model"] == "efficientnet-lite0"  # a name stays a name
    with open_job(tmp_path, job=record) as job:
        render(job, [0])
    guide.write_bytes(b"another guide")
    with pytest.raises(ValueError, match=r"different job \(compute\.guide changed\)"):
        open_job(tmp_path, job=job_record("zoom", compute))


def test_a_killed_runs_hidden_partial_files_are_removed_when_the_job_reopens(tmp_path):
    out = tmp_path / "out.mp4"
    leftovers = [tmp_path / ".out.mp4.0123abcd.partial.mp4", tmp_path / ".out.mp4.89abcdef.muxed.mp4"]
    others = [tmp_path / ".other.mp4.0123abcd.partial.mp4", tmp_path / ".out.mp4.notes", tmp_path / "out.mp4.txt"]
    with open_job(tmp_path) as job:
        render(job, [0])
    for path in [*leftovers, *others, job.frames / ".frame_000001.png.0123abcd.partial"]:
        path.write_bytes(b"left by a killed run")
    with RenderJob.open(out, JOB, 4, writer=ListWriter) as job:
        assert job.done == {0}
        assert [p for p in leftovers if p.exists()] == [] and all(p.exists() for p in others)
        assert [p.name for p in job.frames.iterdir()] == ["frame_000000.png"]


# --- the lock ---------------------------------------------------------------------------------

HOLD_LOCK = """
import sys, time
from pathlib import Path
from dreamreel.pipeline.render import JobLocked, RenderJob
class Writer:
    def abort(self): pass
try:
    job = RenderJob.open(Path(sys.argv[1]), {"kind": "video"}, 4, writer=Writer)
except JobLocked as exc:
    print("refused:", exc, flush=True)
    sys.exit(2)
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
job.abort()
"""


def hold_lock(out: Path, seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out), str(seconds)], stdout=subprocess.PIPE, text=True)


def test_a_second_open_while_a_live_run_holds_the_lock_is_refused_naming_it(tmp_path):
    holder = hold_lock(tmp_path / "out.mp4", 30)
    try:
        assert holder.stdout.readline() == "holding\n"
        with pytest.raises(JobLocked, match=rf"another dreamreel run \(pid {holder.pid}\) is writing this output; wait"):
            RenderJob.open(tmp_path / "out.mp4", {"kind": "video"}, 4, writer=ListWriter)
    finally:
        holder.kill()
        holder.wait()
    # killed outright: the kernel dropped its lock with it
    with RenderJob.open(tmp_path / "out.mp4", {"kind": "video"}, 4, writer=ListWriter):
        pass


def test_a_second_job_in_this_process_is_refused_until_the_first_ends(tmp_path):
    first = open_job(tmp_path)
    with pytest.raises(JobLocked, match=f"pid {os.getpid()}"):
        open_job(tmp_path)
    first.abort()
    with open_job(tmp_path) as second:
        assert second.done == frozenset()


@pytest.mark.parametrize("content", ["dead", "live", "", "not json"])
def test_a_lock_file_left_by_a_run_that_ended_does_not_block(tmp_path, live_pid, content):
    # "live": the pid written there now belongs to another process (reused),
    # which holds no lock; the earlier pid-file lock took it for the owner
    folder = work_folder(tmp_path / "out.mp4")
    (folder / "frames").mkdir(parents=True)
    pid = {"dead": 2**22 + 1, "live": live_pid}.get(content)
    text = json.dumps({"pid": pid, "host": socket.gethostname()}) if pid else content
    (folder / "lock").write_text(text)
    (folder / "owner.json").write_text(text)
    with open_job(tmp_path) as job:
        assert json.loads((job.folder / "owner.json").read_text()) == {"pid": os.getpid()}


def test_of_runs_started_together_on_a_stale_lock_exactly_one_gets_it(tmp_path):
    folder = work_folder(tmp_path / "out.mp4")
    (folder / "frames").mkdir(parents=True)
    (folder / "lock").write_text(json.dumps({"pid": 2**22 + 1}))  # a killed run's
    runs = [hold_lock(tmp_path / "out.mp4", 3) for _ in range(4)]
    lines = [run.stdout.readline() for run in runs]
    for run in runs:
        run.wait(timeout=30)
    assert sorted(line.split(":")[0].strip() for line in lines) == ["holding", "refused", "refused", "refused"]


@pytest.mark.slow
def test_cli_refuses_a_second_run_of_the_same_output_with_one_line(tmp_path, start_cli):
    out = tmp_path / "out.mp4"
    args = ["zoom", out, "--frames", "400", "--size", "32x32", "--octaves", "1", "--iterations", "1", "--device", "cpu", "--quiet"]
    first = start_cli(*args, pause_s=0.1)
    deadline = time.monotonic() + 60
    while not list((work_folder(out) / "frames").glob("frame_*.png")):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.02)
    second = start_cli(*args)
    _, err = second.communicate(timeout=60)
    assert second.returncode == 2
    lines = [line for line in err.splitlines() if line.startswith("dreamreel")]
    assert lines == [f"dreamreel: error: another dreamreel run (pid {first.pid}) is writing this output; "
                     f"wait for it, or stop it first (its work folder is {work_folder(out)})"]  # fmt: skip
    first.kill()
    first.communicate()


@pytest.mark.slow
def test_cli_stops_on_sigterm_like_ctrl_c_and_a_killed_runs_partial_file_goes(tmp_path, start_cli):
    from conftest import _wait_for_frames

    out = tmp_path / "out.mp4"
    frames = work_folder(out) / "frames"
    args = ["zoom", out, "--frames", "12", "--size", "32x32", "--octaves", "1", "--iterations", "1", "--device", "cpu", "--quiet"]
    hidden = lambda: sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))  # noqa: E731
    # 1. killed outright: its encoder's hidden partial file stays beside the output
    proc = start_cli(*args, pause_s=0.15)
    _wait_for_frames(proc, frames, 2)
    proc.kill()
    proc.communicate()
    assert [name for name in hidden() if name.startswith(".out.mp4.") and name.endswith(".partial.mp4")], hidden()
    # 2. SIGTERM: the frames in hand are finished, the work kept, exit code 143; the killed run's file is gone
    killed_at = len(list(frames.iterdir()))
    proc = start_cli(*args, pause_s=0.15)
    _wait_for_frames(proc, frames, killed_at + 2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "stopping after the frames in hand (SIGTERM again to stop now)" in stdout
    assert f"finished frames are kept in {work_folder(out)}. Run the same command again" in stderr
    assert hidden() == [] and not out.exists()
    # 3. the rerun finishes from there
    proc = start_cli(*args)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert hidden() == [] and not work_folder(out).exists() and out.exists()


# --- frames on disk -------------------------------------------------------------------------------


def test_a_failed_rename_leaves_the_old_frame_and_no_temporary_file(tmp_path, monkeypatch):
    with open_job(tmp_path) as job:
        render(job, [0])

    def no_rename(src, dst):
        raise OSError(errno.EIO, "Input/output error")

    with open_job(tmp_path) as job:
        monkeypatch.setattr(os, "replace", no_rename)
        # the savers share the queue: whichever of frames 1 and 2 is written first fails
        with pytest.raises(DiskError, match=r"could not write .*frame_00000[12]\.png \(Input/output error\); finished frames are kept"):
            render(job, [1, 2])
            job.finish()
    monkeypatch.undo()
    assert sorted(p.name for p in job.frames.iterdir()) == ["frame_000000.png"]
    np.testing.assert_array_equal(job.load_frame(0), frame(0))


def test_an_unreadable_frame_says_to_delete_it(tmp_path):
    with open_job(tmp_path) as job:
        (job.frames / "frame_000003.png").write_bytes(b"\x89PNG half a frame")
        with pytest.raises(DiskError, match=r"frame_000003\.png is unreadable; delete it and rerun"):
            job.load_frame(3)


def fill_disk_after(monkeypatch, frames: int) -> None:
    """Let the work folder take ``frames`` more frames, then fail every frame write with ENOSPC."""
    import builtins

    real_open = builtins.open
    written = []

    def open_or_full(path, mode="r", *args, **kwargs):
        if "w" in mode and Path(path).name.startswith(".frame_") and str(path).endswith(".partial"):
            if len(written) >= frames:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            written.append(path)
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("dreamreel.pipeline.files.open", open_or_full, raising=False)


@pytest.mark.usefixtures("one_torch_thread")
def test_disk_full_keeps_the_frames_and_a_rerun_finishes(tmp_path, monkeypatch, tiny_model, use_model):
    use_model(tiny_model)
    settings = DreamSettings(octaves=1, iterations=1, step=0.05, jitter=4, seed=1)
    compute, zoom, encode = ComputeSettings(device="cpu", precision="fp32"), ZoomSettings(), EncodeSettings()

    def run(out):
        return dream_zoom(out, settings, compute, zoom, encode, frames=10, size=(32, 32), progress=False)

    run(tmp_path / "whole")

    out = tmp_path / "out.mp4"
    fill_disk_after(monkeypatch, 4)
    message = r"frame_000004\.png \(No space left on device\); finished frames are kept: free some space and rerun the same"
    with pytest.raises(DiskError, match=message):
        run(out)
    frames = work_folder(out) / "frames"
    assert sorted(p.name for p in frames.iterdir()) == [f"frame_00000{t}.png" for t in range(4)]  # no temporary file
    assert not out.exists()
    whole = read_png_frames(tmp_path / "whole")
    for t, rgb in enumerate(read_png_frames(frames)):
        np.testing.assert_array_equal(rgb, whole[t])

    monkeypatch.undo()  # space freed
    use_model(tiny_model)
    assert run(out).resumed_from == 4
    assert len(list(read_frames(out))) == 10 and not work_folder(out).exists()
