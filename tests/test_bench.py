"""The benchmark runs end to end on a tiny clip and reports what it measured.

One quick run (64x48, 4 frames, one octave, one iteration, one thread) is
shared by the tests; it takes 20-30 s, most of it the two fresh processes of
the memory check loading torch. Values are checked for presence, sign and
consistency, never against expected timings.
"""

from __future__ import annotations

import json
import math

import pytest

from dreamreel.pipeline import bench

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def result() -> dict:
    return bench.run_benchmark(
        size=(64, 48), frames=4, iterations=1, octaves=1, device="cpu", threads=1, quick=True, log=None
    )


def test_every_measurement_is_reported_finite_and_positive(result):
    missing = [key for key in bench.REQUIRED_KEYS if key not in result]
    assert not missing
    for key in bench.REQUIRED_KEYS:
        if key == "device":
            continue
        value = result[key]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)
    assert result["device"] == "cpu"
    for stage, ms in result["stage_ms_per_frame"].items():
        assert math.isfinite(ms) and ms > 0, (stage, ms)


def test_ratios_are_computed_from_the_measured_rates(result):
    r = result
    assert r["pipeline_efficiency"] == pytest.approx(r["fps_pipeline"] / r["fps_dream_only"])
    assert r["speedup_vs_naive"] == pytest.approx(r["fps_pipeline"] / r["fps_naive"])
    assert r["memory_ratio_long_short"] == pytest.approx(r["peak_rss_long_mb"] / r["peak_rss_short_mb"])
    assert r["percent_of_peak"] == pytest.approx(100 * r["gflops_achieved"] / r["gflops_peak"])
    assert r["gflops_achieved"] == pytest.approx(r["gflop_per_iteration"] / (r["ms_per_iteration"] / 1000))
    assert r["objective_ratio_fast_vs_fp32"] == pytest.approx(r["objective_fast"] / r["objective_fp32"])
    assert r["stage_ms_per_frame"]["dream"] == pytest.approx(1000 / r["fps_dream_only"])
    # three rates measured separately do not coincide by accident
    assert len({r["fps_dream_only"], r["fps_pipeline"], r["fps_naive"]}) == 3


def test_dreaming_raises_the_objective_in_both_precisions(result):
    assert result["objective_fp32"] > result["objective_start"]
    assert result["objective_fast"] > result["objective_start"]


def test_settings_used_are_reported(result):
    s = result["settings"]
    assert (s["size"], s["frames"], s["frames_long"]) == ("64x48", 4, 4 * bench.LONG_CLIP_FACTOR)
    assert (s["octaves"], s["iterations"], s["batch"], s["torch_threads"], s["quick"]) == (1, 1, 1, 1, True)
    assert s["model"] == "efficientnet-lite0" and s["input"] == "generated pan"


def test_result_is_json_and_the_table_names_each_measurement(result):
    assert json.loads(json.dumps(result)) == result
    table = bench.format_table(result)
    for words in ("ascent iteration", "matmul", "dream only", "whole pipeline", "naive", "peak RSS", "objective"):
        assert words in table


def test_bad_settings_are_refused_before_any_work():
    with pytest.raises(ValueError, match="--size"):
        bench.run_benchmark(size=(63, 48), log=None)
    with pytest.raises(ValueError, match="--frames"):
        bench.run_benchmark(frames=1, log=None)


def test_command_line_refuses_size_with_input(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--input", "clip.mp4", "--size", "64x48"])
    assert exit_info.value.code == 2
    assert "--size" in capsys.readouterr().err


def test_pan_clip_is_deterministic_and_moves():
    first = bench.pan_texture((32, 16), 3)
    again = bench.pan_texture((32, 16), 3)
    assert (first == again).all()
    frame0, frame1 = bench.pan_frame(first, (32, 16), 0), bench.pan_frame(first, (32, 16), 1)
    dx, dy = bench.PAN_PX_PER_FRAME
    assert frame0.shape == (16, 32, 3)
    assert (frame1[: 16 - dy, : 32 - dx] == frame0[dy:, dx:]).all()
