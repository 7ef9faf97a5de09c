"""Dream a video file so the dream sticks to moving things: `dreamreel video`.

Per frame: decode → flow → blend → dream → save/encode. The dream of frame t
starts from the current input frame plus the previous frame's dream
*residual* (what dreaming added), warped onto frame t by optical flow and
masked where the previous frame cannot explain the current one (after
Ruder, Dosovitskiy & Brox 2016, "Artistic style transfer for videos").
Carrying the residual rather than the dreamed pixels keeps colours tied to
the input; ``blend`` < 1 makes old detail decay geometrically, and removing
the residual's mean colour stops the slow brightening earlier tools show.

Batching: the flow dependency makes frames sequential, so the video is cut
into B contiguous *lanes* dreamed in lockstep as one batch, along the plan of
:mod:`~dreamreel.pipeline.segments`: borders at scene cuts first (the carry
starts afresh there anyway); a border inside a shot makes the later lane
start ``warmup`` frames early, both lanes dream those frames and the output
crossfades from one dream to the other over them. Cuts come from one cheap
pass over the input before dreaming (colour histograms and the flow check,
:class:`~dreamreel.pipeline.flow.CutDetector`); the plan is stored in the
work folder, so a resumed run cuts the video the same way.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
import dataclasses
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from . import decode, flow, segments
from .dream import ComputeSettings, Dreamer, DreamSettings, frame_generator, to_tensor, to_uint8
from .encode import EncodeSettings, FrameWriter, output_kind
from .files import check_output_folder
from .render import RenderJob, RenderResult, file_stamp, job_record

PREFETCH_FRAMES = 4  # decoded + flowed frames waiting per lane
# --batch auto on CUDA: lanes fill this share of the free GPU memory; the rest
# is headroom for the allocator's fragmentation and the octaves' other sizes.
GPU_MEMORY_SHARE = 0.8
MAX_AUTO_LANES = 16


@dataclass(frozen=True)
class VideoSettings:
    """How frames are tied together. Presets fill these; flags override.

    Attributes:
        blend: share of the previous dream carried into the next frame
            (0 = every frame dreamed alone, 1 = pure feedback).
        flow: ``dis`` (OpenCV DIS), ``farneback`` or ``none`` (plain blending).
        iterations_next: ascent steps per octave for frames after a lane's
            first (the carried dream needs fewer); None = ``iterations``.
        batch: lanes dreamed as one batch (1 = strictly sequential); None =
            auto: 1 on a CPU, as many as fit in free memory on a CUDA GPU.
        warmup: frames before a lane border inside a shot that both lanes
            dream and the output crossfades over.
    """

    blend: float = 0.6
    flow: str = "dis"
    iterations_next: int | None = None
    batch: int | None = None
    warmup: int = 6

    def __post_init__(self):
        if isinstance(self.blend, bool) or not isinstance(self.blend, (int, float)) or not 0 <= self.blend <= 1:
            raise ValueError(f"--blend {self.blend!r}: expected a number from 0 to 1")
        if self.flow not in flow.FLOW_METHODS:
            raise ValueError(f"--flow {self.flow!r}: expected one of {', '.join(flow.FLOW_METHODS)}")
        for name, value, lo in (("iterations-next", self.iterations_next, 0), ("batch", self.batch, 1), ("warmup", self.warmup, 0)):
            if value is None and name in ("iterations-next", "batch"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= 10_000:
                raise ValueError(f"--{name} {value!r}: expected a whole number from {lo} to 10000")


def lanes_that_fit(free_bytes: int, lane_bytes: int, total: int, warmup: int) -> int:
    """Lanes for ``--batch auto`` on a GPU with ``free_bytes`` free and ``lane_bytes`` needed per lane.

    As many as fit in ``GPU_MEMORY_SHARE`` of the free memory, at most
    ``MAX_AUTO_LANES``, and few enough that the warm-up frames (``warmup``
    per lane after the first) stay within a quarter of the ``total`` frames.
    """
    fit = int(GPU_MEMORY_SHARE * free_bytes) // max(1, lane_bytes)
    worth_it = 1 + total // (4 * warmup) if warmup else MAX_AUTO_LANES
    return max(1, min(fit, worth_it, MAX_AUTO_LANES))


def auto_lanes(dreamer: Dreamer, height: int, width: int, total: int, warmup: int) -> int:
    """``--batch auto``: 1 lane off CUDA; on CUDA, what :func:`lanes_that_fit` allows.

    A CPU keeps one lane: torch already spreads one picture over every core,
    and each extra lane dreams ``warmup`` frames that are thrown away. On CUDA
    one lane's memory is measured with one ascent step per octave at full size.
    """
    if dreamer.device.type != "cuda":
        return 1
    device = dreamer.device
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    dreamer(torch.rand(1, 3, height, width), iterations=1)
    lane_bytes = torch.cuda.max_memory_allocated(device) - before
    free_bytes, _ = torch.cuda.mem_get_info(device)
    return lanes_that_fit(free_bytes, lane_bytes, total, warmup)


def carry_residual(
    current: torch.Tensor,
    previous_dream: torch.Tensor,
    previous_input: torch.Tensor,
    backward_flow: torch.Tensor,
    mask: torch.Tensor,
    blend: float,
) -> torch.Tensor:
    """The start picture of frame t: its input plus the warped, masked dream residual.

    Args:
        current: (B, 3, H, W) input frame t in [0, 1].
        previous_dream, previous_input: (B, 3, H, W) frame t-1 dreamed and raw.
        backward_flow: (B, H, W, 2) flow t → t-1 in pixels, computed on inputs.
        mask: (B, 1, H, W) 1 where t-1 explains t, 0 at occlusions.
        blend: share of the residual carried over, 0..1.

    Returns:
        (B, 3, H, W) in [0, 1].
    """
    residual = flow.warp_with_flow(previous_dream - previous_input, backward_flow)
    # Zero-mean per channel: the carried detail may not shift the frame's
    # colour balance, or frames brighten a little more every frame.
    residual = residual - residual.mean(dim=(2, 3), keepdim=True)
    return (current + blend * mask * residual).clamp(0, 1)


@dataclass
class _Lane:
    """One segment of the plan, dreamed in sequence: where it is and what it carries."""

    segment: int  # index in the plan
    first: int  # first frame the segment dreams (fresh start, no carry)
    stop: int  # one past its last frame
    index: int  # next frame to dream
    prefetch: _Prefetch
    previous_input: np.ndarray | None = None
    previous_dream: np.ndarray | None = None


class _Prefetch:
    """Decode frames ``first..stop-1`` and compute their flow in a background thread.

    No flow is computed into a frame of ``cuts`` (a new shot: nothing is carried).
    """

    def __init__(self, frames: Iterator[np.ndarray], first: int, stop: int, cuts: Sequence[int], method: str):
        self.queue: queue.Queue = queue.Queue(maxsize=PREFETCH_FRAMES)
        self.estimator = flow.FlowEstimator(method) if method != "none" else None
        self.thread = threading.Thread(target=self._run, args=(frames, first, stop, set(cuts)), daemon=True)
        self.thread.start()

    def _run(self, frames: Iterator[np.ndarray], first: int, stop: int, cuts: set[int]) -> None:
        previous = None
        try:
            for t, frame in zip(range(first, stop), frames):
                item = {"frame": frame, "flow": None, "mask": None, "cut": t in cuts}
                if previous is not None and self.estimator is not None and not item["cut"]:
                    backward = self.estimator(frame, previous)
                    forward = self.estimator(previous, frame)
                    item["flow"] = backward
                    item["mask"] = flow.consistency_mask(forward, backward)
                previous = frame
                self.queue.put(item)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.queue.put(exc)
            return
        self.queue.put(None)

    def next(self):
        item = self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item


def dream_lanes(
    dreamer: Dreamer,
    plan: segments.SegmentPlan,
    ids: Sequence[int],
    frames: Callable[[int], Iterator[np.ndarray]],
    pictures: segments.SegmentPictures,
    settings: DreamSettings,
    video: VideoSettings,
    stop_requested: Callable[[], bool],
) -> int:
    """Dream the plan's segments ``ids`` in lockstep, one batch per step; each lane carries its own dream.

    The work the video stage and a Ray worker (one segment at a time) share.
    It resumes where the pictures on disk stop: every lane restarts at the
    first step any of them lacks (:func:`~dreamreel.pipeline.segments.resume_step`),
    so each batch holds the same frames as in an uninterrupted run and the
    frames come out identical.

    Args:
        frames: ``frames(t)`` reads the clip from its frame t on.
        pictures: where each lane's pictures go (finished or crossfaded).
        stop_requested: when it says True, the loop ends after the frames in hand.

    Returns:
        The number of frames dreamed (warm-up frames and frames dreamed again
        to restart the lockstep included).
    """
    step = segments.resume_step(plan, ids, pictures.has)
    dreamed_frames = 0
    lanes = []
    for k in ids:
        seg = plan.segments[k]
        index = seg.first + step
        if index >= seg.stop:
            continue
        carried = index > seg.first  # its previous frame is on disk: carry it, as the interrupted run did
        lane = _Lane(k, seg.first, seg.stop, index, _Prefetch(frames(index - carried), index - carried, seg.stop, plan.cuts, video.flow))
        if carried:
            lane.previous_input = lane.prefetch.next()["frame"]
            lane.previous_dream = pictures.load(k, index - 1)
        lanes.append(lane)
    while lanes and not stop_requested():
        # 1. each lane's start picture: fresh at its first frame and at cuts, else carried
        starts, generators, groups = [], [], {}
        for lane in lanes:
            item = lane.prefetch.next()
            current = item["frame"]
            if lane.index == lane.first or item["cut"] or video.blend == 0:
                start = to_tensor(current)
                n_iter = settings.iterations
            else:
                start = _carry(lane, current, item, video.blend)
                n_iter = settings.iterations if video.iterations_next is None else video.iterations_next
            lane.previous_input = current
            starts.append(start)
            generators.append(frame_generator(settings.seed, lane.index))
            groups.setdefault(n_iter, []).append(len(starts) - 1)
        # 2. dream the batch (lanes in their first frame may need more steps)
        dreamed = [None] * len(starts)
        for n_iter, members in groups.items():
            batch = torch.cat([starts[m] for m in members])
            result = to_uint8(dreamer(batch, iterations=n_iter, generators=[generators[m] for m in members]))
            for m, rgb in zip(members, result):
                dreamed[m] = rgb
        # 3. finish, or keep for the crossfade
        for lane, rgb in zip(lanes, dreamed):
            lane.previous_dream = rgb
            pictures.put(lane.segment, lane.index, rgb)
            lane.index += 1
        dreamed_frames += len(dreamed)
        lanes = [lane for lane in lanes if lane.index < lane.stop]
    return dreamed_frames


@dataclass(frozen=True)
class Clip:
    """The frames of one input video that a job dreams: checked, counted and cut into shots.

    Made by :func:`open_clip`; small and picklable, so Ray workers read their
    segments' frames through it.

    Attributes:
        input, output: the job's files.
        fps: frames per second of the input (and output).
        size: (width, height) of the frames, after ``max_side``.
        total: frames of the clip.
        cuts: frames that start a new shot (see :func:`~dreamreel.pipeline.segments.find_cuts`).
        start_s, end_s, max_frames, max_side: which frames, as ``dreamreel video`` takes them.
    """

    input: Path
    output: Path
    fps: Fraction
    size: tuple[int, int]
    total: int
    cuts: tuple[int, ...]
    start_s: float = 0.0
    end_s: float | None = None
    max_frames: int | None = None
    max_side: int | None = None

    def frames(self, first: int = 0) -> Iterator[np.ndarray]:
        """The clip's frames from its frame ``first`` on, RGB uint8 (H, W, 3)."""
        max_frames = None if self.max_frames is None else self.max_frames - first
        return decode.read_frames(
            self.input, start_s=self.start_s + first / self.fps, end_s=self.end_s, max_frames=max_frames, max_side=self.max_side
        )

    def record(self, settings: DreamSettings, compute: ComputeSettings, video: VideoSettings, **parts) -> dict:
        """The job record (:func:`~dreamreel.pipeline.render.job_record`) of dreaming this clip; ``parts`` add to it."""
        clip = {"start_s": self.start_s, "end_s": self.end_s, "max_frames": self.max_frames, "max_side": self.max_side}
        return job_record("video", compute, input=file_stamp(self.input), dream=asdict(settings), video=asdict(video), clip=clip, **parts)

    def writer(self, encode: EncodeSettings) -> Callable[[], FrameWriter]:
        """Makes the output's writer, sound taken from the input at the clip's start."""
        return lambda: FrameWriter(
            self.output, fps=self.fps, size=self.size, settings=encode, audio_source=self.input, audio_start_s=self.start_s
        )


def open_clip(
    input: str | Path,
    output: str | Path,
    *,
    start_s: float = 0.0,
    end_s: float | None = None,
    max_frames: int | None = None,
    max_side: int | None = None,
    cut_pass: Callable[[Clip], tuple[int, tuple[int, ...]]] | None = None,
) -> Clip:
    """Check input and output before any work, then count the frames and find the cuts in one pass.

    ``cut_pass(clip)`` returns ``(total, cuts)`` of a clip whose total is not
    known yet; the default reads it once with
    :func:`~dreamreel.pipeline.segments.find_cuts` (Ray spreads it over workers).

    Raises:
        ValueError: an unreadable input, an output that cannot be written or
            is the input, or no frames between ``start_s`` and ``end_s``.
    """
    input_path = Path(input)
    info = decode.probe_video(input_path)
    out = Path(output)
    output_kind(out)
    check_output_folder(out.parent)  # before the work folder is made there
    if out.exists() and out.resolve() == input_path.resolve():
        raise ValueError(f"OUTPUT {output} is the input file; choose another name so the input is kept")
    size = decode.output_size(info.width, info.height, max_side)
    clip = Clip(input_path, out, info.fps, size, 0, (), start_s, end_s, max_frames, max_side)
    total, cuts = cut_pass(clip) if cut_pass else segments.find_cuts(clip.frames())
    if total == 0:
        raise ValueError(f"{input_path}: no frames between --start {start_s} and --end {end_s}")
    return dataclasses.replace(clip, total=total, cuts=cuts)


def dream_video(
    input: str | Path,
    output: str | Path,
    settings: DreamSettings,
    compute: ComputeSettings,
    video: VideoSettings,
    encode: EncodeSettings,
    *,
    start_s: float = 0.0,
    end_s: float | None = None,
    max_frames: int | None = None,
    max_side: int | None = None,
    progress: bool = True,
) -> RenderResult:
    """Dream every frame of ``input`` into ``output`` (video file, .gif or PNG folder).

    Resumable: state lives in ``OUTPUT.dreamreel/``; rerunning the same
    command after an interruption continues where it stopped. Ctrl-C finishes
    the frames in hand, saves them and raises KeyboardInterrupt.
    """
    # 1. check input and output, count the frames and find the cuts, before any work
    clip = open_clip(input, output, start_s=start_s, end_s=end_s, max_frames=max_frames, max_side=max_side)
    total, cuts = clip.total, clip.cuts
    width, height = clip.size

    # 2. the render job: work folder and lock, frames already done, the writer
    with RenderJob.open(clip.output, clip.record(settings, compute, video), total, writer=clip.writer(encode)) as job:
        # 3. the model, loaded once; the lane plan, stored so a resumed run cuts the video the same way
        dreamer = Dreamer(settings, compute)
        plan = segments.load_plan(job.folder)
        if plan is None:
            lane_count = video.batch or auto_lanes(dreamer, height, width, total, video.warmup)
            if video.batch is None and progress and lane_count > 1:
                print(f"dreamreel: --batch auto: {lane_count} lanes fit in the free GPU memory", file=sys.stderr)
            plan = segments.plan_lanes(total, cuts, lane_count, video.warmup)
            segments.save_plan(job.folder, plan)
        elif plan.total != total:
            raise ValueError(f"{job.folder} holds a plan for {plan.total} frames, not {total}; delete it to start over")
        with job.running(desc="dreaming", progress=progress):
            pictures = segments.SegmentPictures(job.folder, plan, job.done, job.load_frame, job.put)
            pictures.finish_crossfades()
            # 4. the lanes in lockstep until every lane is done or Ctrl-C
            dream_lanes(dreamer, plan, range(len(plan.segments)), clip.frames, pictures, settings, video, lambda: job.stop_requested)
        return job.finish(lanes=len(plan.segments))


def _carry(lane: _Lane, current: np.ndarray, item: dict, blend: float) -> torch.Tensor:
    cur = to_tensor(current)
    h, w = current.shape[:2]
    if item["flow"] is None:  # --flow none: plain blending, everything "consistent"
        backward = torch.zeros(1, h, w, 2)
        mask = torch.ones(1, 1, h, w)
    else:
        backward = flow.flow_to_tensor(item["flow"])
        mask = torch.from_numpy(item["mask"]).float()[None, None]
    return carry_residual(cur, to_tensor(lane.previous_dream), to_tensor(lane.previous_input), backward, mask, blend)
