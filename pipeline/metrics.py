"""Numbers for a dreamed video: how much it flickers and how strongly it is dreamed (and how natural a picture's spectrum is).

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
from pathlib import Path

import cv2
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
        input_warping_error: the same measure of the input video: the floor
            that flow errors, noise and lighting changes leave.
        fine_detail: :func:`fine_detail` of the output frames (a blurred or
            smeared dream scores lower).
        input_fine_detail: the same of the input frames.
        changes: the warping error of each consecutive pair (t-1, t), None at
            scene cuts; what :func:`seam_scores` compares.
    """

    warping_error: float
    dream_strength: float
    frames: int
    pairs: int
    input_warping_error: float = 0.0
    fine_detail: float = 0.0
    input_fine_detail: float = 0.0
    changes: tuple[float | None, ...] = ()


def measure(
    outputs: Iterable[np.ndarray], inputs: Iterable[np.ndarray], *, method: str = "dis"
) -> CoherenceReport:
    """Warping error, dream strength and fine detail of a dreamed video and its input, in one pass.

    For each t >= 1 the backward flow and its forward check are computed on the
    INPUT frames t and t-1 (dreamed frames would have their patterns tracked as
    motion), the previous OUTPUT frame is warped onto the current one with
    :func:`~dreamreel.pipeline.flow.warp_with_flow`, and the absolute difference
    is averaged over the pixels :func:`~dreamreel.pipeline.flow.consistency_mask`
    keeps. Pairs that :func:`~dreamreel.pipeline.flow.scene_cut` calls a cut
    (including those where no pixel passes the check) are left out, since
    nothing should carry over there. The input's own warping error uses the
    same flow and mask.

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
    changes: list[float | None] = []
    input_errors = []
    strength_sum = detail_sum = input_detail_sum = 0.0
    frames = 0
    previous = None
    for output, input_ in _paired_frames(outputs, inputs):
        frames += 1
        strength_sum += _mean_abs_difference(output, input_)
        detail_sum += _laplacian_variance(output)
        input_detail_sum += _laplacian_variance(input_)
        if previous is not None:
            pair_flow = _pair_flow(estimator, previous[1], input_)
            changes.append(None if pair_flow is None else _masked_warping_error(previous[0], output, *pair_flow))
            if pair_flow is not None:
                input_errors.append(_masked_warping_error(previous[1], input_, *pair_flow))
        previous = (output, input_)
    pair_errors = [c for c in changes if c is not None]
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
        input_warping_error=float(np.mean(input_errors)),
        fine_detail=detail_sum / frames,
        input_fine_detail=input_detail_sum / frames,
        changes=tuple(changes),
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
    border; ``first == 0``: a warm-up that reaches back to the first frame).
    Its score is the largest change over the pairs into frames
    ``first..start`` (from frame 1) divided by the median change of the pairs
    away from every border. Borders at scene cuts (a None change) have no score.

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
        if not 0 <= first <= start <= len(changes):
            raise ValueError(f"border ({first}, {start}) lies outside a clip of {len(changes) + 1} frames")
        near.update(range(max(first, 1) - 1, start))  # pairs into frames first..start
    typical = [c for i, c in enumerate(changes) if i not in near and c is not None]
    if not typical:
        raise ValueError("every frame pair touches a border; seam scores need pairs away from the borders")
    median = float(np.median(typical))
    scores = []
    for first, start in borders:
        window = changes[max(first, 1) - 1 : start]
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
    pair_flow = _pair_flow(estimator, prev_input, input_)
    return None if pair_flow is None else _masked_warping_error(prev_output, output, *pair_flow)


def _pair_flow(estimator: FlowEstimator, prev_input: np.ndarray, input_: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Backward flow (H, W, 2) and consistency mask (H, W) of two input frames; None at a scene cut."""
    backward = estimator(input_, prev_input)
    forward = estimator(prev_input, input_)
    mask = consistency_mask(forward, backward)
    if scene_cut(prev_input, input_, inconsistent_fraction=1.0 - float(mask.mean())):
        return None
    return backward, mask


def _masked_warping_error(previous: np.ndarray, current: np.ndarray, backward: np.ndarray, mask: np.ndarray) -> float:
    """Mean |current - previous warped along ``backward``| over the pixels ``mask`` keeps."""
    warped = warp_with_flow(to_tensor(previous), flow_to_tensor(backward))
    error = (warped - to_tensor(current)).abs().mean(dim=1)[0].numpy()  # (H, W)
    return float((error * mask).sum() / mask.sum())


def fine_detail(frame: np.ndarray) -> float:
    """Variance of the Laplacian of a frame's grey levels, 0..1 intensity squared.

    A standard sharpness measure (Pech-Pacheco et al. 2000): it grows with
    fine texture and sharp edges and falls when a picture is blurred, so a
    dream smeared by repeated resampling scores lower than one dreamed alone.

    Args:
        frame: RGB uint8 (H, W, 3).

    Returns:
        >= 0; 0 for a flat picture.
    """
    check_rgb(frame, "frame")
    return _laplacian_variance(frame)


# spectrum_slope fits the power spectrum between these frequencies, in cycles
# per pixel: waves of 64 px down to 2.5 px, in 12 bands of equal log width.
# On scikit-image's sample photos (astronaut, chelsea, coffee) the slope is
# -2.76 to -3.09 there.
SLOPE_BAND = (1 / 64, 0.4)
SLOPE_BINS = 12


def spectrum_slope(frame: np.ndarray) -> float:
    """Slope of a picture's power spectrum against frequency, on log-log axes.

    Photographs' power falls with frequency as about 1/f^2 to 1/f^3 (van der
    Schaaf & van Hateren 1996); pixel-level dream texture holds more power at
    high frequencies, so its slope is flatter (closer to 0). The grey levels,
    less their mean, are windowed (Hann, so the picture's borders add no
    false edges), their power is averaged in :data:`SLOPE_BINS` rings of equal
    log width across :data:`SLOPE_BAND`, and a line is fitted through the
    rings' log power.

    Args:
        frame: RGB uint8 (H, W, 3), at least 64 px on each side.

    Returns:
        The fitted slope: about -2.7 to -3.1 for photographs, higher (flatter) for noise.
    """
    check_rgb(frame, "frame")
    h, w = frame.shape[:2]
    if min(h, w) < 64:
        raise ValueError(f"frame: {w}x{h} is too small for a spectrum slope; expected 64 px or more on each side")
    grey = frame.astype(np.float64).mean(2) / 255.0
    grey = (grey - grey.mean()) * np.outer(np.hanning(h), np.hanning(w))
    power = np.abs(np.fft.fft2(grey)).ravel() ** 2
    f = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]).ravel()
    ring = np.digitize(f, np.geomspace(*SLOPE_BAND, SLOPE_BINS + 1))
    rings = [k for k in range(1, SLOPE_BINS + 1) if (ring == k).any()]
    log_f = [np.log10(f[ring == k].mean()) for k in rings]
    log_power = [np.log10(power[ring == k].mean() + 1e-30) for k in rings]
    return float(np.polyfit(log_f, log_power, 1)[0])


def _laplacian_variance(frame: np.ndarray) -> float:
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


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


def measure_files(
    input: str | Path,
    output: str | Path,
    *,
    batch: int = 1,
    warmup: int = 30,
    start_s: float = 0.0,
    end_s: float | None = None,
    max_frames: int | None = None,
    max_side: int | None = None,
) -> tuple[CoherenceReport, list[float]]:
    """:func:`measure` of a dreamed video file against its input, and the seam scores of its lanes.

    This is ``dreamreel metrics INPUT OUTPUT``. The clip options pick the
    input frames the output was dreamed from, as ``dreamreel video`` took
    them; ``batch`` and ``warmup`` give the lane plan it used
    (:func:`~dreamreel.pipeline.segments.plan_lanes` with the input's scene
    cuts), whose borders :func:`seam_scores` rates.

    A video file of an odd-sized clip holds its frames padded by a row or a
    column (:func:`~dreamreel.pipeline.encode.padded_size`); they are
    measured without it.

    Args:
        input: the input video file.
        output: the dreamed video file, or a folder of ``frame_NNNNNN.png``.
        batch: lanes the output was dreamed in (``--batch``); 1 = no borders.
        warmup: its ``--warmup``.

    Returns:
        (the report, one seam score per lane border away from scene cuts).

    Raises:
        ValueError: a missing or unreadable file, or outputs and inputs that
            differ in frame count or size (the message says which option to pass).
    """
    from . import decode, segments
    from .encode import padded_size
    from .files import FRAME_GLOB, load_image
    from .video import VideoSettings

    VideoSettings(batch=batch, warmup=warmup)  # their checks, as `video` made them
    output = Path(output)
    if output.is_dir():
        paths = sorted(output.glob(FRAME_GLOB))
        if not paths:
            raise ValueError(f"OUTPUT {output}: a folder without frame_NNNNNN.png files; expected a video or a frames folder")
        outputs = lambda: (load_image(p) for p in paths)  # noqa: E731 - read twice: count, then measure
    else:
        decode.probe_video(output)
        outputs = lambda: decode.read_frames(output)  # noqa: E731
    inputs = lambda: decode.read_frames(input, start_s=start_s, end_s=end_s, max_frames=max_frames, max_side=max_side)  # noqa: E731
    first_output, first_input = next(outputs()), next(inputs())
    (oh, ow), (ih, iw) = first_output.shape[:2], first_input.shape[:2]
    if (ow, oh) != (iw, ih) and (ow, oh) == padded_size((iw, ih)) and not output.is_dir():
        padded = outputs
        outputs = lambda: (np.ascontiguousarray(frame[:ih, :iw]) for frame in padded())  # noqa: E731
    elif (ow, oh) != (iw, ih):
        raise ValueError(
            f"OUTPUT frames are {ow}x{oh} but INPUT frames are {iw}x{ih}; pass the --max-side the output was dreamed with"
        )
    output_count, (input_count, cuts) = sum(1 for _ in outputs()), segments.find_cuts(inputs())
    if output_count != input_count:
        raise ValueError(
            f"OUTPUT has {output_count} frames but INPUT has {input_count}; "
            "pass the --start, --end and --max-frames the output was dreamed with"
        )
    report = measure(outputs(), inputs())
    plan = segments.plan_lanes(input_count, cuts, batch, warmup)
    borders = [(s.first, s.start) for s in plan.segments[1:]]
    return report, seam_scores(list(report.changes), borders) if borders else []
