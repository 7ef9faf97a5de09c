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

Failures: everything the driver can check (the files, the flags, the
cluster's address, the model and the look) is checked before Ray starts, and
refused in one line as ``dreamreel video`` refuses it. An error raised inside
a worker (a ``--device`` its node lacks, a file it cannot read) comes back as
that worker's own exception and message and is not retried. An actor that
dies (its process or its node) is restarted by Ray and its segment retried
(``max_restarts``, ``max_task_retries``); the retry resumes from the
segment's frames on disk. Ctrl-C stops every worker after its frame in hand.
A killed driver takes its workers with it; running the same command again
resumes: finished segments are skipped and a segment begun continues after
its last frame on disk, so no frame is dreamed twice.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from . import decode, models, segments
from .dream import ComputeSettings, Dreamer, DreamSettings
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
# How long a cluster at --ray HOST:PORT may take to answer (seconds): ray.init
# itself retries an address where no Ray answers for about 13 minutes, saying
# nothing but log lines.
CONNECT_TIMEOUT_S = 10.0
# An HTTP/2 client's first bytes and an empty SETTINGS frame. Ray's GCS and its
# client server speak gRPC, whose servers answer with a SETTINGS frame (type 4).
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
HTTP2_SETTINGS = 4
ADDRESS_FORMS = "auto, HOST:PORT (the head node's address, port 6379 unless set) or ray://HOST:10001 (Ray Client)"


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

    It runs two threads (``max_concurrency=2``): one dreams, the other takes
    :meth:`stop` while it does.

    Args:
        settings, compute, video: the look, as for ``dreamreel video``.
        threads: torch threads (CPU workers).
    """

    def __init__(self, settings: DreamSettings, compute: ComputeSettings, video: VideoSettings, threads: int):
        import cv2

        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
        self.settings = settings
        self.video = video
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.stopping = threading.Event()
        # A failure to load is kept for ready() and dream() to report: raised
        # from __init__ it would kill the actor, and Ray would restart it
        # WORKER_RESTARTS times to fail the same way.
        self.dreamer, self.error = None, None
        try:
            self.dreamer = Dreamer(settings, compute)
        except Exception as exc:  # noqa: BLE001 - reported by ready()
            self.error = _portable(exc)

    def ready(self) -> str:
        """The worker's name once its model is loaded; raises the error loading it met."""
        if self.error is not None:
            raise self.error
        return self.name

    def dream(self, clip: Clip, folder: str, plan: dict, k: int) -> dict:
        """Dream segment ``k`` of ``plan`` into the work folder ``folder``, resuming from its frames there.

        Returns:
            ``{"segment", "frames", "seconds", "worker"}``: frames dreamed
            (0 for a segment that was already done) and the wall time.

        Raises:
            The worker's own error (the model failed to load here, a frame
            could not be read or saved); a ValueError as a plain ValueError
            with its message, which the driver can always unpickle.
        """
        from .files import frame_indices, frame_path, load_image, save_image

        self.ready()  # a worker Ray restarted loads its model anew
        start = time.perf_counter()
        frames_folder = Path(folder) / "frames"
        try:
            pictures = segments.SegmentPictures(
                Path(folder),
                segments.SegmentPlan.from_json(plan),
                frame_indices(frames_folder),
                lambda t: load_image(frame_path(frames_folder, t)),
                lambda t, rgb: save_image(frame_path(frames_folder, t), rgb, work=True),
            )
            dreamed = dream_lanes(self.dreamer, pictures.plan, [k], clip.frames, pictures, self.settings, self.video, self.stopping.is_set)
        except ValueError as exc:
            raise _portable(exc) from None
        return {"segment": k, "frames": dreamed, "seconds": time.perf_counter() - start, "worker": self.name}

    def stop(self) -> None:
        """Ctrl-C on the driver: :meth:`dream` returns after the frame in hand (its frames are saved)."""
        self.stopping.set()


def _portable(exc: Exception) -> Exception:
    """``exc`` as the driver can unpickle it: a ValueError becomes a plain ValueError with the same message.

    A subclass may need arguments that pickling does not keep (ExprError
    does), and Ray would then hand the driver an UnserializableException.
    """
    return ValueError(str(exc)) if isinstance(exc, ValueError) else exc


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
        ValueError: Ray is not installed, a video, setting or address is
            refused (before Ray starts), the cluster cannot hold the workers,
            or a worker refused the job (its own message).
        ChildProcessError: a worker died more than ``WORKER_RESTARTS`` times;
            finished frames are kept.
        KeyboardInterrupt: Ctrl-C; every worker stops after its frame in hand,
            finished frames are kept.
    """
    ray = import_ray()
    # 1. everything the driver can check before Ray starts: the files, the flags, the address, the model and the look
    clips = [open_clip(i, o, start_s=start_s, end_s=end_s, max_frames=max_frames, max_side=max_side) for i, o in videos]
    if video.batch != 1:
        raise ValueError(
            f"--batch {video.batch}: lanes are not used with --ray, whose workers each dream one segment at a time; "
            "drop --batch (--workers sets how many segments are dreamed at once)"
        )
    started = not ray.is_initialized()
    if started and distributed.address not in (None, "auto"):
        check_address(distributed.address)
    check_look(settings, compute)
    if started:
        _init(ray, distributed.address, verbose)
    try:
        # 2. the workers start, each loading its model, while Ray tasks count the frames and find the cuts
        workers = _start_workers(ray, settings, compute, video, distributed)
        clips = [clip.counted(lambda c: find_cuts_ray(ray, c)) for clip in clips]
        # the first worker to have loaded its model says whether the look works there (a --device its node lacks)
        _result(ray, ray.wait([worker.ready.remote() for worker in workers], num_returns=1)[0][0])
        with ExitStack() as stack:
            # 3. the render jobs, their stored (or new) plans
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
                # 4. segments to workers as they come free; frames to the encoders as workers finish them
                rates = _run(ray, workers, jobs)
                for job in jobs:
                    job.pictures.finish_crossfades()  # frames whose two parts came from workers that missed each other
                    _add_finished(job, range(job.plan.total))
                if any(job.render.stop_requested for job in jobs):
                    raise KeyboardInterrupt  # Ctrl-C: each job keeps its frames (leaving the blocks aborts it)
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


def check_address(address: str) -> None:
    """Refuse, in one line, a ``--ray`` address where no Ray cluster answers within ``CONNECT_TIMEOUT_S``.

    ``HOST:PORT`` (a cluster's GCS) and ``ray://HOST:PORT`` (Ray Client) must
    answer as a gRPC server does; other schemes are left to Ray. The
    dashboard's port (8265), for one, answers in HTTP/1 and is refused.

    Raises:
        ValueError: a malformed address, an unknown host, nothing listening,
            no answer in time, or an answer that is not Ray's.
    """
    scheme, _, rest = address.rpartition("://")
    if scheme not in ("", "ray"):
        return
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")  # [IPv6]:PORT
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--ray {address}: expected {ADDRESS_FORMS}")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S) as conn:
            conn.sendall(HTTP2_PREFACE)
            frame = conn.recv(9)
    except socket.gaierror as exc:
        raise ValueError(f"--ray {address}: unknown host {host!r} ({exc.strerror})") from None
    except TimeoutError:
        raise ValueError(
            f"--ray {address}: no answer within {CONNECT_TIMEOUT_S:g} s; check the address, "
            "and that this machine may reach that port (a firewall)"
        ) from None
    except OSError as exc:
        where = "nothing listens there" if isinstance(exc, ConnectionRefusedError) else "cannot reach it"
        raise ValueError(
            f"--ray {address}: {where} ({exc.strerror}); start Ray on the head node with `ray start --head` "
            "and give the address it prints, or --ray alone for a local Ray"
        ) from None
    if len(frame) < 4 or frame[3] != HTTP2_SETTINGS:
        raise ValueError(f"--ray {address}: what answers there is not a Ray cluster; expected {ADDRESS_FORMS}")


def check_look(settings: DreamSettings, compute: ComputeSettings) -> None:
    """Build the look once on the driver's CPU, so that a bad one is refused before any worker starts.

    A :class:`~dreamreel.pipeline.dream.Dreamer` loads the model (weights,
    labels), the guide and the objective, and refuses each as one process
    does. The device and the precision are left to the workers: the driver
    may have no GPU.

    Raises:
        ValueError: as :class:`~dreamreel.pipeline.dream.Dreamer` does.
    """
    Dreamer(settings, dataclasses.replace(compute, device="cpu", precision="fp32"))


def _init(ray, address: str | None, verbose: bool) -> None:
    """Start a local Ray (``address`` None) or join a cluster; Ray's own log lines only with ``verbose``.

    None is Ray's ``local``: given None, Ray would join the cluster a ``ray
    start`` on this machine last recorded, and wait minutes if it is gone.
    """
    try:
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=verbose,
                 logging_level=logging.WARNING if verbose else logging.ERROR)  # fmt: skip
    except ConnectionError as exc:
        if address != "auto":  # a gRPC server answered the address check, but Ray could not join it
            raise ValueError(
                f"--ray {address}: {exc}; is it the head node's address, and does the cluster use token "
                "authentication (then set RAY_AUTH_MODE=token here, with its token)?"
            ) from None
        raise ValueError(  # Ray's own message names flags of its command line, not ours
            "--ray auto: no Ray cluster runs on this machine; start one with `ray start --head`, "
            "give a cluster's address (--ray HOST:6379), or --ray alone for a local Ray"
        ) from None


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
        ValueError: the cluster cannot hold what is asked: more ``--workers``
            than it holds, a worker of more ``--threads`` than it has CPUs,
            ``--device cuda`` without a GPU (actors that do not fit would
            wait for resources forever), or ``--device cuda:N``.
    """
    resources = ray.cluster_resources()
    cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    if compute.device.startswith("cuda:"):
        raise ValueError(
            f"--device {compute.device}: with --ray each worker has a GPU of its own, which it calls cuda; use --device cuda or auto"
        )
    if compute.device == "cuda" and not gpus:
        raise ValueError("--device cuda: the Ray cluster has no GPU; use --device cpu or auto")
    if gpus and compute.device != "cpu":
        fit, options, what = gpus, {"num_gpus": 1, "num_cpus": 1}, f"{gpus} GPUs"
    else:
        fit, options = cpus // distributed.threads, {"num_cpus": distributed.threads}
        what = f"{cpus} CPUs at --threads {distributed.threads}"
        if not fit:
            raise ValueError(
                f"--threads {distributed.threads}: a worker needs {distributed.threads} CPUs, and the Ray cluster has {cpus}; "
                f"give --threads {max(1, cpus)} or fewer"
            )
        models.pick_precision(compute.precision, torch.device("cpu"))  # --precision fp16 refused as on one CPU
    count = distributed.workers or fit
    if count > fit:
        raise ValueError(f"--workers {count}: the Ray cluster holds {fit} workers ({what}); ask for at most {fit}")
    actor = ray.remote(SegmentWorker).options(
        max_restarts=WORKER_RESTARTS, max_task_retries=WORKER_RESTARTS, max_concurrency=2, **options
    )  # fmt: skip
    return [actor.remote(settings, compute, video, distributed.threads) for _ in range(count)]


def _run(ray, workers: list, jobs: list[_Job]) -> dict[str, tuple[int, float]]:
    """Hand out every unfinished segment of every job; returns frames and seconds per worker.

    After a Ctrl-C (a job's ``stop_requested``) it hands out no more and
    tells each busy worker to stop after its frame in hand.
    """
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
    stopping = False
    while todo or running:
        if not stopping and any(job.render.stop_requested for job in jobs):
            stopping = True  # Ctrl-C: no more segments, and each worker stops after its frame in hand
            todo.clear()
            for worker, _, _ in running.values():
                worker.stop.remote()
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
        result = _result(ray, ready[0])
        idle.append(worker)
        job = jobs[j]
        job.dreamed += result["frames"]
        seg = job.plan.segments[result["segment"]]
        _add_finished(job, range(seg.first, seg.stop))
        rates[result["worker"]][0] += result["frames"]
        rates[result["worker"]][1] += result["seconds"]
    return {name: (frames, seconds) for name, (frames, seconds) in rates.items()}


def _result(ray, ref):
    """``ray.get(ref)`` of a worker's call, its failure as one process would report it.

    Raises:
        The worker's own exception (its message, not Ray's traceback), or
        ChildProcessError when its process or node died, and its restarts too.
    """
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        raise (exc.cause if isinstance(exc.cause, Exception) else exc) from exc
    except ray.exceptions.RayError as exc:
        raise ChildProcessError(
            f"a Ray worker died {WORKER_RESTARTS + 1} times ({type(exc).__name__}; --verbose shows the workers' logs); "
            "finished frames are kept: rerun the same command to continue"
        ) from exc


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
