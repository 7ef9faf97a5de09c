"""Numbers for a dreamed video: how much it flickers and how strongly it is dreamed.

Both measures stream over the frames (two at a time), so clips of any length
fit in memory. Frames are RGB uint8 arrays (H, W, 3); results are in units of
0..1 intensity (a difference of 255 is 1.0), averaged over the three channels.

Example::

    report = measure(read_frames("dreamed.mp4"), read_frames("input.mp4"))
    print(f"{report.warping_error:.4f} flicker at {report.dream_strength:.3f} strength")
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .dream import to_tensor
from .files import check_rgb
from .flow import FlowEstimator, consistency_mask, flow_to_tensor, scene_cut, warp_with_flow


@dataclass(frozen=True)
class CoherenceReport:
    """What :func:`measure` found.

    Attributes:
        warping_error: mean |output_t - output_{t-1} warped to t| over the
            pixels the flow check keeps, 0..1 intensity, averaged over frame
            pairs. Lower is steadier; the input video itself scores near 0.
        dream_strength: mean |output - input|, 0..1 intensity, over all frames.
        frames: number of frames read.
        pairs: consecutive frame pairs in warping_error (scene cuts left out).
    """

    warping_error: float
    dream_strength: float
    frames: int
    pairs: int


def measure(
    outputs: Iterable[np.ndarray], inputs: Iterable[np.ndarray], *, method: str = "dis"
) -> CoherenceReport:
    """Warping error and dream strength of a dreamed video in one pass.

    For each t >= 1 the backward flow and its forward check are computed on the
    INPUT frames t and t-1 (dreamed frames would have their patterns tracked as
    motion), the previous OUTPUT frame is warped onto the current one with
    :func:`~dreamreel.pipeline.flow.warp_with_flow`, and the absolute difference
    is averaged over the pixels :func:`~dreamreel.pipeline.flow.consistency_mask`
    keeps. Pairs that :func:`~dreamreel.pipeline.flow.scene_cut` calls a cut
    (including those where no pixel passes the check) are left out, since
    nothing should carry over there.

    Args:
        outputs: dreamed frames, RGB uint8 (H, W, 3), all the same size.
        inputs: the input frames they were dreamed from, same count and size.
        method: flow method, one of ``FLOW_METHODS``; "none" gives the plain
            frame-to-frame difference, a baseline without motion compensation.

    Returns:
        A :class:`CoherenceReport`.

    Raises:
        ValueError: fewer than 2 frames, different lengths, a frame that is not
            RGB uint8 (H, W, 3) or differs in size, an unknown method, or every
            pair being a scene cut.
    """
    estimator = FlowEstimator(method)
    pair_errors = []
    strength_sum = 0.0
    frames = 0
    previous = None
    for output, input_ in _paired_frames(outputs, inputs):
        frames += 1
        strength_sum += _mean_abs_difference(output, input_)
        if previous is not None:
            error = _pair_warping_error(estimator, *previous, output, input_)
            if error is not None:
                pair_errors.append(error)
        previous = (output, input_)
    if frames < 2:
        raise ValueError(f"got {frames} frame(s); warping error compares consecutive frames, so pass at least 2")
    if not pair_errors:
        raise ValueError(
            f"all {frames - 1} frame pairs are scene cuts (the previous frame explains almost none of the next); "
            "warping error needs at least two consecutive frames of one shot"
        )
    return CoherenceReport(
        warping_error=float(np.mean(pair_errors)),
        dream_strength=strength_sum / frames,
        frames=frames,
        pairs=len(pair_errors),
    )


def warping_error(outputs: Iterable[np.ndarray], inputs: Iterable[np.ndarray], *, method: str = "dis") -> float:
    """Flicker of a dreamed video, 0..1 intensity; see :func:`measure`, whose ``warping_error`` it is."""
    return measure(outputs, inputs, method=method).warping_error


def dream_strength(outputs: Iterable[np.ndarray], inputs: Iterable[np.ndarray]) -> float:
    """Mean |output - input| over all frames, pixels and channels, 0..1 intensity.

    Args:
        outputs: dreamed frames, RGB uint8 (H, W, 3), all the same size.
        inputs: the input frames, same count and size.

    Returns:
        0 for an untouched video, larger the more the dream changed it.

    Raises:
        ValueError: no frames, different lengths, or a frame that is not RGB
            uint8 (H, W, 3) or differs in size.
    """
    total = 0.0
    frames = 0
    for output, input_ in _paired_frames(outputs, inputs):
        total += _mean_abs_difference(output, input_)
        frames += 1
    if frames == 0:
        raise ValueError("outputs and inputs are empty; pass at least one frame")
    return total / frames


def frame_changes(outputs: Iterable[np.ndarray], inputs: Iterable[np.ndarray], *, method: str = "dis") -> list[float | None]:
    """The change between each two consecutive output frames, after following the input's motion.

    Entry ``t - 1`` is the pair (t-1, t): the mean warping error of
    :func:`measure` for that pair alone, or None where the input has a scene cut.

    Args:
        outputs, inputs: as for :func:`measure`.
        method: flow method, one of ``FLOW_METHODS``.

    Returns:
        One entry per pair, 0..1 intensity.
    """
    estimator = FlowEstimator(method)
    changes: list[float | None] = []
    previous = None
    for output, input_ in _paired_frames(outputs, inputs):
        if previous is not None:
            changes.append(_pair_warping_error(estimator, *previous, output, input_))
        previous = (output, input_)
    return changes


def seam_scores(changes: Sequence[float | None], borders: Iterable[tuple[int, int]]) -> list[float]:
    """How much each lane border stands out: 1.0 is no seam at all.

    A border ``(first, start)`` is where one lane hands over to the next,
    crossfaded over frames ``first..start-1`` (``first == start``: a hard
    border). Its score is the largest change over the pairs into frames
    ``first..start`` divided by the median change of the pairs away from
    every border. Borders at scene cuts (a None change) have no score.

    Args:
        changes: :func:`frame_changes` of the output.
        borders: ``(first, start)`` of each border, e.g. ``(s.first, s.start)``
            of each segment but the first of a :class:`~dreamreel.pipeline.segments.SegmentPlan`.

    Returns:
        One score per border that is not at a cut, in order.

    Raises:
        ValueError: a border outside the clip, or no pair away from the borders.
    """
    borders = list(borders)
    near = set()
    for first, start in borders:
        if not 1 <= first <= start <= len(changes):
            raise ValueError(f"border ({first}, {start}) lies outside a clip of {len(changes) + 1} frames")
        near.update(range(first - 1, start))  # pairs into frames first..start
    typical = [c for i, c in enumerate(changes) if i not in near and c is not None]
    if not typical:
        raise ValueError("every frame pair touches a border; seam scores need pairs away from the borders")
    median = float(np.median(typical))
    scores = []
    for first, start in borders:
        window = changes[first - 1 : start]
        if None not in window:
            scores.append(max(window) / median)
    return scores


def _pair_warping_error(
    estimator: FlowEstimator,
    prev_output: np.ndarray,
    prev_input: np.ndarray,
    output: np.ndarray,
    input_: np.ndarray,
) -> float | None:
    """Mean masked warping error of one pair of consecutive frames, None at a scene cut."""
    backward = estimator(input_, prev_input)
    forward = estimator(prev_input, input_)
    mask = consistency_mask(forward, backward)
    if scene_cut(prev_input, input_, inconsistent_fraction=1.0 - float(mask.mean())):
        return None
    warped = warp_with_flow(to_tensor(prev_output), flow_to_tensor(backward))
    error = (warped - to_tensor(output)).abs().mean(dim=1)[0].numpy()  # (H, W)
    return float((error * mask).sum() / mask.sum())


def _mean_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean() / 255.0)


def _paired_frames(
    outputs: Iterable[np.ndarray], inputs: Iterable[np.ndarray]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (output, input) frame pairs, checking count, type and size as they come."""
    ended = object()
    shape = None
    for index, (output, input_) in enumerate(itertools.zip_longest(outputs, inputs, fillvalue=ended)):
        if output is ended or input_ is ended:
            shorter, longer = ("outputs", "inputs") if output is ended else ("inputs", "outputs")
            raise ValueError(
                f"{shorter} has {index} frames but {longer} has more; pass one output frame per input frame"
            )
        for name, frame in (("outputs", output), ("inputs", input_)):
            check_rgb(frame, f"{name}[{index}]")
            if shape is None:
                shape = frame.shape
            elif frame.shape != shape:
                raise ValueError(
                    f"{name}[{index}] has shape {frame.shape} but frame 0 has {shape}; "
                    "outputs and inputs must all share one frame size (resize the outputs to the inputs)"
                )
        yield output, input_
