"""The benchmark dreams what the library dreams, runs end to end on a tiny clip, and reports it.

The end-to-end run (64x48, 4 frames, one octave, one iteration, batch 2, one
thread) goes through the installed ``dreamreel bench`` command in a fresh
process, as a user runs it; it takes 20-40 s, most of it three processes
loading torch. Its values are checked for presence, sign and what must hold
whatever the machine's speed, never against expected timings.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from dreamreel.benchmarks import bench, pan
from dreamreel.cli.main import main
from dreamreel.pipeline.dream import ComputeSettings, Dreamer, DreamSettings
from dreamreel.pipeline.encode import EncodeSettings
from dreamreel.pipeline.video import VideoSettings, dream_video

ARGS = ["--quick", "--size", "64x48", "--frames", "4", "--batch", "2", "--device", "cpu", "--threads", "1", "--json"]


@pytest.fixture(scope="module")
def result() -> dict:
    proc = subprocess.run([sys.executable, "-m", "dreamreel", "bench", *ARGS], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_every_measurement_is_reported_finite_and_positive(result):
    missing = [key for key in (*bench.REQUIRED_KEYS, "batch_n", "gpu_busy") if key not in result]
    assert not missing
    for key in bench.REQUIRED_KEYS:
        if key == "device":
            continue
        value = result[key]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)
    assert result["device"] == "cpu" and result["gpu_busy"] is None  # no GPU, no GPU figure
    assert result["batch_n"] == 2 and result["fps_dream_only"] == result["dream_fps_batchN"]
    for stage, ms in result["stage_ms_per_frame"].items():
        assert math.isfinite(ms) and ms > 0, (stage, ms)
    assert result["encode_codec"] == "libx264"  # no NVIDIA GPU here: the fall-back


@pytest.mark.slow
def test_first_frame_and_phases_fit_in_the_run(result):
    seconds = result["settings"]["seconds"]
    phases = result["phase_s"]
    assert list(phases) == ["first_frame", "clips", "iteration_and_matmul", "quality", "dream_pipeline_naive",
                            "stages", "memory"]  # fmt: skip
    assert 0 < result["first_frame_s"] < seconds
    assert sum(phases.values()) <= seconds + 0.1
    # the first frame waits for the model and the kernels: longer than a frame in the steady state
    assert result["first_frame_s"] > 1 / result["dream_fps_batch1"]


@pytest.mark.slow
def test_streaming_keeps_memory_flat_on_a_ten_times_longer_clip(result):
    s = result["settings"]
    assert s["frames_long"] == 10 * s["frames"] == 40
    assert result["memory_ratio_long_short"] < 1.25
    # by kind too: the heap (anon) the long clip leaves resident is no larger either
    short, long = result["rss_parts_mb"]["short"], result["rss_parts_mb"]["long"]
    assert set(short) == set(long) >= {"anon", "file"} and long["anon"] / short["anon"] < 1.25
    assert result["pinned_host_peak_mb"] == {"short": None, "long": None}  # page-locked memory is CUDA's


@pytest.mark.slow
def test_dreaming_raises_the_objective_in_both_precisions(result):
    assert result["objective_fp32"] > result["objective_start"]
    assert result["objective_fast"] > result["objective_start"]


@pytest.mark.slow
def test_settings_used_are_reported_and_the_table_names_each_measurement(result):
    s = result["settings"]
    assert (s["size"], s["frames"], s["octaves"], s["iterations"], s["batch"], s["torch_threads"], s["quick"]) == (
        "64x48", 4, 1, 1, 2, 1, True)  # fmt: skip
    assert s["model"] == "efficientnet-lite0" and s["input"] == "generated pan"
    table = bench.format_table(result)
    for words in ("first frame", "ascent iteration", "matmul", "dream only, batch 1", "dream only, batch 2",
                  "GPU busy -", "whole pipeline", "naive", "peak RSS", "objective", "seconds per phase"):  # fmt: skip
        assert words in table


def test_dream_only_dreams_the_frames_the_video_stage_dreams(tmp_path, make_panning_clip, tiny_model, use_model):
    """Every frame started afresh (blend 0): the harness's batches give the pipeline's own frames."""
    use_model(tiny_model)
    settings = DreamSettings(objective="mid", octaves=2, iterations=2, step=0.05, jitter=4, seed=3)
    compute = ComputeSettings(device="cpu", precision="fp32")
    clip = make_panning_clip(tmp_path / "in.mp4", frames=4, size=(48, 32))
    video = VideoSettings(blend=0.0, batch=1)
    dream_video(clip, tmp_path / "frames", settings, compute, video, EncodeSettings(), progress=False)
    from conftest import read_png_frames

    from dreamreel.pipeline.decode import read_frames

    piped = read_png_frames(tmp_path / "frames")
    inputs = list(read_frames(clip))
    dreamer = Dreamer(settings, compute)
    alone = bench.dream_batches(dreamer, inputs, settings.seed, batch=1)
    assert len(piped) == len(alone) == 4
    assert all(np.array_equal(a, b) for a, b in zip(alone, piped))
    assert not np.array_equal(alone[0], inputs[0])  # it did dream
    batched = bench.dream_batches(dreamer, inputs, settings.seed, batch=3)
    assert len(batched) == 6  # rounded up to whole batches: inputs 0 1 2 | 3 0 1
    for a, b in zip(batched[:4], alone):  # batching changes the float rounding only
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_busy_time_is_the_union_of_the_kernels():
    assert bench.busy_seconds([]) == 0
    assert bench.busy_seconds([(0, 2), (1, 3)]) == 3  # overlapping streams count once
    assert bench.busy_seconds([(5, 6), (0, 1), (0.5, 0.75)]) == 2  # unsorted, nested
    assert bench.busy_seconds([(0, 4), (1, 2), (3, 5)]) == 5


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_kernel_time_is_measured_and_below_the_wall_time():
    device = torch.device("cuda")
    a = torch.randn(2048, 2048, device=device)
    torch.cuda.synchronize()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    kernel_s = bench.gpu_kernel_seconds(lambda: [a @ a for _ in range(20)], device)
    end.record()
    torch.cuda.synchronize()
    assert 0 < kernel_s <= begin.elapsed_time(end) / 1000  # 20 matmuls run, and no longer than the GPU's clock saw


@pytest.mark.parametrize(
    "argv, message",
    [(["--input", "clip.mp4", "--size", "64x48"], "--size applies to the generated pan"),
     (["--size", "63x48"], "--size"), (["--frames", "1"], "--frames 1")],
)  # fmt: skip
def test_bad_settings_are_one_line_and_exit_2_before_any_work(capsys, argv, message):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_pan_clip_is_deterministic_and_moves():
    first = pan.pan_texture((32, 16), 3)
    again = pan.pan_texture((32, 16), 3)
    assert (first == again).all()
    frame0, frame1 = pan.pan_frame(first, (32, 16), 0), pan.pan_frame(first, (32, 16), 1)
    dx, dy = pan.PAN_PX_PER_FRAME
    assert frame0.shape == (16, 32, 3)
    assert (frame1[: 16 - dy, : 32 - dx] == frame0[dy:, dx:]).all()


def test_the_library_does_not_import_the_benchmark():
    from pathlib import Path

    import dreamreel.pipeline

    sources = Path(dreamreel.pipeline.__file__).parent.glob("*.py")
    assert not [p.name for p in sources if "benchmarks" in p.read_text(encoding="utf-8")]
