"""Shared fixtures: tiny random-weight models, generated clips and sounds.

Everything is generated here, offline and seeded, so tests never download.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dreamreel.pipeline.models import DreamModel


class TinyNet(nn.Module):
    """Three conv layers and a classifier head: enough to test the mechanics."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.conv3 = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        x = self.conv3(self.conv2(self.conv1(x)))
        return self.head(x.mean((2, 3)))


def make_tiny_model(seed: int = 0) -> DreamModel:
    torch.manual_seed(seed)
    return DreamModel(
        TinyNet(),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        layer_names=["conv1", "conv2", "conv3"],
        aliases={"low": "conv1", "mid": "conv2", "high": "conv3"},
        class_names=["cat", "dog", "tabby cat", "fish", "bird"],
        name="tiny",
    )


@pytest.fixture
def tiny_model() -> DreamModel:
    return make_tiny_model()


@pytest.fixture
def textured() -> torch.Tensor:
    """(1, 3, 48, 64) smooth random texture in [0, 1], seeded."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 12, 16, generator=g)
    return torch.nn.functional.interpolate(x, size=(48, 64), mode="bilinear", align_corners=False)


# --- footage, models and a CLI runner for the video, zoom and render tests --------

import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from fractions import Fraction  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run torch on one thread for a module.

    On the 2-core development machine with other jobs running, two OpenMP
    threads spin-waiting for each other made a 64x64 dream step 10-40x
    slower than one thread (0.4 s against 15.9 s for 30 steps, measured);
    tiny pictures gain nothing from a second thread anyway.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def real_model() -> DreamModel:
    """The embedded efficientnet-lite0 (offline), loaded once per session."""
    from dreamreel.pipeline.models import load_model

    return load_model("efficientnet-lite0")


@pytest.fixture
def use_model(monkeypatch):
    """``use_model(model)``: every Dreamer built in this test gets ``model`` instead of loading one."""

    def use(model: DreamModel) -> None:
        monkeypatch.setattr("dreamreel.pipeline.models.load_model", lambda *args, **kwargs: model)

    return use


def textured_frame(height: int, width: int, seed: int) -> np.ndarray:
    """Photo-like RGB uint8 texture: smooth blobs from a per-seed palette, grain, sharp blocks."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (4, 3)).astype(np.float32)
    fields = cv2.GaussianBlur(rng.random((height, width, 4), dtype=np.float32), (0, 0), max(height, width) / 20)
    weights = np.exp(2 * (fields - fields.mean((0, 1))) / fields.std((0, 1)))
    image = (weights / weights.sum(-1, keepdims=True)) @ palette + rng.normal(0, 12, (height, width, 3))
    for _ in range(6):
        y, x = rng.integers(0, height * 5 // 6), rng.integers(0, width * 5 // 6)
        image[y : y + rng.integers(height // 10, height // 4), x : x + rng.integers(width // 10, width // 4)] = (
            rng.integers(0, 256, 3)
        )
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def make_panning_clip():
    """``make_panning_clip(path, frames=16, size=(64, 64), shift_px=(4, 2), fps=30000/1001, audio=None, seed=0)``.

    Writes a textured picture panning ``shift_px`` (x right, y down) per
    frame to ``path`` with x264 at qp 0 and returns ``path``; ``audio`` is a
    file whose sound is muxed in. Keep the shifts even: yuv420p stores colour
    on a 2x2 grid, and an odd shift resamples the colour of sharp edges every
    frame (at 64x64 that raised the clip's own warping error from 0.001 to 0.027).
    """
    from dreamreel.pipeline.encode import EncodeSettings, FrameWriter

    def make(path, *, frames=16, size=(64, 64), shift_px=(4, 2), fps=Fraction(30000, 1001), audio=None, seed=0) -> Path:
        (width, height), (dx, dy) = size, shift_px
        big = textured_frame(height + frames * dy, width + frames * dx, seed)
        settings = EncodeSettings(crf=0, codec="libx264", speed="ultrafast")  # lossless: x264, never NVENC
        with FrameWriter(path, fps=fps, size=size, settings=settings, audio_source=audio) as writer:
            for t in range(frames):
                writer.write(np.ascontiguousarray(big[t * dy : t * dy + height, t * dx : t * dx + width]))
        return Path(path)

    return make


def read_png_frames(folder) -> list[np.ndarray]:
    """The ``frame_*.png`` files of ``folder`` (a frames output or a work folder's frames) as RGB arrays, in order."""
    paths = sorted(Path(folder).glob("frame_*.png"))
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]


# The `dreamreel` command line with make_tiny_model() in place of the zoo
# model; DREAMREEL_TEST_PAUSE_S slows every dream call down so a test can
# interrupt a run part-way. At exit it prints to stderr the number of dream
# calls (so a test can tell that a rerun resumed instead of redoing), the
# peak resident memory, and the seconds between finished frames.
_CLI_WITH_TINY_MODEL = f"""
import atexit, os, sys, time
sys.path.insert(0, {str(Path(__file__).parent)!r})
from conftest import make_tiny_model
from dreamreel.pipeline import dream, models
models.load_model = lambda *args, **kwargs: make_tiny_model()
pause_s = float(os.environ.get("DREAMREEL_TEST_PAUSE_S", "0"))
calls = []
dream_batch = dream.Dreamer.__call__
def paced(self, *args, **kwargs):
    time.sleep(pause_s)
    calls.append(1)
    return dream_batch(self, *args, **kwargs)
dream.Dreamer.__call__ = paced
atexit.register(lambda: print(f"dream calls: {{len(calls)}}", file=sys.stderr))
def peak_rss():
    status = open("/proc/self/status").read()
    print("peak rss kB:", status.split("VmHWM:")[1].split()[0], file=sys.stderr)
atexit.register(peak_rss)
from dreamreel.pipeline import render
job_put, put_times = render.RenderJob.put, []
def timed_put(self, *args, **kwargs):
    put_times.append(time.perf_counter())
    return job_put(self, *args, **kwargs)
render.RenderJob.put = timed_put
def frame_seconds():
    gaps = [b - a for a, b in zip(put_times, put_times[1:])]
    print("frame seconds:", " ".join(f"{{g:.5f}}" for g in gaps), file=sys.stderr)
atexit.register(frame_seconds)
from dreamreel.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def start_cli():
    """``start_cli(*args, pause_s=0.0)``: a Popen of ``dreamreel ARGS`` with the tiny model.

    Output is captured as text; torch runs on one thread. Processes still
    running at the end of the test are killed.
    """
    started = []

    def start(*args, pause_s: float = 0.0) -> subprocess.Popen:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "DREAMREEL_TEST_PAUSE_S": str(pause_s)}
        proc = subprocess.Popen(
            [sys.executable, "-c", _CLI_WITH_TINY_MODEL, *map(str, args)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _frames_on_disk(frames_dir: Path) -> int:
    return len(list(frames_dir.glob("frame_*.png"))) if frames_dir.is_dir() else 0


def _wait_for_frames(proc: subprocess.Popen, frames_dir: Path, count: int, timeout_s: float = 120.0) -> None:
    """Wait until ``frames_dir`` holds ``count`` finished frames; fail if the run ends first."""
    import time

    deadline = time.monotonic() + timeout_s
    while _frames_on_disk(frames_dir) < count:
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"the run ended (exit {proc.returncode}) before {count} frames were done: {err}")
        if time.monotonic() > deadline:
            pytest.fail(f"fewer than {count} frames in {frames_dir} after {timeout_s} s")
        time.sleep(0.02)


@pytest.fixture
def check_resume(start_cli):
    """``check_resume(args, out, total)``: run ``dreamreel ARGS`` (writing ``out``, ``total`` frames) three times.

    1. killed with SIGKILL once 4 frames are done: the frames and the dead
       run's lock stay, no finished output appears;
    2. rerun, then Ctrl-C (SIGINT) once 4 more are done: exit code 130, a
       message saying how to resume, the work folder kept and unlocked; it
       dreamed only frames the first run had not;
    3. rerun to the end: exit code 0, only the remaining frames dreamed, the
       work folder removed.
    Each interrupted run is slowed to 0.15 s a frame so it can be caught part-way.
    """
    from filelock import FileLock

    from dreamreel.pipeline.render import work_folder

    def dream_calls(stderr: str) -> int:
        return int(stderr.rsplit("dream calls:", 1)[1])

    def check(args: list, out: Path, total: int) -> None:
        work = work_folder(out)

        def finished() -> bool:
            return len(list(out.glob("frame_*.png"))) == total if out.is_dir() else out.exists()

        # 1. killed outright
        proc = start_cli(*args, pause_s=0.15)
        _wait_for_frames(proc, work / "frames", 4)
        proc.kill()
        proc.communicate()
        killed_at = _frames_on_disk(work / "frames")
        assert killed_at < total and not finished()
        assert (work / "lock").exists()  # the file stays; the kernel dropped the dead run's lock on it
        # 2. the rerun takes over the stale lock; Ctrl-C stops it after the frames in hand
        proc = start_cli(*args, pause_s=0.15)
        _wait_for_frames(proc, work / "frames", killed_at + 4)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 130, stderr
        assert "stopping after the frames in hand" in stdout
        assert f"finished frames are kept in {work}" in stderr, stderr
        assert "Run the same command again to continue" in stderr
        interrupted_at = _frames_on_disk(work / "frames")
        assert killed_at < interrupted_at < total and not finished()
        assert dream_calls(stderr) == interrupted_at - killed_at  # nothing dreamed twice
        assert work.is_dir()
        with FileLock(work / "lock", timeout=0):  # not held: Timeout if it were
            pass
        # 3. the last rerun finishes and cleans up
        proc = start_cli(*args)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert dream_calls(stderr) == total - interrupted_at
        assert finished() and not work.exists()

    return check


# --- devices ----------------------------------------------------------------------

CUDA = pytest.param(
    "cuda",
    marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")],
)


@pytest.fixture(params=["cpu", CUDA])
def device(request) -> str:
    """Each test that takes ``device`` runs on the CPU, and again on CUDA where a GPU is present."""
    return request.param
