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
into B contiguous *lanes* dreamed in lockstep as one batch. Each lane starts
``warmup`` frames early (dreamed, not kept) so its carried detail has
settled to full strength before its first kept frame. Measured at blend 0.6
(tests/test_video.py): the frame-to-frame change at a lane seam is 1.4–1.7×
the typical change (1.9× without warm-up); the pattern itself does not
converge, so use ``--batch 1`` for final renders at high blend.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import decode, flow
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
        warmup: frames each lane after the first dreams before its first kept frame.
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
    """One contiguous segment of the video, dreamed in sequence."""

    first: int  # first frame decoded (warm-up included)
    keep_from: int  # first frame kept
    stop: int  # one past the last frame
    resumed: bool = False  # frame first-1 is on disk and carried from there
    previous_input: np.ndarray | None = None
    previous_dream: np.ndarray | None = None
    index: int = 0


def plan_lanes(total: int, batch: int, warmup: int, done: set[int]) -> list[_Lane]:
    """Cut ``total`` frames into ``batch`` lanes, skipping frames already done.

    A lane that already finished some frames resumes after its last finished
    frame, carrying that frame from disk; one that has none starts ``warmup``
    frames before its segment.
    """
    batch = max(1, min(batch, total))
    bounds = [round(total * k / batch) for k in range(batch + 1)]
    lanes = []
    for start, stop in zip(bounds, bounds[1:]):
        finished = start
        while finished < stop and finished in done:
            finished += 1
        if finished == stop:
            continue
        first = finished if finished > start else max(0, start - warmup)
        lanes.append(_Lane(first=first, keep_from=finished, stop=stop, index=first, resumed=finished > start))
    return lanes


class _Prefetch:
    """Decode one lane's frames and compute their flow in a background thread."""

    def __init__(self, frames: Iterator[np.ndarray], method: str):
        self.queue: queue.Queue = queue.Queue(maxsize=PREFETCH_FRAMES)
        self.estimator = flow.FlowEstimator(method) if method != "none" else None
        self.thread = threading.Thread(target=self._run, args=(frames,), daemon=True)
        self.thread.start()

    def _run(self, frames: Iterator[np.ndarray]) -> None:
        previous = None
        try:
            for frame in frames:
                item = {"frame": frame, "flow": None, "mask": None, "cut": False}
                if previous is not None:
                    item["cut"] = flow.scene_cut(previous, frame)
                    if self.estimator is not None and not item["cut"]:
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
    input_path = Path(input)
    info = decode.probe_video(input_path)
    out = Path(output)
    output_kind(out)
    check_output_folder(out.parent)  # before the work folder is made there
    if out.exists() and out.resolve() == input_path.resolve():
        raise ValueError(f"OUTPUT {output} is the input file; choose another name so the input is kept")
    clip = {"start_s": start_s, "end_s": end_s, "max_frames": max_frames, "max_side": max_side}
    frames = lambda first=0: decode.read_frames(  # noqa: E731 - a reader per lane
        input_path, start_s=start_s + first / info.fps, end_s=end_s, max_frames=None if max_frames is None else max_frames - first, max_side=max_side
    )
    total = sum(1 for _ in frames())
    if total == 0:
        raise ValueError(f"{input_path}: no frames between --start {start_s} and --end {end_s}")
    width, height = decode.output_size(info.width, info.height, max_side)

    # 2. the render job: work folder and lock, frames already done, the writer
    record = job_record("video", compute, input=file_stamp(input_path), dream=asdict(settings), video=asdict(video), clip=clip)
    writer = lambda: FrameWriter(  # noqa: E731
        out, fps=info.fps, size=(width, height), settings=encode, audio_source=input_path, audio_start_s=start_s
    )
    with RenderJob.open(out, record, total, writer=writer) as job:
        # 3. the model, loaded once; the lanes; a reader and flow worker per lane
        dreamer = Dreamer(settings, compute)
        lane_count = video.batch or auto_lanes(dreamer, height, width, total, video.warmup)
        if video.batch is None and progress and lane_count > 1:
            print(f"dreamreel: --batch auto: {lane_count} lanes fit in the free GPU memory", file=sys.stderr)
        lanes = plan_lanes(total, lane_count, video.warmup, job.done)
        prefetch = []
        for lane in lanes:
            prefetch.append(_Prefetch(frames(lane.first - lane.resumed), video.flow))
            if lane.resumed:  # frame first-1 is on disk: carry it, as the interrupted run did
                lane.previous_input = prefetch[-1].next()["frame"]
                lane.previous_dream = job.load_frame(lane.first - 1)
        with job.running(desc="dreaming", progress=progress):
            # 4. lockstep over lanes until every lane is done or Ctrl-C
            active = list(range(len(lanes)))
            while active and not job.stop_requested:
                starts, generators, groups = [], [], {}
                for k in active:
                    lane = lanes[k]
                    item = prefetch[k].next()
                    current = item["frame"]
                    if lane.previous_dream is None or item["cut"] or video.blend == 0:
                        start = to_tensor(current)
                        n_iter = settings.iterations
                    else:
                        start = _carry(lane, current, item, video.blend)
                        n_iter = settings.iterations if video.iterations_next is None else video.iterations_next
                    lane.previous_input = current
                    starts.append(start)
                    generators.append(frame_generator(settings.seed, lane.index))
                    groups.setdefault(n_iter, []).append(len(starts) - 1)
                # 5. dream the batch (lanes in their first frame may need more steps)
                dreamed = [None] * len(starts)
                for n_iter, members in groups.items():
                    batch = torch.cat([starts[m] for m in members])
                    result = to_uint8(dreamer(batch, iterations=n_iter, generators=[generators[m] for m in members]))
                    for m, rgb in zip(members, result):
                        dreamed[m] = rgb
                # 6. keep, save and encode
                for k, rgb in zip(active, dreamed):
                    lane = lanes[k]
                    lane.previous_dream = rgb
                    if lane.index >= lane.keep_from:
                        job.put(lane.index, rgb)
                    lane.index += 1
                active = [k for k in active if lanes[k].index < lanes[k].stop]
        return job.finish(lanes=len(lanes))


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
