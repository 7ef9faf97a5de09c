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
work folder, so a resumed run cuts the video the same way. Lanes are opt-in
(``--batch N``, for throughput): one lane is the default on every device.

On a GPU every picture of the loop (the carried dream, the warp, the
consistency mask) stays on the device; the CPU decodes and computes flow
ahead in threads (into page-locked memory), and the dreamed frame is copied
back while the next one is already queued, so the GPU does not wait for the
host. Before the loop, the model loads and captures its steps at the clip's
size while the cut pass reads the clip.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import torch

from . import decode, flow, segments
from .dream import ComputeSettings, Download, Dreamer, DreamSettings, HostBuffers, frame_generator, quantize_8bit, to_tensor
from .encode import EncodeSettings, FrameWriter, output_kind
from .files import check_not_an_input, check_output_folder
from .render import RenderJob, RenderResult, file_stamp, job_record

PREFETCH_FRAMES = 4  # decoded + flowed frames waiting per lane
# Threads computing flow for consecutive frames at once, each with OpenCV on
# one thread (see dream_video): DIS (medium) took 98 ms of one core per
# direction at 1280x720 on the development machine and 136-161 ms on the
# 16-core GPU host, so a GPU dreaming 25 frames/s needs 5 to 8 of them.
FLOW_WORKERS = min(8, os.cpu_count() or 1)


@dataclass(frozen=True)
class VideoSettings:
    """How frames are tied together. Presets fill these; flags override.

    Attributes:
        blend: share of the previous dream carried into the next frame
            (0 = every frame dreamed alone, 1 = pure feedback).
        flow: ``dis`` (OpenCV DIS), ``farneback`` or ``none`` (plain blending).
        flow_scale: share of the frame size the flow is computed at (see
            :class:`~dreamreel.pipeline.flow.FlowEstimator`): below 1 the
            flow is cheaper and the carry less exact (docs/performance.md).
        iterations_next: ascent steps per octave for frames after a lane's
            first (the carried dream needs fewer); None = ``iterations``.
        batch: lanes dreamed as one batch (1 = strictly sequential, the
            default: lanes start afresh, so they trade a little coherence at
            their borders for throughput).
        warmup: frames before a lane border inside a shot that both lanes
            dream and the output crossfades over. The two lanes' dreams are
            unrelated patterns, and the default look changes so little from
            frame to frame that a short crossfade shows: seam scores 1.66-1.72
            with 6 frames, 1.05-1.08 with 30 (docs/video.md, lanes).
        temporal: pull of every ascent step towards the carried start picture
            where the flow is trusted (the temporal term, see
            :func:`~dreamreel.pipeline.dream.temporal_pull`): 0 = off (the
            ascent may wander from the carried dream), 1 = no change there.
        cadence: dream every Nth frame (a *key* frame) and show the frames
            in between as the last key frame's dream residual warped onto
            them by the flow (:func:`show_residual`); each key frame carries
            the previous key frame's dream. 1 = dream every frame. A shot's
            first frame is always a key frame.
    """

    blend: float = 0.6
    flow: str = "dis"
    flow_scale: float = 1.0
    iterations_next: int | None = None
    batch: int = 1
    warmup: int = 30
    temporal: float = 0.0
    cadence: int = 1

    def __post_init__(self):
        for name, value in (("blend", self.blend), ("temporal", self.temporal)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"--{name} {value!r}: expected a number from 0 to 1")
        if self.flow not in flow.FLOW_METHODS:
            raise ValueError(f"--flow {self.flow!r}: expected one of {', '.join(flow.FLOW_METHODS)}")
        flow.check_flow_scale(self.flow_scale)
        checks = (("iterations-next", self.iterations_next, 0), ("batch", self.batch, 1), ("warmup", self.warmup, 0), ("cadence", self.cadence, 1))
        for name, value, lo in checks:
            if value is None and name == "iterations-next":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= 10_000:
                raise ValueError(f"--{name} {value!r}: expected a whole number from {lo} to 10000")


def carry_residual(
    current: torch.Tensor,
    previous_dream: torch.Tensor,
    previous_input: torch.Tensor,
    backward_flow: torch.Tensor,
    mask: torch.Tensor,
    blend: float,
) -> torch.Tensor:
    """The start picture of frame t: its input plus the warped, masked dream residual.

    The residual is warped with Lanczos-3 (:func:`~dreamreel.pipeline.flow.warp_with_flow`):
    carried detail is resampled every frame, bilinear resampling blurs it away
    within a few frames, and bicubic still cost the dream a third of its fine
    detail on footage with fast motion (variance of the Laplacian 0.67x that
    of frames dreamed alone, against 0.80x with Lanczos, same settings).

    Args:
        current: (B, 3, H, W) input frame t in [0, 1].
        previous_dream, previous_input: (B, 3, H, W) frame t-1 dreamed and raw.
        backward_flow: (B, H, W, 2) flow t → t-1 in pixels, computed on inputs.
        mask: (B, 1, H, W) 1 where t-1 explains t, 0 at occlusions.
        blend: share of the residual carried over, 0..1.

    Returns:
        (B, 3, H, W) in [0, 1].
    """
    residual = flow.warp_with_flow(previous_dream - previous_input, backward_flow, mode="lanczos")
    # Zero-mean per channel: the carried detail may not shift the frame's
    # colour balance, or frames brighten a little more every frame.
    residual = residual - residual.mean(dim=(2, 3), keepdim=True)
    return (current + blend * mask * residual).clamp(0, 1)


def show_residual(
    current: torch.Tensor,
    dream: torch.Tensor,
    dream_input: torch.Tensor,
    backward_flow: torch.Tensor,
    mask: torch.Tensor,
    share: float = 1.0,
) -> torch.Tensor:
    """Frame t as shown without dreaming it: its input plus an earlier frame's dream residual, warped and masked.

    The frames between key frames of ``--cadence`` and every output frame of
    ``dreamreel live`` are made so. Unlike :func:`carry_residual` nothing is
    fed back, so the residual keeps its mean colour: with zero flow and
    ``share`` 1 the result is ``dream`` itself, and frames shown between two
    dreamed ones keep their colour. The same Lanczos warp as the carry.

    Args:
        current: (B, 3, H, W) input frame t in [0, 1].
        dream, dream_input: (B, 3, H, W) the earlier frame dreamed and raw.
        backward_flow: (B, H, W, 2) flow t → that frame in pixels, computed on inputs.
        mask: (B, 1, H, W) 1 where that frame explains t, 0 at occlusions (shown undreamed).
        share: how much of the residual is shown, 0..1 (live ``mix``).

    Returns:
        (B, 3, H, W) in [0, 1].
    """
    residual = flow.warp_with_flow(dream - dream_input, backward_flow, mode="lanczos")
    return (current + share * mask * residual).clamp(0, 1)


@dataclass
class _Lane:
    """One segment of the plan, dreamed in sequence: where it is and what it carries."""

    segment: int  # index in the plan
    first: int  # first frame the segment dreams (fresh start, no carry)
    stop: int  # one past its last frame
    index: int  # next frame to dream
    prefetch: _Prefetch
    previous_input: torch.Tensor | None = None  # (1, 3, H, W) of the last key frame, on the dreamer's device
    previous_dream: torch.Tensor | None = None  # (1, 3, H, W) its dream, 8-bit values, as saved


def last_key_frame(first: int, index: int, cuts: Sequence[int], cadence: int) -> int:
    """The last key frame before ``index`` of a lane starting at ``first``: the frame ``index`` carries from.

    Key frames are the lane's first frame, every cut, and each frame
    ``cadence`` frames after the key frame before it; the frames between are
    shown, not dreamed. With ``cadence`` 1 this is ``index - 1``.
    """
    cuts = set(cuts)
    key = first
    for t in range(first + 1, index):
        if t in cuts or t - key >= cadence:
            key = t
    return key


class _Prefetch:
    """Decode frames ``first..stop-1`` in a background thread, with their flow from ``FLOW_WORKERS`` threads.

    Each item holds the frame as a (1, H, W, 3) uint8 tensor (``pixels``),
    whether it is a key frame (``key``, see :func:`last_key_frame`; ``first``
    is one) and the backward and forward flow between it and the key frame
    before it (the frame before, at ``cadence`` 1) as a (2, H, W, 2) float32
    tensor (``flows``: None at ``first``, at ``cuts``, where a new shot
    starts and nothing is carried, and with ``method`` "none"), computed at
    ``scale`` of the frame size. With ``buffers`` (a GPU dreams) both are made
    in its page-locked buffers here, so the loop's thread only queues their
    copies (and gives the buffers back).
    """

    def __init__(
        self, frames: Iterator[np.ndarray], first: int, stop: int, cuts: Sequence[int], method: str,
        buffers: HostBuffers | None = None, cadence: int = 1, scale: float = 1.0,
    ):  # fmt: skip
        self.queue: queue.Queue = queue.Queue(maxsize=PREFETCH_FRAMES)
        self.method = method
        self.scale = scale
        self.buffers = buffers
        self._local = threading.local()  # a FlowEstimator per flow thread: they are not thread-safe
        self._closed = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(frames, first, stop, set(cuts), cadence), daemon=True)
        self.thread.start()

    def _host(self, array: np.ndarray) -> torch.Tensor:
        """``array`` as a tensor the loop's thread can copy to its device: in a page-locked buffer where there are buffers."""
        return self.buffers.copy_of(array) if self.buffers is not None else torch.from_numpy(array)

    def _flows(self, previous: np.ndarray, frame: np.ndarray) -> torch.Tensor:
        estimator = getattr(self._local, "estimator", None)
        if estimator is None:
            estimator = self._local.estimator = flow.FlowEstimator(self.method, scale=self.scale)
        return self._host(np.stack([estimator(frame, previous), estimator(previous, frame)]))

    def _run(self, frames: Iterator[np.ndarray], first: int, stop: int, cuts: set[int], cadence: int) -> None:
        reference = key_index = None  # the last key frame, which the frames after it carry from
        try:
            with ThreadPoolExecutor(FLOW_WORKERS, thread_name_prefix="dreamreel-flow") as pool:
                pending: deque = deque()  # (frame, cut, key, future of its flows), in frame order
                for t, frame in zip(range(first, stop), frames):
                    cut = t in cuts
                    key = reference is None or cut or t - key_index >= cadence
                    flows = None
                    if reference is not None and self.method != "none" and not cut:
                        flows = pool.submit(self._flows, reference, frame)
                    pending.append((self._host(frame[None]), cut, key, flows))
                    if key:
                        reference, key_index = frame, t
                    while len(pending) > FLOW_WORKERS:
                        if not self._put(_item(*pending.popleft())):
                            return
                while pending:
                    if not self._put(_item(*pending.popleft())):
                        return
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self._put(exc)
            return
        finally:
            getattr(frames, "close", lambda: None)()  # the decoder's file, now
        self._put(None)

    def _put(self, item) -> bool:
        """Queue ``item`` unless :meth:`close` was called first; False when closed."""
        while not self._closed.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def close(self) -> None:
        """Stop reading: the thread ends within a moment even if nobody takes its frames."""
        self._closed.set()

    def next(self):
        item = self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item


def _item(pixels: torch.Tensor, cut: bool, key: bool, flows) -> dict:
    """One item of the queue, once its flows (a Future, or None) are ready."""
    return {"pixels": pixels, "cut": cut, "key": key, "flows": flows.result() if flows is not None else None}


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
    frames come out identical; a lane carries from its last key frame on
    disk (``--cadence``: frames shown since then are read again, not redone).

    Args:
        frames: ``frames(t)`` reads the clip from its frame t on.
        pictures: where each lane's pictures go (finished or crossfaded).
        stop_requested: when it says True, the loop ends after the frames in hand.

    Returns:
        The number of frames made, dreamed or shown between key frames
        (warm-up frames and frames dreamed again to restart the lockstep included).
    """
    step = segments.resume_step(plan, ids, pictures.has)
    device = dreamer.device
    lanes = []
    for k in ids:
        seg = plan.segments[k]
        index = seg.first + step
        if index >= seg.stop:
            continue
        # its last key frame is on disk: carry it, as the interrupted run did
        key = last_key_frame(seg.first, index, plan.cuts, video.cadence) if index > seg.first else index
        reader = _Prefetch(frames(key), key, seg.stop, plan.cuts, video.flow, dreamer.host_buffers, video.cadence, video.flow_scale)
        lane = _Lane(k, seg.first, seg.stop, index, reader)
        lanes.append(lane)
        if key < index:
            lane.previous_input = to_tensor(lane.prefetch.next()["pixels"], device, buffers=dreamer.host_buffers)
            lane.previous_dream = to_tensor(pictures.load(k, key), device)
            for _ in range(key + 1, index):  # frames shown from that key frame, already on disk
                skipped = lane.prefetch.next()
                _give_back(dreamer.host_buffers, skipped["pixels"], skipped["flows"])
    try:
        return _lockstep(dreamer, lanes, pictures, settings, video, stop_requested)
    finally:
        for lane in lanes:  # a stop or an error leaves readers behind: end them
            lane.prefetch.close()


def _lockstep(dreamer, lanes, pictures, settings, video, stop_requested) -> int:
    """The loop of :func:`dream_lanes`: one batch per step until the lanes end or a stop; returns frames dreamed."""
    device = dreamer.device
    dreamed_frames = 0
    in_flight = None  # (lanes and indices, Download) of the batch queued last
    while lanes and not stop_requested():
        # 1. each lane's start picture: fresh at its first frame and at cuts, else carried;
        # a frame between key frames (--cadence) is shown, not dreamed
        starts, weights, generators, groups = {}, {}, {}, {}  # by lane position
        pictures_out = [None] * len(lanes)
        for k, lane in enumerate(lanes):
            item = lane.prefetch.next()
            current = to_tensor(item["pixels"], device, buffers=dreamer.host_buffers)
            if not item["key"]:
                backward, mask = flows_and_mask(item["flows"], current)
                pictures_out[k] = quantize_8bit(show_residual(current, lane.previous_dream, lane.previous_input, backward, mask))
                _give_back(dreamer.host_buffers, item["flows"])
                continue
            if lane.index == lane.first or item["cut"] or video.blend == 0:
                start = current
                weight = torch.zeros_like(start[:, :1])  # nothing carried: no temporal pull
                n_iter = settings.iterations
            else:
                start, weight = carry(current, lane.previous_dream, lane.previous_input, item["flows"], video.blend)
                n_iter = settings.iterations if video.iterations_next is None else video.iterations_next
            _give_back(dreamer.host_buffers, item["flows"])  # after their copy, or unused (a first frame, a cut, --blend 0)
            lane.previous_input = current
            starts[k], weights[k] = start, weight
            generators[k] = frame_generator(settings.seed, lane.index)
            groups.setdefault(n_iter, []).append(k)
        # 2. dream the key frames as one batch (lanes in their first frame may need more steps); the dreams stay on the device
        for n_iter, members in groups.items():
            batch = torch.cat([starts[m] for m in members])
            anchor = temporal_anchor(batch, torch.cat([weights[m] for m in members]), video.temporal)
            result = dreamer(batch, iterations=n_iter, generators=[generators[m] for m in members], anchor=anchor)
            for m, picture in zip(members, quantize_8bit(result)):  # carried as the 8-bit frame that is saved
                pictures_out[m] = picture[None]
                lanes[m].previous_dream = picture[None]
        # 3. copy this batch to the host while the next one is queued; finish, or keep for the crossfade, the last one
        queued = ([(lane.segment, lane.index) for lane in lanes], Download(torch.cat(pictures_out), dreamer.host_buffers))
        if in_flight is not None:
            _hand_over(in_flight, pictures)
        in_flight = queued
        for lane in lanes:
            lane.index += 1
        dreamed_frames += len(pictures_out)
        lanes = [lane for lane in lanes if lane.index < lane.stop]
    if in_flight is not None:
        _hand_over(in_flight, pictures)
    return dreamed_frames


def _hand_over(batch: tuple[list[tuple[int, int]], Download], pictures: segments.SegmentPictures) -> None:
    """Wait for a dreamed batch's copy to the host and give each picture to ``pictures``."""
    places, download = batch
    for (segment, index), rgb in zip(places, download.wait()):
        pictures.put(segment, index, rgb)


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
        return decode.read_frames(
            self.input, start_s=self.start_s, end_s=self.end_s, max_frames=self.max_frames, max_side=self.max_side, skip=first
        )

    def counted(self, cut_pass: Callable[[Clip], tuple[int, tuple[int, ...]]] | None = None) -> Clip:
        """This clip with its frames counted and its cuts found, in one pass over it.

        ``cut_pass(clip)`` returns ``(total, cuts)``; the default reads the
        clip once with :func:`~dreamreel.pipeline.segments.find_cuts` (Ray
        spreads it over workers).

        Raises:
            ValueError: no frames between ``start_s`` and ``end_s``.
        """
        total, cuts = cut_pass(self) if cut_pass else segments.find_cuts(self.frames())
        if total == 0:
            raise ValueError(f"{self.input}: no frames between --start {self.start_s} and --end {self.end_s}")
        return dataclasses.replace(self, total=total, cuts=cuts)

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
    other_inputs: Mapping[str, str | Path | None] | None = None,
) -> Clip:
    """Check input and output before any work; the clip's frames are not counted yet (:meth:`Clip.counted`).

    ``other_inputs``: more files the job reads, by flag (``--guide``: see
    :meth:`~dreamreel.pipeline.dream.ComputeSettings.input_files`), which
    the output must not overwrite either.

    Raises:
        ValueError: an unreadable input, bad clip options, or an output that
            cannot be written or is an input.
    """
    decode.check_clip_options(start_s=start_s, end_s=end_s, max_frames=max_frames, max_side=max_side)
    input_path = Path(input).resolve()  # Ray workers on other nodes have other working folders
    info = decode.probe_video(input_path)
    out = Path(output).resolve()
    output_kind(out)
    check_output_folder(out.parent)  # before the work folder is made there
    check_not_an_input(out, {"input": input_path, **(other_inputs or {})})
    size = decode.output_size(info.width, info.height, max_side)
    return Clip(input_path, out, info.fps, size, 0, (), start_s, end_s, max_frames, max_side)


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
    # 1. check input and output before any work
    clip = open_clip(input, output, start_s=start_s, end_s=end_s, max_frames=max_frames, max_side=max_side,
                     other_inputs=compute.input_files())  # fmt: skip
    with one_opencv_thread():
        # 2. the cut pass counts the frames in a thread while the model loads and captures its steps at the clip's size
        with ThreadPoolExecutor(1, thread_name_prefix="dreamreel-cuts") as cut_pass:
            stop = threading.Event()
            counting = cut_pass.submit(clip.counted, lambda c: segments.find_cuts(itertools.takewhile(lambda _: not stop.is_set(), c.frames())))
            try:
                dreamer = Dreamer(settings, compute)
                dreamer.warm_up(video.batch, clip.size[1], clip.size[0], anchored=video.temporal > 0)
                clip = counting.result()
            except BaseException:
                # a model that fails to load, or Ctrl-C while it loads or the pass reads:
                # the pass ends at its next frame, not the clip's last
                stop.set()
                raise

        # 3. the render job: work folder and lock, frames already done, the writer
        with RenderJob.open(clip.output, clip.record(settings, compute, video), clip.total, writer=clip.writer(encode)) as job:
            # 4. the lane plan, stored so a resumed run cuts the video the same way
            plan = segments.load_plan(job.folder)
            if plan is None:
                plan = segments.plan_lanes(clip.total, clip.cuts, video.batch, video.warmup)
                segments.save_plan(job.folder, plan)
            elif plan.total != clip.total:
                raise ValueError(f"{job.folder} holds a plan for {plan.total} frames, not {clip.total}; delete it to start over")
            with job.running(desc="dreaming", progress=progress):
                pictures = segments.SegmentPictures(job.folder, plan, job.done, job.load_frame, job.put)
                pictures.finish_crossfades()
                # 5. the lanes in lockstep until every lane is done or Ctrl-C
                dream_lanes(dreamer, plan, range(len(plan.segments)), clip.frames, pictures, settings, video, lambda: job.stop_requested)
            return job.finish(lanes=len(plan.segments))


@contextmanager
def one_opencv_thread() -> Iterator[None]:
    """OpenCV on one thread inside, process-wide, restored after.

    The video stage's flow, saving and reading have threads of their own, and
    OpenCV's pool of spinning threads per call only took cores from them: on
    the 16-core GPU host a DIS call cost about 240 ms of CPU time that way,
    against 136-161 ms on one thread.
    """
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def temporal_anchor(starts: torch.Tensor, weights: torch.Tensor, temporal: float) -> tuple | None:
    """The temporal term of a batch: each picture pulled towards its carried start where its mask trusts it.

    Args:
        starts: (B, 3, H, W) start pictures.
        weights: (B, 1, H, W) consistency masks; 0 for pictures with nothing carried.
        temporal: pull per ascent step, 0..1.

    Returns:
        ``anchor`` for :meth:`~dreamreel.pipeline.dream.Dreamer.__call__`, or
        None when the pull is off.
    """
    if temporal == 0:
        return None
    return starts, weights, temporal


def flows_and_mask(flows: torch.Tensor | None, current: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (1, H, W, 2) backward flow and (1, 1, H, W) consistency mask of ``current`` (1, 3, H, W), on its device.

    Args:
        flows: (2, H, W, 2) backward and forward flow between ``current`` and
            the frame it carries from, on any device; None (``--flow none``)
            gives zero flow and a mask that trusts everything (plain blending).
    """
    _, _, h, w = current.shape
    if flows is None:
        return torch.zeros(1, h, w, 2, device=current.device), torch.ones(1, 1, h, w, device=current.device)
    backward, forward = flows.to(current.device, non_blocking=True).split(1)
    return backward, flow.consistency_mask(forward, backward)


def carry(
    current: torch.Tensor, previous_dream: torch.Tensor, previous_input: torch.Tensor, flows: torch.Tensor | None, blend: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (1, 3, H, W) start picture of ``current`` carried from an earlier dream, and its (1, 1, H, W) consistency mask.

    :func:`carry_residual` with the flow and mask of :func:`flows_and_mask`;
    the mask also weighs the temporal term (:func:`temporal_anchor`).
    """
    backward, mask = flows_and_mask(flows, current)
    return carry_residual(current, previous_dream, previous_input, backward, mask, blend), mask


def _give_back(buffers: HostBuffers | None, *tensors: torch.Tensor | None) -> None:
    """Return an item's page-locked buffers (a GPU dreams) once their copies are queued, or when unused."""
    if buffers is not None:
        for tensor in tensors:
            if tensor is not None:
                buffers.give(tensor)
