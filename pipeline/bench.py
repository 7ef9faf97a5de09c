"""How fast dreamreel dreams, and where the time goes: `dreamreel bench`.

On a clip it generates (a deterministic textured pan) or on ``--input``, with
the ``video-flow`` preset's look at the given size, octaves and iterations:

1. **ascent iteration**: ms of one gradient-ascent step at full size, after
   warm-up; its FLOPs counted with ``torch.utils.flop_counter.FlopCounterMode``
   give the achieved GFLOP/s, compared with a square matmul timed in the same
   precision on the same device (the machine's own practical peak);
2. **dream only**: frames per second of the :class:`Dreamer` on pre-decoded
   frames, lanes and steps exactly as :func:`dream_video` schedules them;
3. **whole pipeline**: :func:`dream_video` on the clip, decode → flow → blend →
   dream → save → encode into an mp4; ``pipeline_efficiency`` is its frame
   rate over the dream-only rate;
4. **naive reference**: the same algorithm run the way earlier tools run it
   (fp32, NCHW, batch norms unfolded, batch 1, every stage in turn on one
   thread, frames round-tripped through JPEG files, the mp4 encoded at the end);
   ``speedup_vs_naive`` is the pipeline's frame rate over its rate;
5. **stage costs**: each stage alone, per frame, to explain an efficiency
   below 1 (on a small CPU the stages share the cores with the model);
6. **memory**: the pipeline in a fresh process on the clip and on one
   ``LONG_CLIP_FACTOR`` times longer at the same size (one step per octave:
   see ``MEMORY_ITERATIONS``); each child reports its own peak resident
   memory (VmHWM), which streaming keeps flat;
7. **quality**: the objective the fast settings reach on the first frame,
   over what fp32 reaches from the same start and the same random rolls.

Timings on a shared machine are noisy: every ratio is taken between numbers
measured in the same run, a few seconds apart, and ``--repeat`` keeps the
fastest of several runs. On a CPU that other programs also use, OpenMP's
spin-waiting can make torch many times slower (5-10x measured on the 2-core
development machine beside three other torch processes); the table shows the
load average before and after, and the settings hold ``OMP_WAIT_POLICY``.
``--threads 1``, or ``OMP_WAIT_POLICY=PASSIVE``, keeps such runs usable (on
an idle machine PASSIVE costs up to 2x). Progress goes to stderr; the table
(or, with ``--json``, one JSON object) to stdout.

Heavy modules (torch, OpenCV) are imported inside the functions, so the CLI
can build its parser from :func:`add_arguments` without loading them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path

# --- tunable constants ----------------------------------------------------------

# Defaults: the video-flow preset's steady state (3 octaves, 5 steps a frame)
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
PRESET = "video-flow"  # the look: objective, octave scale, step, jitter, blend, flow

# --quick (tests, smoke checks): the same measurements, rougher.
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

# The generated clip: a fixed picture seen through a window panning right
# and down by this many pixels per frame (real motion for the flow stage).
PAN_PX_PER_FRAME = (3, 1)
CLIP_FPS = 24
CLIP_SEED = 0
NAIVE_JPEG_QUALITY = 95  # what earlier tools wrote their frames with

REQUIRED_KEYS = (
    "ms_per_iteration", "gflops_achieved", "gflops_peak", "percent_of_peak",
    "fps_dream_only", "fps_pipeline", "pipeline_efficiency", "fps_naive", "speedup_vs_naive",
    "peak_rss_short_mb", "peak_rss_long_mb", "memory_ratio_long_short",
    "objective_ratio_fast_vs_fp32", "device",
)  # fmt: skip


def _log_to_stderr(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --- the generated clip -----------------------------------------------------------


def pan_texture(size: tuple[int, int], frames: int, seed: int = CLIP_SEED):
    """The picture a pan of ``frames`` frames of ``size`` = (width, height) looks at.

    Smooth coloured noise at three scales plus soft-edged discs: detail for the
    network and edges for the flow. Deterministic for a given seed.

    Returns:
        (H, W, 3) uint8, large enough for :func:`pan_frame` up to ``frames - 1``.
    """
    import cv2
    import numpy as np

    width = size[0] + PAN_PX_PER_FRAME[0] * (frames - 1)
    height = size[1] + PAN_PX_PER_FRAME[1] * (frames - 1)
    rng = np.random.default_rng(seed)
    picture = np.zeros((height, width, 3), np.float32)
    for cell_px, weight in ((96, 0.55), (24, 0.3), (6, 0.15)):
        grid = rng.random((height // cell_px + 2, width // cell_px + 2, 3), dtype=np.float32)
        picture += weight * cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    picture = (picture * 255).clip(0, 255).astype(np.uint8)
    for _ in range(max(8, width * height // 6000)):
        centre = (int(rng.integers(width)), int(rng.integers(height)))
        radius = int(rng.integers(4, max(5, min(width, height) // 6)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.circle(picture, centre, radius, colour, thickness=-1, lineType=cv2.LINE_AA)
    return cv2.GaussianBlur(picture, (3, 3), 0.7)


def pan_frame(texture, size: tuple[int, int], index: int):
    """Frame ``index`` of the pan over ``texture``: an (H, W, 3) uint8 view."""
    x0, y0 = PAN_PX_PER_FRAME[0] * index, PAN_PX_PER_FRAME[1] * index
    return texture[y0 : y0 + size[1], x0 : x0 + size[0]]


def write_pan_clip(path: Path, texture, size: tuple[int, int], frames: int) -> Path:
    """Encode the first ``frames`` frames of the pan as a silent H.264 file."""
    from .encode import EncodeSettings, FrameWriter

    settings = EncodeSettings(crf=16, codec="libx264", speed="veryfast", keep_audio=False)
    with FrameWriter(path, fps=CLIP_FPS, size=size, settings=settings) as writer:
        for index in range(frames):
            writer.write(pan_frame(texture, size, index))
    return path


# --- measurements -------------------------------------------------------------------


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its children that have ended (ffmpeg)."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


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

    from .dream import gaussian_blur, tile_batches

    amp = torch.autocast(images.device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    with FlopCounterMode(display=False) as counter:
        for part, _ in tile_batches(images.detach(), settings.tile, settings.tile_batch):
            part = part.contiguous(memory_format=model.input_format).requires_grad_(True)
            with amp:
                acts = model(part, objective.layers)
            objective(acts).sum().backward()
        gaussian_blur(images, settings.smooth)
    return counter.get_total_flops()


def _precision_name(dtype) -> str:
    import torch

    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def dream_only(dreamer, frames: list, settings, video) -> tuple[float, list]:
    """Dream pre-decoded frames as :func:`dream_video` would, without its other stages.

    Lanes, warm-up frames, batch shapes and steps per frame follow the same
    plan; each frame starts from its own input (carrying the previous dream is
    the blend stage, timed apart). Returns (seconds, dreamed kept frames).
    """
    from .dream import frame_generator, to_tensor, to_uint8
    from .video import plan_lanes

    lanes = plan_lanes(len(frames), video.batch, video.warmup, set())
    kept = [None] * len(frames)
    # One untimed call with the batch's shape builds its kernels at every octave.
    dreamer(to_tensor([frames[lane.first] for lane in lanes]), iterations=1)
    _synchronize(dreamer.device)
    start = time.perf_counter()
    active = list(range(len(lanes)))
    while active:
        groups: dict[int, list[int]] = {}
        for k in active:
            first_frame = lanes[k].index == lanes[k].first
            n_iter = settings.iterations if first_frame or video.iterations_next is None else video.iterations_next
            groups.setdefault(n_iter, []).append(k)
        for n_iter, members in groups.items():
            batch = to_tensor([frames[lanes[k].index] for k in members])
            generators = [frame_generator(settings.seed, lanes[k].index) for k in members]
            dreamed = to_uint8(dreamer(batch, iterations=n_iter, generators=generators))
            for k, rgb in zip(members, dreamed):
                if lanes[k].index >= lanes[k].keep_from:
                    kept[lanes[k].index] = rgb
        for k in active:
            lanes[k].index += 1
        active = [k for k in active if lanes[k].index < lanes[k].stop]
    return time.perf_counter() - start, kept


def naive_video(clip: Path, frames: int, model, settings, video, device, folder: Path) -> float:
    """Seconds to dream ``frames`` frames of ``clip`` the way earlier tools do.

    Same algorithm as :func:`dream_video` (flow-warped residual, consistency
    mask, scene cuts, same steps), run naively: fp32 and NCHW (no autocast, no
    channels_last), batch norms as layers of their own, batch 1, and every
    stage in turn on the calling thread: decode a frame, compute its flow
    with OpenCV, blend, dream, write the dream as a JPEG and read it back (the
    carried frame is the one on disk), and encode the JPEG folder to mp4 at
    the end. ``model`` is already loaded.
    """
    import cv2
    import numpy as np
    import torch

    from . import decode, flow
    from .dream import dream, frame_generator, to_tensor, to_uint8
    from .ffmpeg import run_ffmpeg
    from .objectives import parse_objective
    from .video import carry_residual

    objective = parse_objective(settings.objective, model)
    estimator = flow.FlowEstimator(video.flow) if video.flow != "none" else None
    reader = decode.read_frames(clip, max_frames=frames)  # probes the file now: not timed
    fps = decode.probe_video(clip).fps
    folder.mkdir()
    previous_input = previous_dream = None
    start = time.perf_counter()
    for index, current in enumerate(reader):
        # 1. flow and blend, on this thread
        start_picture = to_tensor(current)
        cut = previous_input is not None and flow.scene_cut(previous_input, current)
        if previous_input is not None and not cut and video.blend > 0:
            h, w = current.shape[:2]
            if estimator is None:
                backward, mask = flow.flow_to_tensor(np.zeros((h, w, 2), np.float32)), torch.ones(1, 1, h, w)
            else:
                backward_np = estimator(current, previous_input)
                mask_np = flow.consistency_mask(estimator(previous_input, current), backward_np)
                backward, mask = flow.flow_to_tensor(backward_np), torch.from_numpy(mask_np).float()[None, None]
            start_picture = carry_residual(
                start_picture, to_tensor(previous_dream), to_tensor(previous_input), backward, mask, video.blend
            )
        # 2. dream in fp32, batch 1
        dreamed = dream(
            model, start_picture.to(device), objective, settings, generator=frame_generator(settings.seed, index)
        )
        # 3. round-trip through a JPEG file
        path = folder / f"frame_{index:06d}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(to_uint8(dreamed)[0], cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, NAIVE_JPEG_QUALITY])
        previous_dream = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        previous_input = current
    # 4. encode the folder, as the pipeline's default encoder settings would
    run_ffmpeg(
        ["-framerate", f"{fps.numerator}/{fps.denominator}", "-start_number", "0", "-i", str(folder / "frame_%06d.jpg"),
         "-c:v", "libx264", "-crf", "18", "-preset", "medium", "-pix_fmt", "yuv420p", str(folder / "naive.mp4")],
        what="encoding the naive reference's frames",
    )  # fmt: skip
    return time.perf_counter() - start


def stage_costs(clip: Path, frames: int, dreamed: list, video, fps, folder: Path) -> dict:
    """Milliseconds per frame of each non-dream stage alone, on this thread.

    decode: OpenCV decoding; flow: scene-cut check, two DIS flows and the
    consistency mask (the prefetch thread's work); blend: the carried residual
    (on the CPU, as the pipeline does); save: the PNG the work folder keeps;
    encode: x264 through :class:`FrameWriter`, wall time until the file is
    closed, and the CPU time ffmpeg used (``encode_cpu``), which on a small CPU
    is taken from the model.
    """
    import resource

    import numpy as np
    import torch

    from . import decode, flow
    from .dream import to_tensor
    from .encode import EncodeSettings, FrameWriter
    from .video import carry_residual
    from .files import frame_path, save_image
    from .render import PNG_COMPRESSION

    costs = {}
    reader = decode.read_frames(clip, max_frames=frames)
    start = time.perf_counter()
    inputs = list(reader)
    costs["decode"] = (time.perf_counter() - start) / len(inputs)

    estimator = flow.FlowEstimator(video.flow) if video.flow != "none" else None
    pairs = list(zip(inputs, inputs[1:]))
    flows = []
    start = time.perf_counter()
    for previous, current in pairs:
        flow.scene_cut(previous, current)
        if estimator is not None:
            backward = estimator(current, previous)
            flows.append((backward, flow.consistency_mask(estimator(previous, current), backward)))
        else:  # --flow none: plain blending, as the pipeline does it
            flows.append((np.zeros((*current.shape[:2], 2), np.float32), np.ones(current.shape[:2], np.float32)))
    costs["flow"] = (time.perf_counter() - start) / max(1, len(pairs))

    start = time.perf_counter()
    for (previous, current), (backward, mask), previous_dream in zip(pairs, flows, dreamed):
        carry_residual(
            to_tensor(current), to_tensor(previous_dream), to_tensor(previous), flow.flow_to_tensor(backward),
            torch.from_numpy(mask).float()[None, None], video.blend,
        )  # fmt: skip
    costs["blend"] = (time.perf_counter() - start) / max(1, len(flows))

    saved = folder / "stages-frames"  # as the render job saves finished frames
    saved.mkdir()
    start = time.perf_counter()
    for index, rgb in enumerate(dreamed):
        save_image(frame_path(saved, index), rgb, png_compression=PNG_COMPRESSION)
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
    return {name: seconds * 1000 for name, seconds in costs.items()}


def objective_scores(model, objective, images, settings) -> list[float]:
    """The objective of (B, 3, H, W) pictures, scored in fp32 as the dreamer scores them (tiled)."""
    from .dream import objective_gradient

    _, score = objective_gradient(model, images, objective, tile=settings.tile, autocast_dtype=None)
    return score.tolist()


# --- the memory children --------------------------------------------------------------


def _load_average() -> float | None:
    """The 1-minute load average (runnable processes): how busy the machine was."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM on Linux, else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def pipeline_child(argv: list[str]) -> int:
    """Entry point of a memory child: run :func:`dream_video` once and print what it used.

    ``argv[0]`` is a JSON object with input, output, max_frames and the dream,
    compute and video settings. Prints one JSON line: frames, seconds (the
    frame loop), wall_s (the whole call), peak_rss_mb (VmHWM of this process;
    ffmpeg runs in processes of its own) and gpu_peak_mb (None without CUDA).
    """
    spec = json.loads(argv[0])
    import torch

    torch.set_num_threads(spec["threads"])

    from .dream import ComputeSettings, DreamSettings
    from .encode import EncodeSettings
    from .video import VideoSettings, dream_video

    start = time.perf_counter()
    result = dream_video(
        spec["input"], spec["output"], DreamSettings(**spec["dream"]), ComputeSettings(**spec["compute"]),
        VideoSettings(**spec["video"]), EncodeSettings(), max_frames=spec["max_frames"], progress=False,
    )  # fmt: skip
    wall = time.perf_counter() - start
    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    print(json.dumps({
        "frames": result.frames, "seconds": result.seconds, "wall_s": wall, "peak_rss_mb": _peak_rss_mb(),
        "gpu_peak_mb": gpu,
    }))  # fmt: skip
    return 0


def _start_child(job: dict) -> subprocess.Popen:
    code = "import sys; from dreamreel.pipeline.bench import pipeline_child; sys.exit(pipeline_child(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(job)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finish_child(proc: subprocess.Popen, job: dict) -> dict:
    out, err = proc.communicate()
    if proc.returncode != 0:
        tail = " | ".join(err.strip().splitlines()[-4:])
        raise RuntimeError(f"the pipeline child for {job['max_frames']} frames failed (exit {proc.returncode}): {tail}")
    return json.loads(out.strip().splitlines()[-1])


# --- the benchmark ----------------------------------------------------------------------


def run_benchmark(
    *,
    model: str = DEFAULT_MODEL,
    size: tuple[int, int] = DEFAULT_SIZE,
    octaves: int = DEFAULT_OCTAVES,
    iterations: int = DEFAULT_ITERATIONS,
    frames: int = DEFAULT_FRAMES,
    batch: int = 1,
    device: str = "auto",
    precision: str = "auto",
    input: str | Path | None = None,
    threads: int | None = None,
    repeat: int = 1,
    quick: bool = False,
    log: Callable[[str], None] | None = _log_to_stderr,
) -> dict:
    """Measure dreaming and the video pipeline; see the module docstring.

    Args:
        model: zoo name or TorchScript file.
        size: (width, height) of the generated clip, both even; ignored with ``input``.
        octaves, iterations: pyramid levels and ascent steps per octave (every frame).
        frames: frames of the short clip; the memory check's long clip has
            ``LONG_CLIP_FACTOR`` times more.
        batch: video lanes dreamed as one batch.
        device, precision: as ``--device`` and ``--precision``.
        input: a video file to use instead of the generated pan (its first
            frames, at its own size).
        threads: torch CPU threads for this run and its children; None keeps
            torch's default (one per core).
        repeat: run the dream-only, pipeline and naive measurements this many
            times, interleaved, and keep the fastest of each (other programs
            only ever slow a run down).
        quick: fewer repetitions, a small matmul, 2 naive frames, and the two
            memory children run at the same time (tests, smoke checks).
        log: receives progress lines; None for silence.

    Returns:
        A JSON-ready dict: the keys of ``REQUIRED_KEYS``, the per-stage costs in
        ``stage_ms_per_frame``, and the settings used in ``settings``.

    Raises:
        ValueError: a bad setting or input.
    """
    import torch

    from .presets import build, load_preset

    if not (isinstance(frames, int) and frames >= 2):
        raise ValueError(f"--frames {frames!r}: expected a whole number >= 2 (flow needs pairs)")
    if input is None and not (len(size) == 2 and all(isinstance(n, int) and n >= 16 and n % 2 == 0 for n in size)):
        raise ValueError(f"--size {size!r}: expected WIDTHxHEIGHT, both even (yuv420p video) and >= 16")
    for name, value in (("threads", threads), ("repeat", repeat)):
        if value is not None and not (isinstance(value, int) and value >= 1):
            raise ValueError(f"--{name} {value!r}: expected a whole number >= 1")
    preset = load_preset(PRESET)
    settings = build("dream", preset, {"octaves": octaves, "iterations": iterations})
    video = replace(build("video", preset, {"batch": batch}), iterations_next=None)  # every frame: `iterations`
    began = time.perf_counter()
    say = log or (lambda _message: None)

    def progress(message: str) -> None:
        say(f"[{time.perf_counter() - began:5.1f} s] {message}")

    load_before = _load_average()
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads)
    try:
        with tempfile.TemporaryDirectory(prefix="dreamreel-bench-") as tmp:
            result = _measure(
                Path(tmp), model=model, size=size, frames=frames, settings=settings, video=video, device=device,
                precision=precision, input=input, repeat=repeat, quick=quick, log=progress,
            )  # fmt: skip
    finally:
        torch.set_num_threads(default_threads)
    result["settings"].update(
        model=model,
        input=str(input) if input is not None else "generated pan",
        device=device,
        precision=precision,
        repeat=repeat,
        quick=quick,
        torch_threads=threads or default_threads,
        cpu_count=os.cpu_count(),
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        load_average_1min=[load_before, _load_average()],
        seconds=round(time.perf_counter() - began, 1),
    )
    return result


def _measure(folder: Path, *, model, size, frames, settings, video, device, precision, input, repeat, quick, log) -> dict:
    """The body of :func:`run_benchmark`, working in ``folder``."""
    import torch

    from . import decode, models
    from .dream import ComputeSettings, Dreamer, ascent_step, dream, frame_generator, to_tensor
    from .encode import EncodeSettings
    from .objectives import parse_objective
    from .render import QUEUE_FRAMES
    from .video import PREFETCH_FRAMES, dream_video

    mode = "quick" if quick else "full"
    dev = models.pick_device(device)
    autocast_dtype = models.pick_precision(precision, dev)
    compute = ComputeSettings(model=model, device=str(dev), precision=precision)

    # 1. the clips
    long_frames = frames * LONG_CLIP_FACTOR
    if input is None:
        log(f"generating a {size[0]}x{size[1]} pan of {frames} and {long_frames} frames")
        texture = pan_texture(size, long_frames)
        short_clip = write_pan_clip(folder / "pan_short.mp4", texture, size, frames)
        long_clip = write_pan_clip(folder / "pan_long.mp4", texture, size, long_frames)
        del texture
    else:
        short_clip = long_clip = Path(input)
    inputs = list(decode.read_frames(short_clip, max_frames=frames))
    if len(inputs) < 2:
        raise ValueError(f"{short_clip}: has {len(inputs)} frame; the benchmark needs at least 2")
    frames = len(inputs)
    height, width = inputs[0].shape[:2]
    clip_fps = decode.probe_video(short_clip).fps
    lanes = min(video.batch, frames)

    # 2. one ascent iteration: time, FLOPs, and the matmul peak beside it
    log(f"loading {model} on {dev} ({_precision_name(autocast_dtype)}, {torch.get_num_threads()} threads)")
    dreamer = Dreamer(settings, compute)
    images = to_tensor([inputs[k % frames] for k in range(lanes)], dev)
    generators = [frame_generator(settings.seed, k) for k in range(lanes)]
    log(f"timing one ascent iteration at {width}x{height}, batch {lanes}")
    step_times = _timed(
        lambda: ascent_step(dreamer.model, images, dreamer.objective, settings, generators, autocast_dtype),
        dev, *ITERATION_REPEATS[mode],
    )  # fmt: skip
    ms_per_iteration = statistics.median(step_times) * 1000
    flops = ascent_flops(dreamer.model, images, dreamer.objective, settings, autocast_dtype)
    gflops_achieved = flops / (ms_per_iteration / 1000) / 1e9
    side = QUICK_MATMUL_SIDE if quick else MATMUL_SIDE.get(dev.type, 2048)
    log(f"timing a {side}x{side} matmul in {_precision_name(autocast_dtype)}")
    gflops_peak = matmul_gflops(dev, autocast_dtype or torch.float32, side, *MATMUL_REPEATS[mode])

    # 3. quality: fast settings against fp32 on the first frame (this also
    # builds the fp32 kernels the naive reference uses below)
    log("quality check: fast vs fp32 on the first frame")
    fp32_model = models.load_model(model).to(dev)  # as earlier tools: batch norms unfolded
    fp32_objective = parse_objective(settings.objective, fp32_model)
    first = to_tensor(inputs[0], dev)
    fast_out = dreamer(first, generators=[frame_generator(settings.seed, 0)])
    fp32_out = dream(fp32_model, first, fp32_objective, settings, generator=frame_generator(settings.seed, 0))
    pictures = torch.cat([first, fp32_out, fast_out.float()])
    score_start, score_fp32, score_fast = objective_scores(fp32_model, fp32_objective, pictures, settings)
    del fast_out, fp32_out, pictures

    # 4. dreaming alone, the whole pipeline and the naive reference, in turn
    # (kernels are built by now for all three); the fastest of `repeat` runs
    naive_frames = min(frames, QUICK_NAIVE_FRAMES if quick else NAIVE_FRAMES)
    dream_seconds = pipeline_seconds = naive_seconds = pipeline_startup = math.inf
    dream_cpu = pipeline_cpu = math.inf
    gpu_peak_dream = None
    for run in range(repeat):
        of = f" (run {run + 1} of {repeat})" if repeat > 1 else ""
        log(f"dream only: {frames} frames{of}")
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        cpu = _cpu_seconds()
        seconds, dreamed = dream_only(dreamer, inputs, settings, video)
        dream_cpu = min(dream_cpu, _cpu_seconds() - cpu)
        dream_seconds = min(dream_seconds, seconds)
        if dev.type == "cuda":
            gpu_peak_dream = torch.cuda.max_memory_allocated(dev) / 2**20

        log(f"whole pipeline: {frames} frames → mp4{of}")
        start, cpu = time.perf_counter(), _cpu_seconds()
        result = dream_video(
            short_clip, folder / f"pipeline_{run}.mp4", settings, compute, video, EncodeSettings(),
            max_frames=frames, progress=False,
        )  # fmt: skip
        pipeline_cpu = min(pipeline_cpu, _cpu_seconds() - cpu)
        pipeline_startup = min(pipeline_startup, time.perf_counter() - start - result.seconds)
        pipeline_seconds = min(pipeline_seconds, result.seconds)

        log(f"naive reference: {naive_frames} frames, fp32, sequential, JPEG round trip{of}")
        seconds = naive_video(short_clip, naive_frames, fp32_model, settings, video, dev, folder / f"naive_{run}")
        naive_seconds = min(naive_seconds, seconds)
    fps_dream_only = frames / dream_seconds
    fps_pipeline = frames / pipeline_seconds
    fps_naive = naive_frames / naive_seconds
    del fp32_model

    # 5. each other stage alone
    log("stage costs")
    stages = stage_costs(short_clip, frames, dreamed, video, clip_fps, folder)
    stages["dream"] = 1000 / fps_dream_only
    del dreamer, dreamed, images

    # 6. memory: the pipeline in fresh processes, on the short and the long clip
    memory_settings = replace(settings, iterations=min(settings.iterations, MEMORY_ITERATIONS))
    queued = PREFETCH_FRAMES + QUEUE_FRAMES  # frames the pipeline holds at most, per lane
    if frames < queued:
        log(f"note: {frames} frames do not fill the pipeline's queues ({queued} frames), so the long clip's peak "
            "also holds the frames that fill them")
    spec = {"dream": asdict(memory_settings), "compute": asdict(compute), "video": asdict(video), "threads": torch.get_num_threads()}
    jobs = {
        name: {**spec, "input": str(clip), "output": str(folder / f"child_{name}.mp4"), "max_frames": count}
        for name, clip, count in (("short", short_clip, frames), ("long", long_clip, long_frames))
    }
    if quick:  # at the same time: each child's peak is its own
        log(f"memory: pipeline on {frames} and {long_frames} frames in two fresh processes")
        running = {name: _start_child(job) for name, job in jobs.items()}
        children = {name: _finish_child(proc, jobs[name]) for name, proc in running.items()}
    else:
        children = {}
        for name, job in jobs.items():
            log(f"memory: pipeline on {job['max_frames']} frames in a fresh process")
            children[name] = _finish_child(_start_child(job), job)
    if children["long"]["frames"] < long_frames:
        log(f"note: {long_clip} has only {children['long']['frames']} frames, not {long_frames}")
    log("done")

    return {
        "device": str(dev),
        "precision": _precision_name(autocast_dtype),
        "ms_per_iteration": ms_per_iteration,
        "ms_per_iteration_min": min(step_times) * 1000,
        "gflop_per_iteration": flops / 1e9,
        "gflops_achieved": gflops_achieved,
        "gflops_peak": gflops_peak,
        "percent_of_peak": 100 * gflops_achieved / gflops_peak,
        "fps_dream_only": fps_dream_only,
        "fps_pipeline": fps_pipeline,
        "pipeline_efficiency": fps_pipeline / fps_dream_only,
        "pipeline_startup_s": pipeline_startup,
        "cpu_ms_per_frame_dream_only": 1000 * dream_cpu / frames,
        "cpu_ms_per_frame_pipeline": 1000 * pipeline_cpu / frames,
        "fps_naive": fps_naive,
        "speedup_vs_naive": fps_pipeline / fps_naive,
        "stage_ms_per_frame": stages,
        "peak_rss_short_mb": children["short"]["peak_rss_mb"],
        "peak_rss_long_mb": children["long"]["peak_rss_mb"],
        "memory_ratio_long_short": children["long"]["peak_rss_mb"] / children["short"]["peak_rss_mb"],
        "gpu_peak_dream_mb": gpu_peak_dream,
        "gpu_peak_short_mb": children["short"]["gpu_peak_mb"],
        "gpu_peak_long_mb": children["long"]["gpu_peak_mb"],
        "objective_start": score_start,
        "objective_fp32": score_fp32,
        "objective_fast": score_fast,
        "objective_ratio_fast_vs_fp32": score_fast / score_fp32,
        "settings": {
            "size": f"{width}x{height}",
            "frames": frames,
            "frames_long": children["long"]["frames"],
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
            "batch": video.batch,
            "warmup_frames": video.warmup,
            "matmul_side": side,
        },
    }


# --- report -------------------------------------------------------------------------------


def format_table(r: dict) -> str:
    """The result of :func:`run_benchmark` as a readable table."""
    s = r["settings"]

    def mb(value) -> str:
        return "-" if value is None else f"{value:.0f} MB"

    stages = r["stage_ms_per_frame"]
    rows = [
        ("ascent iteration (full size)", f"{r['ms_per_iteration']:.1f} ms", f"{r['gflop_per_iteration']:.2f} GFLOP → {r['gflops_achieved']:.1f} GFLOP/s"),
        (f"matmul {s['matmul_side']}² {r['precision']}", f"{r['gflops_peak']:.1f} GFLOP/s", f"model reaches {r['percent_of_peak']:.1f} % of it"),
        ("dream only", f"{r['fps_dream_only']:.3f} fps", f"{stages['dream']:.0f} ms/frame"),
        ("whole pipeline", f"{r['fps_pipeline']:.3f} fps", f"efficiency {r['pipeline_efficiency']:.2f} (+{r['pipeline_startup_s']:.1f} s startup)"),
        ("CPU per frame: dream / pipeline", f"{r['cpu_ms_per_frame_dream_only']:.0f} ms", f"{r['cpu_ms_per_frame_pipeline']:.0f} ms (all threads, ffmpeg included)"),
        (f"naive reference ({s['frames_naive']} fr)", f"{r['fps_naive']:.3f} fps", f"speed-up {r['speedup_vs_naive']:.2f}x"),
        ("peak RSS short / long", f"{mb(r['peak_rss_short_mb'])} / {mb(r['peak_rss_long_mb'])}", f"ratio {r['memory_ratio_long_short']:.3f}, {r['peak_rss_long_mb'] - r['peak_rss_short_mb']:+.0f} MB ({s['frames']} / {s['frames_long']} frames)"),
        ("GPU peak dream / short / long", f"{mb(r['gpu_peak_dream_mb'])}", f"{mb(r['gpu_peak_short_mb'])} / {mb(r['gpu_peak_long_mb'])}"),
        ("objective fast / fp32", f"{r['objective_ratio_fast_vs_fp32']:.3f}", f"start {r['objective_start']:.4g}, fp32 {r['objective_fp32']:.4g}, fast {r['objective_fast']:.4g}"),
        ("stages alone, ms/frame", " ".join(f"{k} {v:.1f}" for k, v in stages.items() if k != "dream"), ""),
    ]  # fmt: skip
    head = (
        f"dreamreel bench: {s['model']} {s['size']}, {s['octaves']} octaves x {s['iterations']} iterations, "
        f"batch {s['batch']}, {r['device']} {r['precision']}, {s['torch_threads']} threads, "
        f"best of {s['repeat']} ({s['input']}, {s['seconds']:.0f} s, load {s['load_average_1min'][0]} → {s['load_average_1min'][1]})"
    )
    width = max(len(name) for name, _, _ in rows)
    value_width = max(len(value) for _, value, _ in rows[:-1])
    lines = [head, "-" * len(head)]
    lines += [f"{name:<{width}}  {value:>{value_width}}  {note}".rstrip() for name, value, note in rows]
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 640x360, got {text!r}") from None
    if not (16 <= w <= 8192 and 16 <= h <= 8192 and w % 2 == 0 and h % 2 == 0):
        raise argparse.ArgumentTypeError(f"{text}: width and height must be even, from 16 to 8192 pixels")
    return w, h


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's flags, for ``dreamreel bench`` and ``benchmarks/bench.py``."""
    w, h = DEFAULT_SIZE
    parser.add_argument("--model", default=DEFAULT_MODEL, help="zoo model or TorchScript file")
    parser.add_argument("--input", help="video file to use instead of the generated pan (its own size)")
    parser.add_argument("--size", type=_size, help=f"WxH of the generated pan (default {w}x{h}; --quick {QUICK_SIZE[0]}x{QUICK_SIZE[1]})")
    parser.add_argument("--octaves", type=_positive, help=f"pyramid levels (default {DEFAULT_OCTAVES}; --quick {QUICK_OCTAVES})")
    parser.add_argument("--iterations", type=_positive, help=f"ascent steps per octave, every frame (default {DEFAULT_ITERATIONS}; --quick {QUICK_ITERATIONS})")
    parser.add_argument("--frames", type=int, help=f"frames of the short clip, >= 2; the long one has {LONG_CLIP_FACTOR}x (default {DEFAULT_FRAMES}; --quick {QUICK_FRAMES})")
    parser.add_argument("--batch", type=_positive, default=1, help="video lanes dreamed as one batch (default 1)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps (default auto)")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"], help="fast path precision (default auto)")
    parser.add_argument("--threads", type=_positive, help="torch CPU threads (default: torch's, one per core)")
    parser.add_argument("--repeat", type=_positive, default=1, help="runs of the frame-rate measurements; the fastest counts (default 1)")
    parser.add_argument("--quick", action="store_true", help="small and rough: for tests and smoke checks")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout (the table goes to stderr)")  # fmt: skip


def run_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the benchmark for parsed ``args``; print the table or JSON; exit code."""
    if args.input and args.size:
        parser.error("--size applies to the generated pan; with --input the file's own size is used")
    if args.frames is not None and args.frames < 2:
        parser.error(f"--frames {args.frames}: expected a whole number >= 2 (flow needs pairs)")
    quick = args.quick
    result = run_benchmark(
        model=args.model,
        size=args.size or (QUICK_SIZE if quick else DEFAULT_SIZE),
        octaves=args.octaves or (QUICK_OCTAVES if quick else DEFAULT_OCTAVES),
        iterations=args.iterations or (QUICK_ITERATIONS if quick else DEFAULT_ITERATIONS),
        frames=args.frames or (QUICK_FRAMES if quick else DEFAULT_FRAMES),
        batch=args.batch,
        device=args.device,
        precision=args.precision,
        input=args.input,
        threads=args.threads,
        repeat=args.repeat,
        quick=quick,
    )
    table = format_table(result)
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(result))
    else:
        print(table)
    return 0


def build_parser(prog: str = "dreamreel bench") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``dreamreel bench``: 0 done, 2 bad usage or input, 130 interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run_args(args, parser)
    except KeyboardInterrupt:
        print("dreamreel bench: interrupted", file=sys.stderr)
        return 130
    except ValueError as exc:
        print(f"dreamreel bench: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
