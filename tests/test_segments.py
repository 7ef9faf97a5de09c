"""segments: scene cuts found with colour and flow, lane and Ray plans, crossfaded pictures.

The footage is generated (conftest.textured_frame): shots are crops of textured
pictures, panning a few pixels a frame; "similar colour" shots are two crops of
one picture (the same palette), grey shots have no colour at all.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import textured_frame
from dreamreel.pipeline import segments
from dreamreel.pipeline.flow import CutDetector, color_histogram_distance
from dreamreel.pipeline.segments import Segment, SegmentPictures, SegmentPlan, find_cuts, plan_lanes, plan_segments


def pan(picture: np.ndarray, frames: int, size: tuple[int, int], y0: int = 0, x0: int = 0) -> list[np.ndarray]:
    """``frames`` crops of ``picture`` (height, width ``size``) moving 2 px down and 4 px right a frame."""
    h, w = size
    return [np.ascontiguousarray(picture[y0 + 2 * t : y0 + 2 * t + h, x0 + 4 * t : x0 + 4 * t + w]) for t in range(frames)]


def grey(frame: np.ndarray) -> np.ndarray:
    return np.repeat(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)


# --- cuts ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 64), (120, 160), (360, 640)])
def test_cuts_between_shots_of_similar_colour_are_found_by_the_flow_check(size):
    h, w = size
    picture = textured_frame(h + 10, w + 20, seed=3)
    # The second shot pans over the picture turned upside down, starting on the
    # last frame of the first turned over: the same colours, so the colour
    # histograms do not differ at all.
    shot_a = pan(picture, 6, size)
    shot_b = pan(picture[::-1, ::-1], 6, size)
    np.testing.assert_array_equal(shot_b[0], shot_a[-1][::-1, ::-1])
    assert color_histogram_distance(shot_a[-1], shot_b[0]) < 0.01  # the colour signal alone misses it
    assert find_cuts(shot_a + shot_b) == (12, (6,))


@pytest.mark.parametrize("size", [(64, 64), (360, 640)])
def test_cuts_in_grey_footage_are_found(size):
    h, w = size
    shots = [pan(grey(textured_frame(h + 40, w + 80, seed)), 5, size) for seed in (1, 2, 4)]
    assert find_cuts(shots[0] + shots[1] + shots[2]) == (15, (5, 10))


def test_pans_and_brightness_changes_are_not_cuts():
    h, w = 120, 160
    frames = pan(textured_frame(h + 40, w + 80, seed=5), 10, (h, w))
    frames[5:] = [np.clip(f.astype(int) * 1.1, 0, 255).astype(np.uint8) for f in frames[5:]]  # +10 % brightness
    assert find_cuts(frames) == (10, ())
    assert find_cuts(frames[:1]) == (1, ()) and find_cuts([]) == (0, ())


def test_cut_detector_shrinks_large_frames_but_sees_the_same_cut():
    big = textured_frame(720 + 40, 1280 + 80, seed=6)
    detect = CutDetector()
    assert not detect(big[:720, :1280])
    assert not detect(np.ascontiguousarray(big[2:722, 4:1284]))
    assert detect(np.ascontiguousarray(big[40:760, 80:1360][::-1]))


# --- plans ----------------------------------------------------------------------------


def check_plan(plan: SegmentPlan) -> None:
    """Every frame is made by one segment or crossfaded from two, with weights summing to 1."""
    for t in range(plan.total):
        pieces = plan.pieces(t)
        assert sum(w for _, w in pieces) == pytest.approx(1.0)
        for k, w in pieces:
            seg = plan.segments[k]
            assert seg.first <= t < seg.stop and 0 < w <= 1


@pytest.mark.parametrize("total, lanes, warmup", [(10, 1, 6), (16, 2, 6), (17, 3, 4), (100, 7, 6), (5, 3, 10), (3, 8, 2), (1, 4, 6)])
def test_lanes_without_cuts_are_equal_with_warm_up_frames_before_each_border(total, lanes, warmup):
    plan = plan_lanes(total, (), lanes, warmup)
    check_plan(plan)
    assert len(plan.segments) == min(lanes, total)
    assert plan.segments[0] == Segment(0, 0, plan.segments[0].stop)
    for before, seg in zip(plan.segments, plan.segments[1:]):
        assert seg.start == before.stop
        assert seg.first == max(seg.start - warmup, before.start)  # warm-up inside the lane before
    lengths = [s.stop - s.start for s in plan.segments]
    assert max(lengths) - min(lengths) <= 1


def test_lane_borders_move_to_nearby_cuts_where_they_need_no_warm_up():
    # 120 frames in 4 lanes: ideal borders 30, 60, 90; cuts at 33 (near) and 75 (too far from 60 or 90).
    plan = plan_lanes(120, (33, 75), 4, warmup=6)
    assert [(s.first, s.start, s.stop) for s in plan.segments] == [(0, 0, 33), (33, 33, 60), (54, 60, 90), (84, 90, 120)]
    check_plan(plan)
    # Warm-up never reaches back over a cut: it would be thrown away when the carry resets.
    plan = plan_lanes(120, (57,), 4, warmup=6)
    assert plan.segments[2].first == plan.segments[2].start == 57  # snapped
    plan = plan_lanes(100, (48,), 2, warmup=2)  # 48 is 2 frames from 50: snapped (slack = max(2, 5))
    assert plan.borders() == [48]
    plan = plan_from = segments.plan_from_borders(100, (48,), [50], warmup=6)
    assert plan_from.segments[1].first == 48


def test_ray_plan_is_every_shot_with_long_shots_split_evenly():
    plan = plan_segments(100, (10, 70), segment_frames=30, warmup=4)
    assert [(s.first, s.start, s.stop) for s in plan.segments] == [
        (0, 0, 10), (10, 10, 40), (36, 40, 70), (70, 70, 100),
    ]  # fmt: skip
    check_plan(plan)
    assert plan_segments(9, (3, 6), segment_frames=100, warmup=4).borders() == [3, 6]  # splits at cuts only
    with pytest.raises(ValueError, match="segment_frames 0"):
        plan_segments(9, (), segment_frames=0, warmup=4)


def test_crossfade_weights_rise_linearly_over_the_warm_up_frames():
    plan = segments.plan_from_borders(20, (), [10], warmup=4)
    assert plan.segments[1] == Segment(6, 10, 20)
    assert [plan.pieces(t) for t in (5, 6, 9, 10)] == [
        [(0, 1.0)], [(0, 0.8), (1, 0.2)], [(0, pytest.approx(0.2)), (1, 0.8)], [(1, 1.0)],
    ]  # fmt: skip


def test_plan_round_trips_through_json_and_refuses_holes(tmp_path):
    plan = plan_lanes(50, (20,), 3, 5)
    segments.save_plan(tmp_path, plan)
    assert segments.load_plan(tmp_path) == plan
    assert segments.load_plan(tmp_path / "none") is None
    with pytest.raises(ValueError, match="does not cover"):
        SegmentPlan(10, (), (Segment(0, 0, 4), Segment(5, 5, 10)))
    (tmp_path / segments.PLAN_FILE).write_text("{")
    with pytest.raises(ValueError, match="delete the work folder"):
        segments.load_plan(tmp_path)


def test_resume_step_is_the_first_step_any_unfinished_segment_lacks():
    plan = segments.plan_from_borders(30, (), [10, 20], warmup=3)  # firsts 0, 7, 17
    have = {(0, t) for t in range(6)} | {(1, t) for t in range(7, 15)} | {(2, t) for t in range(17, 30)}
    assert segments.resume_step(plan, range(3), lambda k, t: (k, t) in have) == 6  # segment 0 lacks frame 6
    assert segments.resume_step(plan, [1], lambda k, t: (k, t) in have) == 8
    assert segments.resume_step(plan, [2], lambda k, t: (k, t) in have) == 0  # all done: nothing held back


# --- pictures ---------------------------------------------------------------------------


def test_pictures_finish_single_frames_at_once_and_crossfaded_ones_when_both_parts_came(tmp_path):
    plan = segments.plan_from_borders(6, (), [3], warmup=2)  # segment 1 dreams 1..5; frames 1, 2 crossfaded
    finished = {}
    pictures = SegmentPictures(tmp_path, plan, set(), finished.__getitem__, finished.__setitem__)
    a = np.full((4, 5, 3), 90, np.uint8)
    b = np.full((4, 5, 3), 180, np.uint8)
    pictures.put(1, 1, b)  # the later segment's warm-up comes first in lockstep
    pictures.put(0, 0, a)
    assert sorted(finished) == [0]
    pictures.put(0, 1, a)
    assert sorted(finished) == [0, 1]
    np.testing.assert_array_equal(finished[1], np.full((4, 5, 3), 120, np.uint8))  # 2/3 of a, 1/3 of b
    assert pictures.has(0, 1) and pictures.has(1, 1) and not pictures.has(1, 2)
    np.testing.assert_array_equal(pictures.load(1, 1), b)  # each segment carries its own picture
    # A run killed between two parts and a save: the next run finishes the frame from the parts on disk.
    pictures.put(0, 2, a)
    pictures.put(1, 2, b)
    finished2 = {}
    again = SegmentPictures(tmp_path, plan, {0}, finished2.__getitem__, finished2.__setitem__)
    again.finish_crossfades()
    assert sorted(finished2) == [1, 2]
    np.testing.assert_array_equal(finished2[2], np.full((4, 5, 3), 150, np.uint8))
