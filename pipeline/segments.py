"""The segment plan: where a video is cut into pieces dreamed apart (video lanes and Ray workers).

The carried dream makes the frames of a shot sequential, so work done in
parallel needs borders. Scene cuts come first: the carry starts afresh at a
cut anyway, so a border there costs nothing and leaves no seam. A border
inside a shot costs warm-up: the segment after it starts ``warmup`` frames
early, those frames are dreamed by both segments, and the output crossfades
from the earlier segment's dream to the later one's over them, so the change
from one dream to the other is spread over ``warmup + 1`` frame pairs instead
of landing on one.

A plan covers the frames ``0..total-1`` of a clip. Each :class:`Segment` is
``(first, start, stop)``: it dreams ``first..stop-1`` in sequence, makes
``start..stop-1`` (alone, or crossfaded with the next segment's warm-up), and
``first..start-1`` are its warm-up frames, crossfaded with the segment before.
At a cut or at frame 0, ``first == start``. The plan is stored in the job's
work folder (``plan.json``) so a resumed run cuts the video the same way.

Example::

    total, cuts = find_cuts(read_frames("film.mp4"))
    plan = plan_lanes(total, cuts, lanes=4, warmup=30)      # video --batch 4
    plan = plan_segments(total, cuts, segment_frames=300, warmup=30)  # Ray
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import load_image, save_image, write_atomically
from .flow import CutDetector

PLAN_FILE = "plan.json"
PARTS_FOLDER = "parts"
# A lane border moves to a scene cut at most this share of a lane's length
# away (or ``warmup`` frames, if more): the lockstep then runs up to 10 %
# longer, against a seam and the warm-up frames saved.
LANE_SNAP_SHARE = 0.1


@dataclass(frozen=True)
class Segment:
    """Frames ``first..stop-1`` dreamed in sequence; ``start..stop-1`` are its own.

    Attributes:
        first: first frame dreamed; ``first..start-1`` are warm-up frames,
            crossfaded with the segment before (none at a cut).
        start: first frame that is this segment's alone.
        stop: one past its last frame.
    """

    first: int
    start: int
    stop: int


@dataclass(frozen=True)
class SegmentPlan:
    """Frames ``0..total-1`` cut into segments, in order, with the shot cuts found.

    Attributes:
        total: frames of the clip.
        cuts: frames that start a new shot (frame 0 not listed), ascending.
        segments: contiguous by ``start``/``stop``, covering every frame.
    """

    total: int
    cuts: tuple[int, ...]
    segments: tuple[Segment, ...]

    def __post_init__(self):
        starts = [s.start for s in self.segments]
        stops = [s.stop for s in self.segments]
        ok = bool(self.segments) and starts[0] == 0 and stops[-1] == self.total and starts[1:] == stops[:-1]
        for before, seg in zip((None, *self.segments), self.segments):
            low = seg.start if before is None else before.start
            ok = ok and seg.start < seg.stop and low <= seg.first <= seg.start
        if not ok:
            raise ValueError(f"segment plan {self.segments} does not cover frames 0..{self.total - 1} in order")

    def owner(self, t: int) -> int:
        """Index of the segment whose own frames (``start..stop-1``) hold frame ``t``."""
        if not 0 <= t < self.total:
            raise ValueError(f"frame {t} is outside the plan's 0..{self.total - 1}")
        return bisect.bisect_right([s.start for s in self.segments], t) - 1

    def pieces(self, t: int) -> list[tuple[int, float]]:
        """``[(segment, weight), ...]`` that make output frame ``t``; weights sum to 1.

        One segment alone, or the owner and the next segment on the next
        one's warm-up frames, the later one's weight rising linearly:
        ``(t - first + 1) / (start - first + 1)``.
        """
        k = self.owner(t)
        if k + 1 < len(self.segments) and t >= self.segments[k + 1].first:
            nxt = self.segments[k + 1]
            weight = (t - nxt.first + 1) / (nxt.start - nxt.first + 1)
            return [(k, 1.0 - weight), (k + 1, weight)]
        return [(k, 1.0)]

    def crossfaded(self, t: int) -> bool:
        """Whether frame ``t`` is made by two segments."""
        return len(self.pieces(t)) == 2

    def borders(self) -> list[int]:
        """Frames where a segment other than the first starts making frames alone."""
        return [s.start for s in self.segments[1:]]

    def to_json(self) -> dict:
        return {"total": self.total, "cuts": list(self.cuts), "segments": [[s.first, s.start, s.stop] for s in self.segments]}

    @classmethod
    def from_json(cls, data: dict) -> SegmentPlan:
        return cls(int(data["total"]), tuple(int(c) for c in data["cuts"]), tuple(Segment(*map(int, s)) for s in data["segments"]))


def find_cuts(frames: Iterable[np.ndarray]) -> tuple[int, tuple[int, ...]]:
    """One pass over a clip: its frame count and the frames that start a new shot.

    Uses :class:`~dreamreel.pipeline.flow.CutDetector` (colour histograms
    and the flow check, on frames shrunk to 256 px).

    Returns:
        ``(total, cuts)``, cuts ascending, frame 0 never listed.
    """
    detect = CutDetector()
    cuts = []
    total = 0
    for t, frame in enumerate(frames):
        if detect(frame):
            cuts.append(t)
        total = t + 1
    return total, tuple(cuts)


def _shot_start(cuts: Sequence[int], t: int) -> int:
    """First frame of the shot that holds frame ``t``."""
    k = bisect.bisect_right(cuts, t)
    return cuts[k - 1] if k else 0


def plan_from_borders(total: int, cuts: Sequence[int], borders: Iterable[int], warmup: int) -> SegmentPlan:
    """Segments that start at ``borders`` (ascending, inside ``1..total-1``).

    A segment starting at a cut starts dreaming there; any other starts
    ``warmup`` frames early, but never before the start of its shot or of
    the segment before.
    """
    cuts = tuple(sorted(cuts))
    starts = [0, *borders]
    segments = []
    for k, (start, stop) in enumerate(zip(starts, [*borders, total])):
        first = start if k == 0 else max(start - warmup, starts[k - 1], _shot_start(cuts, start))
        segments.append(Segment(first, start, stop))
    return SegmentPlan(total, cuts, tuple(segments))


def plan_lanes(total: int, cuts: Sequence[int], lanes: int, warmup: int) -> SegmentPlan:
    """``lanes`` segments of about equal length, for video lanes dreamed in lockstep.

    The border between lane k and k+1 lies near ``total * k / lanes``; it
    moves to the nearest scene cut when one is within ``LANE_SNAP_SHARE``
    of a lane's length (or ``warmup`` frames, if more), where it needs no
    warm-up and leaves no seam. Borders that land together merge, so a plan
    may have fewer lanes than asked.
    """
    if total < 1:
        raise ValueError(f"a clip of {total} frames has nothing to plan; expected at least 1 frame")
    lanes = max(1, min(lanes, total))
    slack = max(warmup, LANE_SNAP_SHARE * total / lanes)
    borders: list[int] = []
    for k in range(1, lanes):
        ideal = round(total * k / lanes)
        near = min(cuts, key=lambda c: abs(c - ideal), default=None)
        border = near if near is not None and abs(near - ideal) <= slack else ideal
        if 0 < border < total and (not borders or border > borders[-1]):
            borders.append(border)
    return plan_from_borders(total, cuts, borders, warmup)


def plan_segments(total: int, cuts: Sequence[int], segment_frames: int, warmup: int) -> SegmentPlan:
    """Every shot a segment, and shots longer than ``segment_frames`` cut into equal parts (for Ray)."""
    if total < 1:
        raise ValueError(f"a clip of {total} frames has nothing to plan; expected at least 1 frame")
    if segment_frames < 1:
        raise ValueError(f"segment_frames {segment_frames}: expected a whole number of at least 1")
    borders = []
    bounds = [0, *sorted(cuts), total]
    for shot_start, shot_stop in zip(bounds, bounds[1:]):
        parts = math.ceil((shot_stop - shot_start) / segment_frames)
        borders += [shot_start + round((shot_stop - shot_start) * j / parts) for j in range(parts)]
    return plan_from_borders(total, cuts, borders[1:], warmup)


def resume_step(plan: SegmentPlan, ids: Iterable[int], has: Callable[[int, int], bool]) -> int:
    """First lockstep step at which any of the segments ``ids`` lacks its own picture.

    Step s of segment k is its frame ``first + s``; ``has(k, t)`` says
    whether k's picture of frame t is on disk. Segments dreamed together
    restart at the same step, so each batch holds the same frames as in an
    uninterrupted run (a batch's make-up changes float rounding).
    """
    step = None
    for k in ids:
        seg = plan.segments[k]
        s = 0
        while seg.first + s < seg.stop and has(k, seg.first + s):
            s += 1
        if seg.first + s < seg.stop:  # a finished segment does not hold the others back
            step = s if step is None else min(step, s)
    return 0 if step is None else step


def crossfade(earlier: np.ndarray, later: np.ndarray, weight_later: float) -> np.ndarray:
    """``(1 - w) · earlier + w · later``, rounded, of two RGB uint8 (H, W, 3) frames."""
    mixed = earlier.astype(np.float32) * (1.0 - weight_later) + later.astype(np.float32) * weight_later
    return np.rint(mixed).astype(np.uint8)


def save_plan(folder: Path, plan: SegmentPlan) -> None:
    """Write ``plan.json`` into the work folder (whole or not at all)."""
    write_atomically(Path(folder) / PLAN_FILE, json.dumps(plan.to_json()).encode())


def load_plan(folder: Path) -> SegmentPlan | None:
    """The plan a run stored in the work folder, or None when there is none."""
    path = Path(folder) / PLAN_FILE
    try:
        return SegmentPlan.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is unreadable ({exc}); delete the work folder {folder} to start over") from None


class SegmentPictures:
    """Each segment's own picture of its frames, kept in the work folder, and the crossfade.

    A frame one segment makes alone is a finished frame: it goes to
    ``finish(t, rgb)`` (which saves it). On a crossfaded frame each segment's
    picture is written to ``parts/`` and the frame is finished, blended,
    when the second arrives. Each segment carries its own picture, never the
    blend, so a resumed segment carries from ``parts/`` what it carried before.

    Args:
        folder: the job's work folder; parts go to ``folder/parts``.
        plan: the job's plan.
        done: frames finished when the run began.
        load_frame: ``load_frame(t)`` reads finished frame t.
        finish: ``finish(t, rgb)`` saves a finished frame; called once per frame.
    """

    def __init__(
        self,
        folder: Path,
        plan: SegmentPlan,
        done: Iterable[int],
        load_frame: Callable[[int], np.ndarray],
        finish: Callable[[int, np.ndarray], None],
    ):
        self.plan = plan
        self.load_frame = load_frame
        self.finish = finish
        self.parts = Path(folder) / PARTS_FOLDER
        self.parts.mkdir(exist_ok=True)
        self.done = set(done)

    def _part(self, k: int, t: int) -> Path:
        return self.parts / f"{t:06d}-{k}.png"

    def has(self, k: int, t: int) -> bool:
        """Whether segment k's picture of frame t is on disk."""
        return self._part(k, t).exists() if self.plan.crossfaded(t) else t in self.done

    def load(self, k: int, t: int) -> np.ndarray:
        """Segment k's own picture of frame t, RGB uint8 (H, W, 3)."""
        return load_image(self._part(k, t)) if self.plan.crossfaded(t) else self.load_frame(t)

    def put(self, k: int, t: int, rgb: np.ndarray) -> None:
        """Segment k dreamed frame t: finish it, or keep it as a part until its partner comes."""
        if not self.plan.crossfaded(t):
            self._finish(t, rgb)
            return
        if not self._part(k, t).exists():
            save_image(self._part(k, t), rgb, work=True)
        self._blend_if_whole(t)

    def finish_crossfades(self) -> None:
        """Finish crossfaded frames whose two parts are on disk (a run stopped between them)."""
        for seg in self.plan.segments[1:]:
            for t in range(seg.first, seg.start):
                self._blend_if_whole(t)

    def _blend_if_whole(self, t: int) -> None:
        (a, _), (b, weight) = self.plan.pieces(t)
        if t not in self.done and self._part(a, t).exists() and self._part(b, t).exists():
            self._finish(t, crossfade(self.load(a, t), self.load(b, t), weight))

    def _finish(self, t: int, rgb: np.ndarray) -> None:
        if t not in self.done:
            self.done.add(t)
            self.finish(t, rgb)
