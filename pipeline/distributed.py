"""Dream videos on many GPUs or machines with Ray: ``dreamreel video IN OUT --ray [ADDRESS]``.

How the work is split: the carried dream makes a shot's frames sequential,
so the unit of parallel work is a *segment* of the plan in
:mod:`~dreamreel.pipeline.segments`: every shot, and long shots cut further
into ``segment_frames`` pieces with warm-up frames crossfaded at their borders.
A segment that starts at a cut is independent of everything before it, so
splitting there changes no frame: the output equals a single-process run.

Who does what:

* the driver (the process that runs ``dreamreel``) finds the cuts, plans,
  holds the job's work folder (:class:`~dreamreel.pipeline.render.RenderJob`:
  lock, progress bar, Ctrl-C) and encodes the output in order, sound kept;
* one Ray actor per GPU (``num_gpus=1``) or per ``threads`` CPUs holds one
  loaded model and dreams the segments it is handed, one at a time, with the
  same code as the video stage (:func:`~dreamreel.pipeline.video.dream_lanes`);
  the driver hands a worker its next segment as soon as it is free, so slow
  and fast workers balance;
* workers write finished frames straight into the work folder. On a cluster
  the output's folder must therefore be on a file system every node sees
  (NFS, Lustre, a mounted bucket). We chose this over sending frames back
  through Ray's object store because the frames must be on disk anyway for
  resuming: written once by the worker, the driver only reads them back to
  encode, and a lost driver loses nothing.

Failures: an actor that dies (its process or its node) is restarted by Ray
and its segment retried (``max_restarts``, ``max_task_retries``); the retry
resumes from the segment's frames on disk. A killed driver takes its workers
with it; running the same command again resumes: finished segments are
skipped and a segment begun continues after its last frame on disk, so no
frame is dreamed twice.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

from . import decode, segments
from .dream import ComputeSettings, DreamSettings
from .encode import EncodeSettings
from .render import RenderJob, RenderResult
from .video import Clip, VideoSettings, dream_lanes, open_clip

RAY_MISSING = '--ray needs Ray, an optional extra: pip install "dreamreel[ray]"'
# A worker that dies is restarted this many times, and the segment it held
# retried as often, before the job fails (each restart reloads the model).
WORKER_RESTARTS = 3
# The cut pass is spread over Ray tasks of this many frames each: serial on
# the driver it would read a 90-minute film alone while the GPUs wait (see
# docs/scaling.md).
CUT_CHUNK_FRAMES = 2000
# How often the driver looks for frames the workers finished, for the progress
# bar and the encoder (seconds); a finished segment is noticed at once.
PROGRESS_POLL_S = 0.5


@dataclass(frozen=True)
class RaySettings:
    """Where and how wide to run (``--ray``, ``--workers``, ``--threads``, ``--segment-frames``).

    Attributes:
        address: None starts a local Ray for the job; ``auto`` joins the
            cluster this machine belongs to; ``ray://HOST:10001`` a remote one.
        workers: actors to start; None = one per GPU of the cluster, or one
            per ``threads`` CPUs where it has no GPU (or ``--device cpu``).
        threads: torch threads of each CPU worker (Ray reserves as many CPUs).
        segment_frames: longest segment; longer shots are cut, with
            ``warmup`` frames crossfaded at each such border.
    """

    address: str | None = None
    workers: int | None = None
    threads: int = 1
    segment_frames: int = 300

    def __post_init__(self):
        for name, value in (("workers", self.workers), ("threads", self.threads), ("segment-frames", self.segment_frames)):
            if value is None and name == "workers":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name} {value!r}: expected a whole number of at least 1")


def import_ray():
    """The ``ray`` module, or a one-line ValueError naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise ValueError(RAY_MISSING) from None
    return ray


class SegmentWorker:
    """One Ray actor: a model loaded once, dreaming the segments it is handed.

    Args:
        settings, compute, video: the look, as for ``dreamreel video``.
        threads: torch threads (CPU workers).
    """

    def __init__(self, settings: DreamSettings, compute: ComputeSettings, video: VideoSettings, threads: int):
        import cv2
        import torch

        from .dream import Dreamer

        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
        self.dreamer = Dreamer(settings, compute)
        self.settings = settings
        self.video = video
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def dream(self, clip: Clip, folder: str, plan: dict, k: int) -> dict:
        """Dream segment ``k`` of ``plan`` into the work folder ``folder``, resuming from its frames there.

        Returns:
            ``{"segment", "frames", "seconds", "worker"}``: frames dreamed
            (0 for a segment that was already done) and the wall time.
        """
        from .files import frame_indices, frame_path, load_image, save_image

        start = time.perf_counter()
        frames_folder = Path(folder) / "frames"
        pictures = segments.SegmentPictures(
            Path(folder),
            segments.SegmentPlan.from_json(plan),
            frame_indices(frames_folder),
            lambda t: load_image(frame_path(frames_folder, t)),
            lambda t, rgb: save_image(frame_path(frames_folder, t), rgb, work=True),
        )
        dreamed = dream_lanes(self.dreamer, pictures.plan, [k], clip.frames, pictures, self.settings, self.video, lambda: False)
        return {"segment": k, "frames": dreamed, "seconds": time.perf_counter() - start, "worker": self.name}


@dataclass
class _Job:
    """One video of a Ray run, as the driver tracks it."""

    clip: Clip
    render: RenderJob
    plan: segments.SegmentPlan
    pictures: segments.SegmentPictures
    dreamed: int = 0


def dream_videos(
    videos: Sequence[tuple[str | Path, str | Path]],
    settings: DreamSettings,
    compute: ComputeSettings,
    video: VideoSettings,
    encode: EncodeSettings,
    distributed: RaySettings = RaySettings(),
    *,
    start_s: float = 0.0,
    end_s: float | None = None,
    max_frames: int | None = None,
    max_side: int | None = None,
    progress: bool = True,
    verbose: bool = False,
) -> list[RenderResult]:
    """Dream each ``(input, output)`` video with one pool of Ray workers; the Python entry for batches.

    The segments of every video go into one queue, so a batch of short clips
    keeps every worker busy. Each output is resumable as with ``dreamreel
    video``: rerun the same call after an interruption. Inside a program that
    already called ``ray.init``, that Ray is used (``distributed.address`` is
    then ignored); otherwise Ray is started (or joined) for the call and shut
    down after it.

    Returns:
        One :class:`~dreamreel.pipeline.render.RenderResult` per video, in order;
        its ``lanes`` is the number of workers.

    Raises:
        ValueError: Ray is not installed, or a video or setting is refused.
        KeyboardInterrupt: Ctrl-C; finished frames are kept.
    """
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=distributed.address, include_dashboard=False, log_to_driver=verbose)
    try:
        # 1. each video checked; the workers start, each loading its model, while Ray tasks count the frames and find the cuts
        clips = [open_clip(i, o, start_s=start_s, end_s=end_s, max_frames=max_frames, max_side=max_side) for i, o in videos]
        workers = _start_workers(ray, settings, compute, video, distributed)
        clips = [clip.counted(lambda c: find_cuts_ray(ray, c)) for clip in clips]
        with ExitStack() as stack:
            # 2. the render jobs, their stored (or new) plans
            jobs = []
            for clip in clips:
                record = clip.record(settings, compute, video, ray={"segment_frames": distributed.segment_frames})
                render = stack.enter_context(RenderJob.open(clip.output, record, clip.total, writer=clip.writer(encode)))
                plan = segments.load_plan(render.folder)
                if plan is None:
                    plan = segments.plan_segments(clip.total, clip.cuts, distributed.segment_frames, video.warmup)
                    segments.save_plan(render.folder, plan)
                pictures = segments.SegmentPictures(render.folder, plan, render.done, render.load_frame, render.put)
                jobs.append(_Job(clip, render, plan, pictures))
            with ExitStack() as running:
                for job in jobs:
                    running.enter_context(job.render.running(desc=f"dreaming {job.clip.input.name}", progress=progress))
                # 3. segments to workers as they come free; frames to the encoders as workers finish them
                rates = _run(ray, workers, jobs)
                for job in jobs:
                    job.pictures.finish_crossfades()  # frames whose two parts came from workers that missed each other
                    _add_finished(job, range(job.plan.total))
            if verbose:
                for name, (frames, seconds) in sorted(rates.items()):
                    print(f"dreamreel: worker {name}: {frames} frames in {seconds:.1f} s ({frames / max(seconds, 1e-9):.2f} frames/s)")
                print(f"dreamreel: {sum(job.dreamed for job in jobs)} frames dreamed by {len(workers)} workers")
            return [job.render.finish(lanes=len(workers)) for job in jobs]
    finally:
        if started:
            ray.shutdown()


def dream_video_ray(
    input: str | Path,
    output: str | Path,
    settings: DreamSettings,
    compute: ComputeSettings,
    video: VideoSettings,
    encode: EncodeSettings,
    distributed: RaySettings = RaySettings(),
    **options,
) -> RenderResult:
    """``dreamreel video INPUT OUTPUT --ray``: one video, see :func:`dream_videos` for ``options``."""
    return dream_videos([(input, output)], settings, compute, video, encode, distributed, **options)[0]


def find_cuts_ray(ray, clip: Clip, chunk_frames: int = CUT_CHUNK_FRAMES) -> tuple[int, tuple[int, ...]]:
    """:func:`~dreamreel.pipeline.segments.find_cuts` of ``clip`` in Ray tasks of ``chunk_frames`` frames.

    Chunk k reads frames ``k·n - 1 .. (k+1)·n - 1`` (one frame before its own,
    so the pair across its start is checked too) and finds the same cuts as
    one pass would. Chunks go out in waves, one per CPU of the cluster, until
    one comes back short: the clip's end. The tasks reserve no CPU: the
    dreaming workers hold the CPUs (they load their models meanwhile), and
    the pass is short beside the dreaming. A clip that by its container's
    count fits in one chunk is read in this process instead, which has
    everything imported: a task would first start a process and import
    torch, seconds beside the workers loading their models.

    Returns:
        ``(total, cuts)`` as :func:`~dreamreel.pipeline.segments.find_cuts` gives them.
    """
    announced = decode.probe_video(clip.input).frame_count_estimate
    if announced is not None and min(announced, clip.max_frames or announced) <= chunk_frames:
        return segments.find_cuts(clip.frames())
    task = ray.remote(num_cpus=0, scheduling_strategy="SPREAD")(_find_cuts_in_chunk)
    wave = max(1, int(ray.cluster_resources().get("CPU", 1)))
    total, cuts, k = 0, [], 0
    while total == k * chunk_frames:
        results = ray.get([task.remote(clip, (k + j) * chunk_frames, chunk_frames) for j in range(wave)])
        for count, found in results:
            total += count
            cuts += found
            k += 1
            if count < chunk_frames:
                break
    return total, tuple(cuts)


def _find_cuts_in_chunk(clip: Clip, start: int, count: int) -> tuple[int, list[int]]:
    """Frames of ``clip`` in ``start..start+count-1`` that exist, and the cuts among them."""
    first = max(0, start - 1)
    frames = itertools.islice(clip.frames(first), start + count - first)
    try:
        seen, cuts = segments.find_cuts(frames)
    except ValueError:  # "frame N was asked for, but the clip ends before it"
        if start == 0:
            raise
        return 0, []
    return max(0, seen - (start - first)), [first + t for t in cuts if first + t >= start]


def _start_workers(ray, settings: DreamSettings, compute: ComputeSettings, video: VideoSettings, distributed: RaySettings) -> list:
    """One actor per GPU, or per ``threads`` CPUs; each loads the model once.

    Raises:
        ValueError: ``--workers`` asks for more than the cluster holds (the
            actors that do not fit would wait for resources forever).
    """
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if compute.device != "cpu" else 0
    if gpus:
        fit, options = gpus, {"num_gpus": 1, "num_cpus": 1}
    else:
        fit, options = max(1, int(resources.get("CPU", 1)) // distributed.threads), {"num_cpus": distributed.threads}
    count = distributed.workers or fit
    if count > fit:
        what = f"{gpus} GPUs" if gpus else f"{int(resources.get('CPU', 1))} CPUs at --threads {distributed.threads}"
        raise ValueError(f"--workers {count}: the Ray cluster holds {fit} workers ({what}); ask for at most {fit}")
    actor = ray.remote(SegmentWorker).options(max_restarts=WORKER_RESTARTS, max_task_retries=WORKER_RESTARTS, **options)
    return [actor.remote(settings, compute, video, distributed.threads) for _ in range(count)]


def _run(ray, workers: list, jobs: list[_Job]) -> dict[str, tuple[int, float]]:
    """Hand out every unfinished segment of every job; returns frames and seconds per worker."""
    todo = [
        (j, k)
        for j, job in enumerate(jobs)
        for k, seg in enumerate(job.plan.segments)
        if any(t not in job.render.done for t in range(seg.first, seg.stop))
    ]
    todo.reverse()  # pop() hands them out in order, so the encoders can start early
    plans = [ray.put(job.plan.to_json()) for job in jobs]
    running: dict = {}
    idle = list(workers)
    rates: dict[str, list] = defaultdict(lambda: [0, 0.0])
    polled = time.perf_counter()
    while todo or running:
        if any(job.render.stop_requested for job in jobs):
            todo.clear()  # Ctrl-C: finish the segments in hand
        while todo and idle:
            j, k = todo.pop()
            worker = idle.pop()
            job = jobs[j]
            running[worker.dream.remote(job.clip, str(job.render.folder), plans[j], k)] = (worker, j, k)
        if not running:
            break
        ready, _ = ray.wait(list(running), num_returns=1, timeout=PROGRESS_POLL_S)
        if time.perf_counter() - polled >= PROGRESS_POLL_S:  # frames finished meanwhile: the bar and the encoder move on
            polled = time.perf_counter()
            for _, j, k in running.values():
                seg = jobs[j].plan.segments[k]
                _add_finished(jobs[j], range(seg.start, seg.stop), up_to_missing=True)  # its warm-up frames wait for the segment before
        if not ready:
            continue
        worker, j, _ = running.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except ray.exceptions.RayError as exc:
            raise RuntimeError(
                f"a Ray worker failed {WORKER_RESTARTS + 1} times ({type(exc).__name__}); "
                "finished frames are kept: rerun the same command to continue"
            ) from exc
        idle.append(worker)
        job = jobs[j]
        job.dreamed += result["frames"]
        seg = job.plan.segments[result["segment"]]
        _add_finished(job, range(seg.first, seg.stop))
        rates[result["worker"]][0] += result["frames"]
        rates[result["worker"]][1] += result["seconds"]
    return {name: (frames, seconds) for name, (frames, seconds) in rates.items()}


def _add_finished(job: _Job, frames: range, *, up_to_missing: bool = False) -> None:
    """Tell the job's encoder about frames in ``frames`` that workers finished and it has not heard of.

    With ``up_to_missing`` it stops at the first frame not on disk yet: a
    worker finishes a segment's frames in order, so a poll of a running
    segment looks at one missing file, not at all of them (on a cluster's
    shared file system every look is a round trip).
    """
    from .files import frame_path

    for t in frames:
        if t in job.pictures.done:
            continue
        if not frame_path(job.render.frames, t).exists():
            if up_to_missing:
                return
            continue
        job.pictures.done.add(t)
        job.render.add_saved(t)
