"""distributed: one video dreamed by Ray workers, equal to the single-process run, surviving lost workers and drivers.

One local Ray (``ray.init(num_cpus=2)``) serves the module. Its workers get the
tiny random model through a process setup hook (:func:`use_tiny_model`), and
each dream call is slowed to ``PAUSE_S`` so a test can act part-way through.
The driver checks the look on a model of its own before any worker starts;
a test that gives the driver another model than the workers' makes a
failure that happens only inside the workers. Bad input that the driver can
refuse is refused before Ray starts (:func:`no_ray_start`).
The clip has three shots of 6 frames, so the plan splits it at cuts only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_tiny_model, read_png_frames, textured_frame
from dreamreel.cli.main import main
from dreamreel.pipeline.dream import ComputeSettings, DreamSettings
from dreamreel.pipeline.encode import EncodeSettings, FrameWriter
from dreamreel.pipeline.render import work_folder
from dreamreel.pipeline.segments import find_cuts
from dreamreel.pipeline.decode import read_frames
from dreamreel.pipeline.video import VideoSettings, dream_video

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TESTS = Path(__file__).parent
PAUSE_S = 0.1
SETTINGS = DreamSettings(octaves=1, iterations=2, step=0.02, jitter=4, seed=3)
CPU = ComputeSettings(device="cpu", precision="fp32")
VIDEO = VideoSettings(blend=0.6, iterations_next=1, batch=1)
ENCODE = EncodeSettings()
SHOTS, SHOT_FRAMES = 3, 6


def use_tiny_model() -> None:
    """Ray worker setup hook: the tiny model for every Dreamer, each dream call slowed down."""
    from dreamreel.pipeline import dream, models

    models.load_model = lambda *args, **kwargs: make_tiny_model()
    pause_s = float(os.environ.get("DREAMREEL_TEST_PAUSE_S", "0"))
    dream_batch = dream.Dreamer.__call__

    def paced(self, *args, **kwargs):
        time.sleep(pause_s)
        return dream_batch(self, *args, **kwargs)

    dream.Dreamer.__call__ = paced


RUNTIME_ENV = {
    "worker_process_setup_hook": "test_distributed.use_tiny_model",
    "env_vars": {"PYTHONPATH": str(TESTS), "DREAMREEL_TEST_PAUSE_S": str(PAUSE_S), "OMP_NUM_THREADS": "1"},
}


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=RUNTIME_ENV)
    yield ray
    ray.shutdown()


@pytest.fixture
def tiny_driver(use_model):
    """The driver checks the look on the tiny model, as its workers dream it."""
    use_model(make_tiny_model())


@pytest.fixture
def no_ray_start(monkeypatch):
    """Starting or joining Ray fails the test: what it runs must be refused before."""
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)

    def init(*args, **kwargs):
        raise AssertionError("Ray was started before the bad input was refused")

    monkeypatch.setattr(ray, "init", init)


@pytest.fixture(scope="module")
def shots_clip(tmp_path_factory) -> Path:
    """Three shots of 6 frames, 48x48, each a different textured picture panning 4 px right a frame."""
    path = tmp_path_factory.mktemp("shots") / "shots.mp4"
    with FrameWriter(path, fps=25, size=(48, 48), settings=EncodeSettings(crf=0)) as writer:
        for shot in range(SHOTS):
            picture = textured_frame(48, 48 + 4 * SHOT_FRAMES, seed=10 + shot)
            for t in range(SHOT_FRAMES):
                writer.write(np.ascontiguousarray(picture[:, 4 * t : 4 * t + 48]))
    return path


@pytest.fixture(scope="module")
def single_process(shots_clip, tmp_path_factory, one_torch_thread) -> list[np.ndarray]:
    """The clip dreamed in this process, one lane: what every Ray run must equal."""
    import dreamreel.pipeline.models as models

    load = models.load_model
    models.load_model = lambda *args, **kwargs: make_tiny_model()
    try:
        out = tmp_path_factory.mktemp("single") / "out"
        dream_video(shots_clip, out, SETTINGS, CPU, VIDEO, ENCODE, progress=False)
    finally:
        models.load_model = load
    return read_png_frames(out)


def dreamed_count(text: str) -> int:
    return int(text.rsplit(" frames dreamed by", 1)[0].rsplit("dreamreel: ", 1)[1])


@pytest.mark.slow
def test_three_shots_on_two_workers_equal_the_single_process_run(ray_cluster, tiny_driver, shots_clip, single_process, tmp_path, capsys):
    from dreamreel.pipeline.distributed import RaySettings, dream_video_ray

    assert find_cuts(read_frames(shots_clip)) == (18, (6, 12))  # the plan splits at the two cuts only
    result = dream_video_ray(shots_clip, tmp_path / "out", SETTINGS, CPU, VIDEO, ENCODE, RaySettings(workers=2),
                             progress=False, verbose=True)  # fmt: skip
    outputs = read_png_frames(tmp_path / "out")
    assert result.frames == len(outputs) == len(single_process) == 18 and result.lanes == 2
    for t, (a, b) in enumerate(zip(single_process, outputs)):
        np.testing.assert_array_equal(a, b, err_msg=f"frame {t}")
    printed = capsys.readouterr().out
    assert printed.count("dreamreel: worker ") == 2  # both workers dreamed
    assert dreamed_count(printed) == 18  # every frame once
    assert not work_folder(tmp_path / "out").exists()


def _worker_pids() -> list[int]:
    """Process ids of the live SegmentWorker actors (Ray titles them ``ray::SegmentWorker...``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"ray::SegmentWorker" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _wait(condition, timeout_s: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def frames_done(out: Path) -> int:
    folder = work_folder(out) / "frames"
    return len(list(folder.glob("frame_*.png"))) if folder.is_dir() else 0


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds worker processes in /proc")
def test_a_worker_killed_mid_run_is_replaced_and_the_job_finishes(ray_cluster, tiny_driver, shots_clip, single_process, tmp_path):
    from dreamreel.pipeline.distributed import RaySettings, dream_video_ray

    out = tmp_path / "out"
    outcome = {}
    run = threading.Thread(
        target=lambda: outcome.update(result=dream_video_ray(
            shots_clip, out, SETTINGS, CPU, VIDEO, ENCODE, RaySettings(workers=2), progress=False)),
    )  # fmt: skip
    run.start()
    _wait(lambda: frames_done(out) >= 3 and len(_worker_pids()) == 2, what="3 frames from 2 workers")
    os.kill(_worker_pids()[0], signal.SIGKILL)
    run.join(timeout=180)
    assert not run.is_alive() and "result" in outcome
    outputs = read_png_frames(out)
    assert len(outputs) == 18
    for t, (a, b) in enumerate(zip(single_process, outputs)):
        np.testing.assert_array_equal(a, b, err_msg=f"frame {t}")


# A driver in its own process, joining the module's Ray with workers that dream
# PAUSE seconds a frame: ``python -c DRIVER PAUSE``. Ctrl-C exits 130, as the CLI does.
DRIVER = """
import sys
sys.path.insert(0, {tests!r})
import ray
from test_distributed import CPU, ENCODE, RUNTIME_ENV, SETTINGS, VIDEO, use_tiny_model
from dreamreel.pipeline.distributed import RaySettings, dream_video_ray
use_tiny_model()  # the driver checks the look on the workers' model
env_vars = {{**RUNTIME_ENV["env_vars"], "DREAMREEL_TEST_PAUSE_S": sys.argv[1]}}
ray.init(address={address!r}, runtime_env={{**RUNTIME_ENV, "env_vars": env_vars}}, log_to_driver=False)
try:
    result = dream_video_ray({clip!r}, {out!r}, SETTINGS, CPU, VIDEO, ENCODE, RaySettings(workers=2), progress=False, verbose=True)
except KeyboardInterrupt:
    sys.exit(130)
print("resumed from", result.resumed_from)
"""


@pytest.mark.slow
def test_a_killed_driver_resumes_to_identical_frames_without_dreaming_any_twice(ray_cluster, shots_clip, single_process, tmp_path):
    out = tmp_path / "out"
    script = DRIVER.format(tests=str(TESTS), address=ray_cluster.get_runtime_context().gcs_address, clip=str(shots_clip), out=str(out))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    driver = subprocess.Popen([sys.executable, "-c", script, str(PAUSE_S)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _wait(lambda: frames_done(out) >= 4 or driver.poll() is not None, what="4 frames")
    driver.send_signal(signal.SIGKILL)
    driver.communicate()
    # Its workers die with it; wait until nothing more lands in the work folder.
    _wait(lambda: not _worker_pids(), what="the dead driver's workers to go")
    killed_at = frames_done(out)
    assert 4 <= killed_at < 18
    rerun = subprocess.run([sys.executable, "-c", script, str(PAUSE_S)], capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resumed from {killed_at}" in rerun.stdout
    assert dreamed_count(rerun.stdout) == 18 - killed_at  # nothing dreamed twice
    outputs = read_png_frames(out)
    assert len(outputs) == 18
    for t, (a, b) in enumerate(zip(single_process, outputs)):
        np.testing.assert_array_equal(a, b, err_msg=f"frame {t}")


def test_ray_without_the_extra_is_one_line_naming_it(shots_clip, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    assert main(["video", str(shots_clip), str(tmp_path / "out.mp4"), "--ray", "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "dreamreel[ray]"' in err, err


def test_ray_settings_refuse_nonsense():
    from dreamreel.pipeline.distributed import RaySettings

    with pytest.raises(ValueError, match="--segment-frames 0"):
        RaySettings(segment_frames=0)
    with pytest.raises(ValueError, match="--threads"):
        RaySettings(threads=True)


@pytest.mark.slow
def test_the_cut_pass_in_ray_tasks_finds_what_one_pass_finds(ray_cluster, shots_clip, tmp_path, monkeypatch):
    import dataclasses

    from dreamreel.pipeline import distributed
    from dreamreel.pipeline.video import open_clip

    clip = open_clip(shots_clip, tmp_path / "out.mp4").counted()
    assert (clip.total, clip.cuts) == (18, (6, 12))
    for chunk in (18, 50):  # the container says the clip fits in one chunk: read on the driver
        assert distributed.find_cuts_ray(ray_cluster, clip, chunk_frames=chunk) == (18, (6, 12)), chunk
    probe = distributed.decode.probe_video
    monkeypatch.setattr(distributed.decode, "probe_video", lambda path: dataclasses.replace(probe(path), frame_count_estimate=None))
    for chunk in (4, 6, 7, 18, 50):  # in tasks: chunk borders on a cut, beside one, at the end, past it
        assert distributed.find_cuts_ray(ray_cluster, clip, chunk_frames=chunk) == (18, (6, 12)), chunk


@pytest.mark.slow
def test_dream_videos_dreams_a_list_in_one_queue(ray_cluster, tiny_driver, shots_clip, single_process, tmp_path):
    from dreamreel.pipeline.distributed import RaySettings, dream_videos

    outs = [tmp_path / "a", tmp_path / "b.mp4"]
    results = dream_videos([(shots_clip, outs[0]), (shots_clip, outs[1])], SETTINGS, CPU, VIDEO, ENCODE,
                           RaySettings(workers=2), progress=False)  # fmt: skip
    assert [r.output for r in results] == outs and [r.frames for r in results] == [18, 18]
    for t, (a, b) in enumerate(zip(single_process, read_png_frames(outs[0]))):
        np.testing.assert_array_equal(a, b, err_msg=f"frame {t}")
    assert len(list(read_frames(outs[1]))) == 18 and not work_folder(outs[1]).exists()


@pytest.mark.slow
def test_the_progress_bar_moves_per_frame_not_per_segment(ray_cluster, tiny_driver, tmp_path, monkeypatch):
    """One shot is one segment: each frame reaches the job (bar and encoder) on its own while the worker still dreams.

    The driver looks every 20 ms here and a worker finishes a frame every
    ``PAUSE_S`` (0.1 s) or more, so frames handed over as they are finished
    arrive one by one; a driver that looked once, or only at the segment's
    end, would hand them over in one or two bursts.
    """
    from dreamreel.pipeline import distributed
    from dreamreel.pipeline.render import RenderJob

    clip = tmp_path / "shot.mp4"
    picture = textured_frame(48, 48 + 4 * 16, seed=5)
    with FrameWriter(clip, fps=25, size=(48, 48), settings=EncodeSettings(crf=0)) as writer:
        for t in range(16):
            writer.write(np.ascontiguousarray(picture[:, 4 * t : 4 * t + 48]))
    added = []
    add_saved = RenderJob.add_saved
    monkeypatch.setattr(RenderJob, "add_saved", lambda self, t: added.append(time.perf_counter()) or add_saved(self, t))
    monkeypatch.setattr(distributed, "PROGRESS_POLL_S", 0.02)
    distributed.dream_video_ray(clip, tmp_path / "out.mp4", SETTINGS, CPU, VIDEO, ENCODE, distributed.RaySettings(workers=1), progress=False)
    assert len(added) == 16
    bursts = 1 + sum(b - a > PAUSE_S / 2 for a, b in zip(added, added[1:]))
    assert bursts >= 10, f"16 frames reached the job in {bursts} bursts"


# --- bad input: one line, exit code 2, as from one process -----------------------------

REFUSED_BEFORE_RAY = [
    (["{tmp}/missing.mp4", "{tmp}/o.mp4"], "missing.mp4"),
    (["{clip}", "{clip}"], "is the input file"),
    (["{clip}", "{tmp}/o.mp4", "--objective", "nosuchlayer"], "unknown layer 'nosuchlayer'"),
    (["{clip}", "{tmp}/o.mp4", "--batch", "2"], "--batch 2"),
    (["{clip}", "{tmp}/o.mp4", "--ray", "127.0.0.1:1"], "--ray 127.0.0.1:1: nothing listens there"),
    (["{clip}", "{tmp}/o.mp4", "--ray", "headnode"], "--ray headnode: expected"),
    (["{clip}", "{tmp}/o.mp4", "--ray", "ray://127.0.0.1:1"], "--ray ray://127.0.0.1:1: nothing listens there"),
]


@pytest.mark.parametrize("argv, message", REFUSED_BEFORE_RAY, ids=[c[1] for c in REFUSED_BEFORE_RAY])
def test_bad_input_is_refused_in_one_line_before_ray_starts(shots_clip, tmp_path, no_ray_start, capsys, argv, message):
    args = [a.replace("{tmp}", str(tmp_path)).replace("{clip}", str(shots_clip)) for a in argv]
    ray = [] if "--ray" in args else ["--ray"]
    assert main(["video", *args, *ray, "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dreamreel: error: ") and err.count("\n") == 1 and message in err, err
    assert not work_folder(tmp_path / "o.mp4").exists()


def _silent_server(reply: bytes | None):
    """A listening socket on 127.0.0.1 that answers every connection with ``reply``, or keeps silent (None)."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # closed: the test is over
                return
            if reply is not None:
                conn.sendall(reply)
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return server


@pytest.mark.parametrize("reply, message", [(b"HTTP/1.0 400 Bad request\r\n\r\n", "not a Ray cluster"), (None, "no answer within 0.5 s")])
def test_an_address_where_no_ray_answers_is_one_line_within_the_timeout(shots_clip, tmp_path, no_ray_start, monkeypatch, capsys,
                                                                        reply, message):  # fmt: skip
    from dreamreel.pipeline import distributed

    monkeypatch.setattr(distributed, "CONNECT_TIMEOUT_S", 0.5)
    with _silent_server(reply) as server:
        address = "127.0.0.1:%d" % server.getsockname()[1]
        assert main(["video", str(shots_clip), str(tmp_path / "o.mp4"), "--ray", address, "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dreamreel: error: --ray {address}: ") and err.count("\n") == 1 and message in err, err


def test_ray_auto_without_a_cluster_says_how_to_start_one(shots_clip, tmp_path, tiny_driver, monkeypatch, capsys):
    ray = pytest.importorskip("ray")

    def init(address=None, **kwargs):  # what Ray raises when `auto` finds no cluster
        assert address == "auto"
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to by setting "
                              "`--address` flag or `RAY_ADDRESS` environment variable.")  # fmt: skip

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    assert main(["video", str(shots_clip), str(tmp_path / "o.mp4"), "--ray", "auto", "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dreamreel: error: --ray auto: no Ray cluster") and "ray start --head" in err, err
    assert "--address" not in err and err.count("\n") == 1


def test_ray_alone_starts_a_ray_of_its_own(shots_clip, tmp_path, tiny_driver, monkeypatch, capsys):
    """Not the cluster a `ray start` on this machine last recorded (Ray's choice for no address), which may be gone."""
    ray = pytest.importorskip("ray")
    addresses = []

    def init(address=None, **kwargs):
        addresses.append(address)
        raise ValueError("stop here")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    assert main(["video", str(shots_clip), str(tmp_path / "o.mp4"), "--ray", "--device", "cpu", "--quiet"]) == 2
    assert addresses == ["local"] and "stop here" in capsys.readouterr().err


def test_the_address_check_lets_a_real_cluster_through(ray_cluster):
    from dreamreel.pipeline.distributed import check_address

    check_address(ray_cluster.get_runtime_context().gcs_address)  # no ValueError


def _main_within(argv: list[str], timeout_s: float = 120.0) -> int:
    """``main(argv)`` in a thread; fails the test if it has not returned within ``timeout_s`` (a run that waits forever)."""
    outcome = {}
    run = threading.Thread(target=lambda: outcome.update(code=main(argv)), daemon=True)
    run.start()
    run.join(timeout_s)
    assert "code" in outcome, f"dreamreel {' '.join(argv)} was still running after {timeout_s} s"
    return outcome["code"]


@pytest.mark.parametrize("flags, message", [
    (["--threads", "3"], "--threads 3: a worker needs 3 CPUs, and the Ray cluster has 2"),
    (["--device", "cuda"], "--device cuda: the Ray cluster has no GPU"),
    (["--device", "cuda:1"], "--device cuda:1: "),
    (["--precision", "fp16"], "--precision fp16: half precision is not supported on the CPU"),
])  # fmt: skip
def test_workers_the_cluster_cannot_hold_are_refused(ray_cluster, tiny_driver, shots_clip, tmp_path, capsys, flags, message):
    assert _main_within(["video", str(shots_clip), str(tmp_path / "o.mp4"), "--ray", "--quiet", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dreamreel: error: ") and err.count("\n") == 1 and message in err, err


@pytest.mark.slow
def test_a_bad_objective_found_inside_a_worker_is_the_one_line_of_one_process(ray_cluster, shots_clip, tmp_path, use_model, capsys):
    """The driver's model knows the layer ``driver_only``; the workers' model does not, so the look fails inside them."""
    argv = ["--objective", "driver_only", "--device", "cpu", "--quiet"]
    use_model(make_tiny_model())
    assert main(["video", str(shots_clip), str(tmp_path / "single.mp4"), *argv]) == 2
    one_process = capsys.readouterr().err
    assert "unknown layer 'driver_only'" in one_process and one_process.count("\n") == 1
    model = make_tiny_model()
    model.aliases["driver_only"] = "conv3"
    use_model(model)
    assert _main_within(["video", str(shots_clip), str(tmp_path / "o.mp4"), "--ray", "--workers", "2", *argv]) == 2
    assert capsys.readouterr().err == one_process  # the worker's own message, once: no retries, no traceback
    assert not work_folder(tmp_path / "o.mp4").exists()  # refused before the job began


@pytest.mark.slow
def test_ctrl_c_stops_every_worker_at_its_frame_in_hand_and_the_rerun_resumes(ray_cluster, tiny_driver, shots_clip, single_process,
                                                                              tmp_path, capsys):  # fmt: skip
    """Two workers dream a 6-frame shot each at 0.5 s a frame; Ctrl-C after 2 frames stops both within a frame or two."""
    from dreamreel.pipeline.distributed import RaySettings, dream_video_ray

    out = tmp_path / "out"
    script = DRIVER.format(tests=str(TESTS), address=ray_cluster.get_runtime_context().gcs_address, clip=str(shots_clip), out=str(out))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    driver = subprocess.Popen([sys.executable, "-c", script, "0.5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _wait(lambda: frames_done(out) >= 2 or driver.poll() is not None, what="2 frames")
    at_signal = frames_done(out)
    driver.send_signal(signal.SIGINT)
    stdout, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr
    assert "stopping after the frames in hand" in stdout
    _wait(lambda: not _worker_pids(), what="the driver's workers to go")
    stopped_at = frames_done(out)
    assert stopped_at < 2 * SHOT_FRAMES  # the two shots in hand were not finished
    assert stopped_at <= at_signal + 2 * 2, (at_signal, stopped_at)  # each worker: the frame it dreamed, and one in flight
    result = dream_video_ray(shots_clip, out, SETTINGS, CPU, VIDEO, ENCODE, RaySettings(workers=2), progress=False, verbose=True)
    assert result.resumed_from == stopped_at
    assert dreamed_count(capsys.readouterr().out) == 18 - stopped_at  # each worker resumed after its last frame
    outputs = read_png_frames(out)
    assert len(outputs) == 18
    for t, (a, b) in enumerate(zip(single_process, outputs)):
        np.testing.assert_array_equal(a, b, err_msg=f"frame {t}")
