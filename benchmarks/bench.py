"""How fast dreamreel dreams, and where the time goes: ``dreamreel bench``.

On a clip it generates (a deterministic textured pan, :mod:`pan`) or on
``input``, with the ``video-live`` preset's look at the given size, octaves
and iterations (every frame takes ``iterations`` steps per octave):

1. **first frame**: seconds from the benchmark's start (torch imported, the
   model loaded and moved to the device) to the first dreamed frame back on
   the host, at batch 1: what a user waits for;
2. **ascent iteration**: ms of one gradient-ascent step at full size, after
   warm-up; its FLOPs counted with ``torch.utils.flop_counter.FlopCounterMode``
   give the achieved GFLOP/s, compared with a square matmul timed in the same
   precision on the same device (the machine's own practical peak);
3. **dream only**: frames per second of the library's :class:`Dreamer` on
   pre-decoded frames, each from its own input as the video stage starts a
   fresh frame, at batch 1 and at ``batch`` (N frames in one call); on CUDA,
   ``gpu_busy`` is the share of the batch-1 wall time the GPU spends running
   kernels (``torch.profiler``);
4. **whole pipeline**: :func:`dream_video` on the clip at ``batch`` lanes,
   decode → flow → blend → dream → save → encode into an mp4;
   ``pipeline_efficiency`` is its frame rate over the dream-only rate at the
   same batch;
5. **naive reference**: the same algorithm run the way earlier tools run it
   (fp32, NCHW, batch norms unfolded, batch 1, every stage in turn on one
   thread, frames round-tripped through JPEG files, the mp4 encoded at the end);
   ``speedup_vs_naive`` is the pipeline's frame rate over its rate;
6. **stage costs**: each other stage alone, per frame, to explain an
   efficiency below 1 (on a small CPU the stages share the cores with the model);
7. **memory**: the pipeline in a fresh process on the clip and on one
   ``LONG_CLIP_FACTOR`` times longer at the same size (one step per octave:
   see ``MEMORY_ITERATIONS``); each child reports its own peak resident
   memory (VmHWM), which streaming keeps flat, and what is resident at its
   end by kind (``rss_parts_mb``: anon, file, shmem) with the peak of torch's
   page-locked allocator on CUDA (``pinned_host_peak_mb``);
8. **quality**: the objective the fast settings reach on the first frame,
   over what fp32 reaches from the same start and the same random rolls.

Every stage is the library's own function (:class:`Dreamer`, :func:`dream`,
:func:`dream_video`, :mod:`flow`, :func:`carry_residual`, :class:`FrameWriter`);
only the order and the clock are the benchmark's. Timings on a shared machine
are noisy: every ratio is taken between numbers measured in the same run, a
few seconds apart, and ``repeat`` keeps the fastest of several runs. On a CPU
that other programs also use, OpenMP's spin-waiting can make torch many times
slower (5-10x measured on the 2-core development machine beside three other
torch processes); the table shows the load average before and after, and the
settings hold ``OMP_WAIT_POLICY``. ``threads=1``, or ``OMP_WAIT_POLICY=PASSIVE``,
keeps such runs usable (on an idle machine PASSIVE costs up to 2x). Progress
goes to ``log``; ``phase_s`` says how long each part of the run took.

Heavy modules (torch, OpenCV) are imported inside the functions, so the CLI
can import this module to build its parser. ``python benchmarks/bench.py
ARGS`` is ``dreamreel bench ARGS``.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

from dreamreel.benchmarks import children, pan

# --- tunable constants ----------------------------------------------------------

# Defaults: the video-live preset's steady state (3 octaves, 5 steps a frame)
# at 640x360, sized so the whole run takes about 1.5 minutes on the 2-core
# development CPU (AVX512-BF16) when nothing else runs: 12 frames dreamed
# alone, 12 through the pipeline, 6 naive fp32 frames, then 12 and 120 frames
# in the memory children.
DEFAULT_MODEL = "efficientnet-lite0"
DEFAULT_SIZE = (640, 360)
DEFAULT_OCTAVES = 3
DEFAULT_ITERATIONS = 5
DEFAULT_FRAMES = 12
LONG_CLIP_FACTOR = 10  # the memory check's long clip, in short clips
# Ascent steps per octave in the memory children. Memory depends on the
# frame size, octaves, batch and model, and on whether frames pile up; not on
# how many steps each picture takes, which only costs time (10x frames).
MEMORY_ITERATIONS = 1
PRESET = "video-live"  # the look: objective, octave scale, step, jitter, blend, flow, temporal pull

# quick (tests, smoke checks): the same measurements, rougher.
QUICK_SIZE = (128, 72)
QUICK_FRAMES = 4
QUICK_ITERATIONS = 1
QUICK_OCTAVES = 1

# Repetitions of the timed micro-benchmarks: (warm-up, timed), full / quick.
# The first steps at a new picture size build the backend's kernels
# (oneDNN primitives, cuDNN plans) and run up to 10x slower.
ITERATION_REPEATS = {"full": (3, 7), "quick": (1, 2)}
MATMUL_REPEATS = {"full": (2, 7), "quick": (1, 2)}
# Side of the square matmul that stands for the machine's peak: 2048 keeps a
# 2-core CPU busy for ~0.1-0.3 s; a GPU needs a bigger one to fill it.
MATMUL_SIDE = {"cpu": 2048, "cuda": 8192, "mps": 4096}
QUICK_MATMUL_SIDE = 256
NAIVE_FRAMES = 6  # naive fp32 frames cost ~1.5-3x a fast one; 6 are enough for a rate
QUICK_NAIVE_FRAMES = 2
# Frames of the batch-1 pass that torch.profiler watches for gpu_busy (CUDA only).
PROFILED_FRAMES = 4
NAIVE_JPEG_QUALITY = 95  # what earlier tools wrote their frames with
NAIVE_ENCODE_ARGS = ["-c:v", "libx264", "-crf", "18", "-preset", "medium", "-pix_fmt", "yuv420p"]  # earlier tools' mp4

REQUIRED_KEYS = (
    "ms_per_iteration", "gflops_achieved", "gflops_peak", "percent_of_peak",
    "first_frame_s", "dream_fps_batch1", "dream_fps_batchN",
    "fps_dream_only", "fps_pipeline", "pipeline_efficiency", "fps_naive", "speedup_vs_naive",
    "peak_rss_short_mb", "peak_rss_long_mb", "memory_ratio_long_short",
    "objective_ratio_fast_vs_fp32", "device",
)  # fmt: skip


def log_to_stderr(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --- clocks -----------------------------------------------------------------------


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its children that have ended (ffmpeg)."""
    import resource

    children_usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children_usage.ru_utime + children_usage.ru_stime


def _timed(fn: Callable[[], object], device, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def busy_seconds(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals: time during which at least one ran.

    Kernels on several streams overlap; their union, not their sum, is the
    time the GPU was busy.
    """
    total, reach = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def gpu_kernel_seconds(fn: Callable[[], object], device) -> float:
    """Seconds the GPU spends running kernels and copies while ``fn`` runs (CUDA, ``torch.profiler``)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        _synchronize(device)
    spans = [(e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == DeviceType.CUDA]
    return busy_seconds(spans) / 1e6  # the profiler counts microseconds


# --- measurements -------------------------------------------------------------------


def matmul_gflops(device, dtype, side: int, warmup: int, repeats: int) -> float:
    """GFLOP/s of a ``side`` x ``side`` matmul in ``dtype`` on ``device`` (median of ``repeats``)."""
    import torch

    g = torch.Generator().manual_seed(0)
    a = torch.randn(side, side, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(side, side, generator=g).to(device=device, dtype=dtype)
    times = _timed(lambda: a @ b, device, warmup, repeats)
    return 2 * side**3 / statistics.median(times) / 1e9


def ascent_flops(model, images, objective, settings, autocast_dtype) -> int:
    """FLOPs of one ascent step on ``images``, as FlopCounterMode counts them.

    The forward and backward pass of every tile, as :func:`dream.objective_gradient`
    runs them, plus the gradient blur. FlopCounterMode counts convolutions and
    matrix products only (what dominates; elementwise ops are not counted).

    The passes are re-run here with ``backward()`` rather than through
    ``objective_gradient``: FlopCounterMode's module tracker breaks
    ``torch.autograd.grad`` on a leaf input ("A leaf node was passed to
    _will_engine_execute_node", pytorch/pytorch#131753). The operations, and so
    the count, are the same.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from dreamreel.pipeline.dream import gaussian_blur, tile_batches

    amp = torch.autocast(images.device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    with FlopCounterMode(display=False) as counter:
        for part, _ in tile_batches(images.detach(), settings.tile, settings.tile_batch):
            part = part.contiguous(memory_format=model.input_format).requires_grad_(True)
            with amp:
                acts = model(part, objective.layers)
            objective(acts).sum().backward()
        gaussian_blur(images, settings.smooth)
    return counter.get_total_flops()


def tiled_settings(dreamer, settings, images):
    """``settings`` with the tile the dreamer picks for ``images`` (B, 3, H, W) when ``tile`` is None (auto).

    The step timed alone and its FLOP count need the tile the dreamer uses:
    on CUDA its own choice by free memory, elsewhere :data:`CPU_TILE`.
    """
    from dreamreel.pipeline.dream import CPU_TILE

    if settings.tile is not None:
        return settings
    if dreamer.device.type == "cuda":
        return replace(settings, tile=dreamer.gpu_tile(images.shape[0], *images.shape[-2:], settings))
    return replace(settings, tile=CPU_TILE)


def _precision_name(dtype) -> str:
    import torch

    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def dream_batches(dreamer, frames: list, seed: int, batch: int, count: int | None = None) -> list:
    """Dream ``count`` frames in calls of ``batch``, each from its own input; the 8-bit results.

    Frame k is ``frames[k % len(frames)]`` with the random stream the video
    stage gives frame k (:func:`frame_generator`), dreamed with the dreamer's
    own settings, as :func:`dream_video` dreams a frame that starts afresh.
    ``count`` (default ``len(frames)``) is rounded up to whole batches.
    """
    from dreamreel.pipeline.dream import frame_generator, to_tensor, to_uint8

    count = count or len(frames)
    dreamed = []
    for first in range(0, math.ceil(count / batch) * batch, batch):
        indices = range(first, first + batch)
        images = to_tensor([frames[k % len(frames)] for k in indices])
        dreamed += list(to_uint8(dreamer(images, generators=[frame_generator(seed, k) for k in indices])))
    return dreamed


def dream_rate(dreamer, frames: list, seed: int, batch: int) -> tuple[float, float, list]:
    """Frames per second of :func:`dream_batches` at ``batch``, after one untimed call of that shape.

    Returns (frames per second, CPU seconds per frame, the dreamed frames).
    """
    from dreamreel.pipeline.dream import to_tensor

    # The untimed call builds the batch shape's kernels at every octave.
    dreamer(to_tensor([frames[k % len(frames)] for k in range(batch)]), iterations=1)
    _synchronize(dreamer.device)
    start, cpu = time.perf_counter(), _cpu_seconds()
    dreamed = dream_batches(dreamer, frames, seed, batch)
    _synchronize(dreamer.device)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    return len(dreamed) / seconds, cpu / len(dreamed), dreamed


def naive_video(clip: Path, frames: int, model, settings, video, device, folder: Path) -> float:
    """Seconds to dream ``frames`` frames of ``clip`` the way earlier tools do.

    Same algorithm as :func:`dream_video` (flow-warped residual, consistency
    mask, scene cuts, same steps), run naively: fp32 and NCHW (no autocast, no
    channels_last), batch norms as layers of their own, batch 1, and every
    stage in turn on the calling thread: decode a frame, check for a cut,
    compute its flow with OpenCV, blend, dream, write the dream as a JPEG and
    read it back (the carried frame is the one on disk), and encode the JPEG
    folder to mp4 at the end. ``model`` is already loaded.
    """
    import cv2
    import torch

    from dreamreel.pipeline import decode, flow
    from dreamreel.pipeline.dream import dream, frame_generator, to_tensor, to_uint8
    from dreamreel.pipeline.ffmpeg import run_ffmpeg
    from dreamreel.pipeline.objectives import parse_objective
    from dreamreel.pipeline.video import carry_residual

    objective = parse_objective(settings.objective, model)
    estimator = flow.FlowEstimator(video.flow)
    cuts = flow.CutDetector()
    reader = decode.read_frames(clip, max_frames=frames)  # probes the file now: not timed
    fps = decode.probe_video(clip).fps
    folder.mkdir()
    previous_input = previous_dream = None
    start = time.perf_counter()
    for index, current in enumerate(reader):
        # 1. cut, flow and blend, on this thread
        start_picture = to_tensor(current)
        cut = cuts(current)
        if previous_input is not None and not cut and video.blend > 0:
            backward = estimator(current, previous_input)
            mask = flow.consistency_mask(estimator(previous_input, current), backward)
            start_picture = carry_residual(
                start_picture, to_tensor(previous_dream), to_tensor(previous_input), flow.flow_to_tensor(backward),
                torch.from_numpy(mask)[None, None], video.blend,
            )  # fmt: skip
        # 2. dream in fp32, batch 1
        dreamed = dream(
            model, start_picture.to(device), objective, settings, generator=frame_generator(settings.seed, index)
        )
        # 3. round-trip through a JPEG file
        path = folder / f"frame_{index:06d}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(to_uint8(dreamed)[0], cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, NAIVE_JPEG_QUALITY])
        previous_dream = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        previous_input = current
    # 4. encode the folder
    run_ffmpeg(
        ["-framerate", f"{fps.numerator}/{fps.denominator}", "-start_number", "0", "-i", str(folder / "frame_%06d.jpg"),
         *NAIVE_ENCODE_ARGS, str(folder / "naive.mp4")],
        what="encoding the naive reference's frames",
    )  # fmt: skip
    return time.perf_counter() - start


def stage_costs(clip: Path, frames: int, dreamed: list, video, fps, folder: Path, device) -> dict:
    """Milliseconds per frame of each non-dream stage alone, on this thread, OpenCV on one thread as in the pipeline.

    decode: decoding; cuts: the scene-cut check (:class:`flow.CutDetector`);
    flow: the two flows of a frame (a reader thread's work); blend: the
    consistency mask and the carried residual on ``device``, as the pipeline
    does them; save: the PNG the work folder keeps; encode: :class:`FrameWriter` with the default
    settings (``encode_codec`` says which encoder), wall time until the file is
    closed, and the CPU time ffmpeg used (``encode_cpu``), which on a small CPU
    is taken from the model.
    """
    from dreamreel.pipeline.video import one_opencv_thread

    with one_opencv_thread():
        return _stage_costs(clip, frames, dreamed, video, fps, folder, device)


def _stage_costs(clip, frames, dreamed, video, fps, folder, device) -> dict:
    """The measuring of :func:`stage_costs`."""
    import resource

    import torch

    from dreamreel.pipeline import decode, flow
    from dreamreel.pipeline.dream import to_tensor
    from dreamreel.pipeline.encode import EncodeSettings, FrameWriter
    from dreamreel.pipeline.files import frame_path, save_image
    from dreamreel.pipeline.video import carry_residual

    costs = {}
    start = time.perf_counter()
    inputs = list(decode.read_frames(clip, max_frames=frames))
    costs["decode"] = (time.perf_counter() - start) / len(inputs)

    detect = flow.CutDetector()
    start = time.perf_counter()
    for frame in inputs:
        detect(frame)
    costs["cuts"] = (time.perf_counter() - start) / len(inputs)

    estimator = flow.FlowEstimator(video.flow, scale=video.flow_scale)
    pairs = list(zip(inputs, inputs[1:]))
    flows = []
    start = time.perf_counter()
    for previous, current in pairs:
        flows.append((estimator(current, previous), estimator(previous, current)))
    costs["flow"] = (time.perf_counter() - start) / max(1, len(pairs))

    start = time.perf_counter()
    for (previous, current), (backward, forward), previous_dream in zip(pairs, flows, dreamed):
        backward = flow.flow_to_tensor(backward, device=device)
        mask = flow.consistency_mask(flow.flow_to_tensor(forward, device=device), backward)
        carry_residual(
            to_tensor(current, device), to_tensor(previous_dream, device), to_tensor(previous, device), backward, mask, video.blend
        )  # fmt: skip
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    costs["blend"] = (time.perf_counter() - start) / max(1, len(flows))

    saved = folder / "stages-frames"  # as the render job saves finished frames
    saved.mkdir()
    start = time.perf_counter()
    for index, rgb in enumerate(dreamed):
        save_image(frame_path(saved, index), rgb, work=True)
    costs["save"] = (time.perf_counter() - start) / len(dreamed)

    height, width = dreamed[0].shape[:2]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with FrameWriter(folder / "stages.mp4", fps=fps, size=(width, height), settings=EncodeSettings(keep_audio=False)) as writer:
        for rgb in dreamed:
            writer.write(rgb)
    costs["encode"] = (time.perf_counter() - start) / len(dreamed)
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    costs["encode_cpu"] = cpu / len(dreamed)
    return {"ms_per_frame": {name: seconds * 1000 for name, seconds in costs.items()}, "encode_codec": writer.codec}


def objective_scores(model, objective, images, settings) -> list[float]:
    """The objective of (B, 3, H, W) pictures, scored in fp32 as the dreamer scores them (tiled)."""
    from dreamreel.pipeline.dream import objective_gradient

    _, score = objective_gradient(model, images, objective, tile=settings.tile, autocast_dtype=None)
    return score.tolist()


def ascent_figures(dreamer, inputs: list, settings, batch: int, quick: bool, log) -> dict:
    """One ascent step at full size on ``batch`` frames: its time, its FLOPs and the matmul peak beside it.

    Returns ms_per_iteration (median) and ms_per_iteration_min, gflop_per_iteration,
    gflops_achieved, gflops_peak, percent_of_peak, matmul_side, and ``tiled``:
    ``settings`` with the tile the dreamer uses.
    """
    import torch

    from dreamreel.pipeline.dream import ascent_step, frame_generator, to_tensor

    mode, dev, dtype = "quick" if quick else "full", dreamer.device, dreamer.autocast_dtype
    images = to_tensor([inputs[k % len(inputs)] for k in range(batch)], dev)
    generators = [frame_generator(settings.seed, k) for k in range(batch)]
    tiled = tiled_settings(dreamer, settings, images)
    log(f"timing one ascent iteration at {images.shape[-1]}x{images.shape[-2]}, batch {batch}, tile {tiled.tile}")
    step_times = _timed(
        lambda: ascent_step(dreamer.model, images, dreamer.objective, tiled, generators, dtype, compiled=dreamer.compiled),
        dev, *ITERATION_REPEATS[mode],
    )
    seconds = statistics.median(step_times)
    flops = ascent_flops(dreamer.model, images, dreamer.objective, tiled, dtype)
    side = QUICK_MATMUL_SIDE if quick else MATMUL_SIDE.get(dev.type, 2048)
    log(f"timing a {side}x{side} matmul in {_precision_name(dtype)}")
    peak = matmul_gflops(dev, dtype or torch.float32, side, *MATMUL_REPEATS[mode])
    return {
        "ms_per_iteration": seconds * 1000, "ms_per_iteration_min": min(step_times) * 1000,
        "gflop_per_iteration": flops / 1e9, "gflops_achieved": flops / seconds / 1e9, "gflops_peak": peak,
        "percent_of_peak": 100 * flops / seconds / 1e9 / peak, "matmul_side": side, "tiled": tiled,
    }  # fmt: skip


def frame_rates(dreamer, fp32_model, inputs, clip, folder, settings, compute, video, repeat, naive_frames, log) -> dict:
    """Dreaming alone at batch 1 and N, :func:`dream_video` on ``clip`` and the naive reference, in turn, ``repeat`` times.

    Returns the best of the runs: dream_fps and dream_cpu_s (CPU seconds per
    frame), each keyed by batch; pipeline_s, pipeline_cpu_s and
    pipeline_startup_s; naive_s; gpu_peak_dream_mb (CUDA, at batch N); and
    ``dreamed``, the 8-bit frames of the last dream-only pass at batch N.
    """
    import torch

    from dreamreel.pipeline.encode import EncodeSettings
    from dreamreel.pipeline.video import dream_video

    dev, frames, batch = dreamer.device, len(inputs), video.batch
    best = {"dream_fps": {1: 0.0, batch: 0.0}, "dream_cpu_s": {1: math.inf, batch: math.inf}, "pipeline_s": math.inf,
            "pipeline_cpu_s": math.inf, "pipeline_startup_s": math.inf, "naive_s": math.inf, "gpu_peak_dream_mb": None}
    for run in range(repeat):
        of = f" (run {run + 1} of {repeat})" if repeat > 1 else ""
        for n in best["dream_fps"]:
            log(f"dream only: {frames} frames at batch {n}{of}")
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            fps, cpu, best["dreamed"] = dream_rate(dreamer, inputs, settings.seed, n)
            best["dream_fps"][n], best["dream_cpu_s"][n] = max(best["dream_fps"][n], fps), min(best["dream_cpu_s"][n], cpu)
            if dev.type == "cuda" and n == batch:
                best["gpu_peak_dream_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20

        log(f"whole pipeline: {frames} frames → mp4, batch {batch}{of}")
        start, cpu = time.perf_counter(), _cpu_seconds()
        result = dream_video(
            clip, folder / f"pipeline_{run}.mp4", settings, compute, video, EncodeSettings(), max_frames=frames, progress=False
        )
        best["pipeline_cpu_s"] = min(best["pipeline_cpu_s"], _cpu_seconds() - cpu)
        best["pipeline_startup_s"] = min(best["pipeline_startup_s"], time.perf_counter() - start - result.seconds)
        best["pipeline_s"] = min(best["pipeline_s"], result.seconds)

        log(f"naive reference: {naive_frames} frames, fp32, sequential, JPEG round trip{of}")
        seconds = naive_video(clip, naive_frames, fp32_model, settings, video, dev, folder / f"naive_{run}")
        best["naive_s"] = min(best["naive_s"], seconds)
    return best


def quality_scores(dreamer, fp32_model, first_rgb, settings, tiled) -> list[float]:
    """The objective, scored in fp32, of the first frame as it is, dreamed in fp32, and dreamed by ``dreamer``.

    Both dreams start from the same picture with the same random rolls.
    """
    import torch

    from dreamreel.pipeline.dream import dream, frame_generator, to_tensor
    from dreamreel.pipeline.objectives import parse_objective

    objective = parse_objective(settings.objective, fp32_model)
    first = to_tensor(first_rgb, dreamer.device)
    fast = dreamer(first, generators=[frame_generator(settings.seed, 0)])
    fp32 = dream(fp32_model, first, objective, settings, generator=frame_generator(settings.seed, 0))
    return objective_scores(fp32_model, objective, torch.cat([first, fp32, fast.float()]), tiled)


def memory_reports(folder: Path, clips: dict, settings, compute, video, *, at_once: bool, log) -> dict:
    """:func:`dream_video` in a fresh process per clip; each child's report (peak memory, frames).

    ``clips`` maps a name to (path, frames); ``settings`` are the dream
    settings of the children (every frame takes ``settings.iterations``);
    ``at_once`` starts the children together (each peak is its own process's).
    """
    import torch

    from dreamreel.pipeline.render import QUEUE_FRAMES
    from dreamreel.pipeline.video import PREFETCH_FRAMES

    queued = PREFETCH_FRAMES + QUEUE_FRAMES  # frames the pipeline holds at most, per lane
    shortest = min(count for _, count in clips.values())
    if shortest < queued:
        log(f"note: {shortest} frames do not fill the pipeline's queues ({queued} frames), so the longer clip's peak "
            "also holds the frames that fill them")  # fmt: skip
    spec = {"dream": asdict(settings), "compute": asdict(compute), "threads": torch.get_num_threads(),
            "video": asdict(replace(video, iterations_next=settings.iterations))}  # fmt: skip
    jobs = {
        name: {**spec, "input": str(clip), "output": str(folder / f"child_{name}.mp4"), "max_frames": count}
        for name, (clip, count) in clips.items()
    }
    if at_once:
        log(f"memory: pipeline on {' and '.join(str(c) for _, c in clips.values())} frames in fresh processes at once")
        running = {name: children.start_child(job) for name, job in jobs.items()}
        reports = {name: children.finish_child(proc, jobs[name]) for name, proc in running.items()}
    else:  # one after the other: on a CPU they would share the cores
        reports = {}
        for name, job in jobs.items():
            log(f"memory: pipeline on {job['max_frames']} frames in a fresh process")
            reports[name] = children.finish_child(children.start_child(job), job)
    for name, (clip, count) in clips.items():
        if reports[name]["frames"] < count:
            log(f"note: {clip} has only {reports[name]['frames']} frames, not {count}")
    return reports


def _load_average() -> float | None:
    """The 1-minute load average (runnable processes): how busy the machine was."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


# --- the benchmark ----------------------------------------------------------------------


def run_benchmark(
    *,
    model: str = DEFAULT_MODEL,
    size: tuple[int, int] | None = None,
    octaves: int | None = None,
    iterations: int | None = None,
    frames: int | None = None,
    batch: int = 1,
    device: str = "auto",
    precision: str = "auto",
    compile: str = "auto",
    input: str | Path | None = None,
    threads: int | None = None,
    repeat: int = 1,
    quick: bool = False,
    log: Callable[[str], None] | None = log_to_stderr,
) -> dict:
    """Measure dreaming and the video pipeline; see the module docstring.

    Long only in its signature and the argument checks that give each flag
    its one-line error; the measuring is :func:`_measure`.

    Args:
        model: zoo name or TorchScript file.
        size: (width, height) of the generated clip, both even; not with ``input``.
        octaves, iterations: pyramid levels and ascent steps per octave (every frame).
        frames: frames of the short clip; the memory check's long clip has
            ``LONG_CLIP_FACTOR`` times more.
        batch: N, frames dreamed in one call for ``dream_fps_batchN`` and the
            pipeline's lanes.
        device, precision, compile: as ``--device``, ``--precision`` and ``--compile``.
        input: a video file to use instead of the generated pan (its first
            frames, at its own size).
        threads: torch CPU threads for this run and its children; None keeps
            torch's default (one per core).
        repeat: run the dream-only, pipeline and naive measurements this many
            times, interleaved, and keep the fastest of each (other programs
            only ever slow a run down).
        quick: fewer repetitions, a small matmul, 2 naive frames, and the two
            memory children run at the same time (tests, smoke checks).
            Sizes left at None take the ``QUICK_*`` values instead of ``DEFAULT_*``.
        log: receives progress lines; None for silence.

    Returns:
        A JSON-ready dict: the keys of ``REQUIRED_KEYS``; ``batch_n``;
        ``compiled`` (whether the steps ran compiled); ``gpu_busy`` (None
        off CUDA); the per-stage costs in ``stage_ms_per_frame``; the seconds
        of each part in ``phase_s``; and the settings used in ``settings``.

    Raises:
        ValueError: a bad setting or input.
    """
    began = time.perf_counter()
    import torch

    from dreamreel.pipeline.presets import build, load_preset

    if input is not None and size is not None:
        raise ValueError("--size applies to the generated pan; with --input the file's own size is used")
    size = size or (QUICK_SIZE if quick else DEFAULT_SIZE)
    frames = QUICK_FRAMES if frames is None and quick else DEFAULT_FRAMES if frames is None else frames
    if not (isinstance(frames, int) and frames >= 2):
        raise ValueError(f"--frames {frames!r}: expected a whole number >= 2 (flow needs pairs)")
    if input is None and not (len(size) == 2 and all(isinstance(n, int) and n >= 16 and n % 2 == 0 for n in size)):
        raise ValueError(f"--size {size!r}: expected WIDTHxHEIGHT, both even (yuv420p video) and >= 16")
    for name, value in (("batch", batch), ("threads", threads), ("repeat", repeat)):
        if value is not None and not (isinstance(value, int) and value >= 1):
            raise ValueError(f"--{name} {value!r}: expected a whole number >= 1")
    preset = load_preset(PRESET)
    settings = build("dream", preset, {
        "octaves": octaves or (QUICK_OCTAVES if quick else DEFAULT_OCTAVES),
        "iterations": iterations or (QUICK_ITERATIONS if quick else DEFAULT_ITERATIONS),
    })  # fmt: skip
    video = build("video", preset, {"batch": batch, "iterations_next": settings.iterations})  # every frame: `iterations`
    say = log or (lambda _message: None)

    def progress(message: str) -> None:
        say(f"[{time.perf_counter() - began:5.1f} s] {message}")

    load_before = _load_average()
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads)
    try:
        with tempfile.TemporaryDirectory(prefix="dreamreel-bench-") as tmp:
            result = _measure(
                Path(tmp), began=began, model=model, size=size, frames=frames, settings=settings, video=video,
                device=device, precision=precision, compile=compile, input=input, repeat=repeat, quick=quick, log=progress,
            )  # fmt: skip
    finally:
        torch.set_num_threads(default_threads)
    result["settings"].update(
        model=model,
        input=str(input) if input is not None else "generated pan",
        device=device,
        precision=precision,
        compile=compile,
        repeat=repeat,
        quick=quick,
        torch_threads=threads or default_threads,
        cpu_count=os.cpu_count(),
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        load_average_1min=[load_before, _load_average()],
        seconds=round(time.perf_counter() - began, 1),
    )
    return result


def _measure(
    folder: Path, *, began, model, size, frames, settings, video, device, precision, compile, input, repeat, quick, log
) -> dict:
    """The body of :func:`run_benchmark`, working in ``folder``; ``began`` is its start on the clock.

    Over 80 lines for a reason: the numbered phases (each a function where it
    is more than a few lines) share the model, the clips and the timings, and
    the dict returned names every figure in one place.
    """
    import torch

    from dreamreel.pipeline import decode, models
    from dreamreel.pipeline.dream import ComputeSettings, Dreamer, frame_generator, to_tensor

    dev = models.pick_device(device)
    autocast_dtype = models.pick_precision(precision, dev)
    compute = ComputeSettings(model=model, device=str(dev), precision=precision, compile=compile)
    phases: dict[str, float] = {}
    mark = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases[name] = round(now - mark, 2)
        mark = now

    # 1. the first frame: the model loaded, one frame of the input dreamed (batch 1)
    long_frames = frames * LONG_CLIP_FACTOR
    if input is None:
        texture = pan.pan_texture(size, long_frames)
        first_input = pan.pan_frame(texture, size, 0)
    else:
        first_input = next(iter(decode.read_frames(input, max_frames=1)), None)
        if first_input is None:
            raise ValueError(f"{input}: has no frame; the benchmark needs at least 2")
    log(f"first frame: loading {model} on {dev} ({_precision_name(autocast_dtype)}, {torch.get_num_threads()} threads)")
    dreamer = Dreamer(settings, compute)
    compiled = dreamer.compiled is not None
    dreamer(to_tensor(first_input), generators=[frame_generator(settings.seed, 0)]).cpu()
    first_frame_s = time.perf_counter() - began
    phase("first_frame")

    # 2. the clips
    if input is None:
        log(f"generating a {size[0]}x{size[1]} pan of {frames} and {long_frames} frames")
        short_clip = pan.write_pan_clip(folder / "pan_short.mp4", texture, size, frames)
        long_clip = pan.write_pan_clip(folder / "pan_long.mp4", texture, size, long_frames)
        del texture
    else:
        short_clip = long_clip = Path(input)
    inputs = list(decode.read_frames(short_clip, max_frames=frames))
    if len(inputs) < 2:
        raise ValueError(f"{short_clip}: has {len(inputs)} frame; the benchmark needs at least 2")
    frames = len(inputs)
    height, width = inputs[0].shape[:2]
    clip_fps = decode.probe_video(short_clip).fps
    batch = video.batch
    phase("clips")

    # 3. one ascent iteration: time, FLOPs, and the matmul peak beside it
    step = ascent_figures(dreamer, inputs, settings, batch, quick, log)
    phase("iteration_and_matmul")

    # 4. quality: fast settings against fp32 on the first frame (this also
    # builds the fp32 kernels the naive reference uses below)
    log("quality check: fast vs fp32 on the first frame")
    fp32_model = models.load_model(model).to(dev)  # as earlier tools: batch norms unfolded
    score_start, score_fp32, score_fast = quality_scores(dreamer, fp32_model, inputs[0], settings, step["tiled"])
    phase("quality")

    # 5. dreaming alone (batch 1, batch N), the whole pipeline and the naive
    # reference, in turn (kernels are built by now); the fastest of `repeat` runs
    naive_frames = min(frames, QUICK_NAIVE_FRAMES if quick else NAIVE_FRAMES)
    runs = frame_rates(dreamer, fp32_model, inputs, short_clip, folder, settings, compute, video, repeat, naive_frames, log)
    rate, dreamed = runs["dream_fps"], runs["dreamed"]
    fps_dream_only = rate[batch]
    fps_pipeline = frames / runs["pipeline_s"]
    fps_naive = naive_frames / runs["naive_s"]
    del fp32_model
    gpu_busy = None
    if dev.type == "cuda":
        log(f"gpu_busy: {PROFILED_FRAMES} frames at batch 1 under torch.profiler")
        kernel_s = gpu_kernel_seconds(partial(dream_batches, dreamer, inputs, settings.seed, 1, PROFILED_FRAMES), dev)
        gpu_busy = kernel_s / (PROFILED_FRAMES / rate[1])  # over the wall time of the unprofiled run
    phase("dream_pipeline_naive")

    # 6. each other stage alone
    log("stage costs")
    stages = stage_costs(short_clip, frames, dreamed, video, clip_fps, folder, dev)
    stages["ms_per_frame"]["dream"] = 1000 / fps_dream_only
    del dreamer, dreamed
    phase("stages")

    # 7. memory: the pipeline in fresh processes, on the short and the long clip
    memory_settings = replace(settings, iterations=min(settings.iterations, MEMORY_ITERATIONS))
    clips = {"short": (short_clip, frames), "long": (long_clip, long_frames)}
    reports = memory_reports(folder, clips, memory_settings, compute, video, at_once=quick or dev.type == "cuda", log=log)
    phase("memory")
    log("done")

    return {
        "device": str(dev),
        "precision": _precision_name(autocast_dtype),
        "compiled": compiled,
        "first_frame_s": first_frame_s,
        **{key: value for key, value in step.items() if key != "tiled"},
        "dream_fps_batch1": rate[1],
        "dream_fps_batchN": rate[batch],
        "batch_n": batch,
        "gpu_busy": gpu_busy,
        "fps_dream_only": fps_dream_only,
        "fps_pipeline": fps_pipeline,
        "pipeline_efficiency": fps_pipeline / fps_dream_only,
        "pipeline_startup_s": runs["pipeline_startup_s"],
        "cpu_ms_per_frame_dream_only": 1000 * runs["dream_cpu_s"][batch],
        "cpu_ms_per_frame_pipeline": 1000 * runs["pipeline_cpu_s"] / frames,
        "fps_naive": fps_naive,
        "speedup_vs_naive": fps_pipeline / fps_naive,
        "stage_ms_per_frame": stages["ms_per_frame"],
        "encode_codec": stages["encode_codec"],
        "peak_rss_short_mb": reports["short"]["peak_rss_mb"],
        "peak_rss_long_mb": reports["long"]["peak_rss_mb"],
        "memory_ratio_long_short": reports["long"]["peak_rss_mb"] / reports["short"]["peak_rss_mb"],
        "gpu_peak_dream_mb": runs["gpu_peak_dream_mb"],
        "gpu_peak_short_mb": reports["short"]["gpu_peak_mb"],
        "gpu_peak_long_mb": reports["long"]["gpu_peak_mb"],
        "rss_parts_mb": {name: report["rss_parts_mb"] for name, report in reports.items()},
        "pinned_host_peak_mb": {name: report["pinned_host_peak_mb"] for name, report in reports.items()},
        "objective_start": score_start,
        "objective_fp32": score_fp32,
        "objective_fast": score_fast,
        "objective_ratio_fast_vs_fp32": score_fast / score_fp32,
        "phase_s": phases,
        "settings": {
            "size": f"{width}x{height}",
            "frames": frames,
            "frames_long": reports["long"]["frames"],
            "memory_iterations": memory_settings.iterations,
            "frames_naive": naive_frames,
            "octaves": settings.octaves,
            "octave_scale": settings.octave_scale,
            "iterations": settings.iterations,
            "objective": settings.objective,
            "step": settings.step,
            "jitter": settings.jitter,
            "smooth": settings.smooth,
            "tile": settings.tile,
            "tile_batch": settings.tile_batch,
            "blend": video.blend,
            "flow": video.flow,
            "flow_scale": video.flow_scale,
            "batch": batch,
            "warmup_frames": video.warmup,
            "matmul_side": step["matmul_side"],
        },
    }


# --- report -------------------------------------------------------------------------------


def format_table(r: dict) -> str:
    """The result of :func:`run_benchmark` as a readable table."""
    s = r["settings"]

    def mb(value) -> str:
        return "-" if value is None else f"{value:.0f} MB"

    stages = r["stage_ms_per_frame"]
    n = r["batch_n"]
    busy = "GPU busy -" if r["gpu_busy"] is None else f"GPU busy {r['gpu_busy']:.2f} of the time"
    rows = [
        ("first frame (start-up, model load)", f"{r['first_frame_s']:.1f} s", f"{s['size']}, batch 1"),
        ("ascent iteration (full size)", f"{r['ms_per_iteration']:.1f} ms", f"{r['gflop_per_iteration']:.2f} GFLOP → {r['gflops_achieved']:.1f} GFLOP/s"),
        (f"matmul {s['matmul_side']}² {r['precision']}", f"{r['gflops_peak']:.1f} GFLOP/s", f"model reaches {r['percent_of_peak']:.1f} % of it"),
        ("dream only, batch 1", f"{r['dream_fps_batch1']:.3f} fps", f"{1000 / r['dream_fps_batch1']:.0f} ms/frame, {busy}"),
        *[(f"dream only, batch {n}", f"{r['dream_fps_batchN']:.3f} fps", f"{stages['dream']:.0f} ms/frame")] * (n > 1),
        (f"whole pipeline, batch {n}", f"{r['fps_pipeline']:.3f} fps", f"efficiency {r['pipeline_efficiency']:.2f} (+{r['pipeline_startup_s']:.1f} s startup)"),
        ("CPU per frame: dream / pipeline", f"{r['cpu_ms_per_frame_dream_only']:.0f} ms", f"{r['cpu_ms_per_frame_pipeline']:.0f} ms (all threads, ffmpeg included)"),
        (f"naive reference ({s['frames_naive']} fr)", f"{r['fps_naive']:.3f} fps", f"speed-up {r['speedup_vs_naive']:.2f}x"),
        ("peak RSS short / long", f"{mb(r['peak_rss_short_mb'])} / {mb(r['peak_rss_long_mb'])}", f"ratio {r['memory_ratio_long_short']:.3f}, {r['peak_rss_long_mb'] - r['peak_rss_short_mb']:+.0f} MB ({s['frames']} / {s['frames_long']} frames)"),
        ("GPU peak dream / short / long", f"{mb(r['gpu_peak_dream_mb'])}", f"{mb(r['gpu_peak_short_mb'])} / {mb(r['gpu_peak_long_mb'])}"),
        ("objective fast / fp32", f"{r['objective_ratio_fast_vs_fp32']:.3f}", f"start {r['objective_start']:.4g}, fp32 {r['objective_fp32']:.4g}, fast {r['objective_fast']:.4g}"),
        (f"stages alone, ms/frame ({r['encode_codec']})", " ".join(f"{k} {v:.1f}" for k, v in stages.items() if k != "dream"), ""),
        ("seconds per phase", " ".join(f"{k} {v:.1f}" for k, v in r["phase_s"].items()), ""),
    ]  # fmt: skip
    head = (
        f"dreamreel bench: {s['model']} {s['size']}, {s['octaves']} octaves x {s['iterations']} iterations, "
        f"batch {s['batch']}, {r['device']} {r['precision']}{', compiled' if r['compiled'] else ''}, {s['torch_threads']} threads, "
        f"best of {s['repeat']} ({s['input']}, {s['seconds']:.0f} s, load {s['load_average_1min'][0]} → {s['load_average_1min'][1]})"
    )
    width = max(len(name) for name, _, _ in rows)
    value_width = max(len(value) for _, value, _ in rows[:-2])
    lines = [head, "-" * len(head)]
    lines += [f"{name:<{width}}  {value:>{value_width}}  {note}".rstrip() for name, value, note in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    from dreamreel.cli.main import main

    sys.exit(main(["bench", *sys.argv[1:]]))
