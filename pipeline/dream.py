"""The dreaming engine: gradient ascent on the picture, octave by octave.

For each octave of an image pyramid (smallest first), the picture is changed
by normalised gradient ascent so the objective grows; the detail it gains is
carried up to the next octave (Mordvintsev et al. 2015, the DeepDream
notebook). Each step rolls the picture by a random offset (jitter) so the
network's stride grid leaves no pattern, and large pictures are processed in
tiles whose grid moves with the roll, so a 4K frame dreams in bounded memory
without seams.

Every function here works on (B, 3, H, W) RGB tensors in [0, 1]; images in
a batch are independent (each has its own score and its own step size).
"""

from __future__ import annotations

import collections
import functools
import math
import os
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from . import param as param_mod
from .models import DreamModel
from .objectives import Objective, target_key

# Octaves stop before the picture gets smaller than this: below ~32 px the
# low layers of ImageNet networks see only a few positions.
MIN_OCTAVE_SIDE = 32
# Tile side of ``tile = None`` on a CPU. Measured on the development CPU at
# 1280x720 (3 octaves x 5 steps): 512 px tiles dream a frame in 3.4 s fp32 /
# 2.9 s bf16 at 1.1-1.2 GB peak; one 1280 px tile takes 4.2 s / 2.7 s at
# 1.4-1.9 GB.
CPU_TILE = 512
# Share of the free GPU memory an automatic tile may fill; the rest is for
# the other octaves' captured graphs and the allocator's fragmentation.
GPU_TILE_MEMORY_SHARE = 0.5
# torch's CPU threads while a GPU dreams: its CPU work is then a few copies,
# and idle OpenMP threads wait spinning. On the 16-core H200 host a 720p video
# used 2.3 CPU-seconds per frame with torch's default 16 threads, while
# decoding, flow, PNG saving and x264 need the cores.
GPU_HOST_TORCH_THREADS = 2


@dataclass(frozen=True)
class DreamSettings:
    """How to dream one picture. Presets fill these; CLI flags override them.

    Attributes:
        objective: expression, see :mod:`objectives` (``"mid"``, ``"blocks.4:7"``).
        octaves: pyramid levels, the full-size picture included.
        octave_scale: size ratio between two levels.
        iterations: ascent steps per octave.
        step: size of one step, in pixel-range units (1 = black to white),
            applied to the gradient normalised to mean |g| = 1.
        jitter: largest random roll in pixels before each step.
        smooth: sigma in pixels of a Gaussian blur of the gradient; 0 is off.
        tile: largest side in pixels processed at once; larger pictures are
            tiled. None = auto: ``CPU_TILE`` on a CPU; on a GPU the largest
            side whose ascent step fits in half the free memory (a whole
            1080p frame on a current GPU).
        tile_batch: tiles of one picture that go through the network together:
            1 keeps memory bounded by one tile; more fills a GPU on large sizes.
        seed: seeds the jitter and tile offsets (and noise inputs).
        optimizer: ``step`` (the normalised gradient step above), ``adam``
            (Adam at learning rate ``step``) or ``lbfgs`` (L-BFGS with a
            line search; ``step`` unused), per octave; see :func:`dream`.
        param: how the optimiser holds the picture: ``pixel``, or ``fft`` (a
            1/f-scaled spectrum in decorrelated colours, :mod:`param`; needs
            ``adam`` or ``lbfgs``).
        gain: the factor of the start picture's activations that
            ``enhance:LAYER`` objectives aim at.
        scale_jitter: largest random rescaling of the picture before each
            step, as a fraction (0.1: 0.9x to 1.1x); ``adam`` and ``lbfgs`` only.
        rotate_jitter: largest random rotation before each step, degrees;
            ``adam`` and ``lbfgs`` only.
    """

    objective: str = "mid"
    octaves: int = 4
    octave_scale: float = 1.4
    iterations: int = 10
    step: float = 0.01
    jitter: int = 32
    smooth: float = 0.5
    tile: int | None = None
    tile_batch: int = 1
    seed: int = 0
    optimizer: str = "step"
    param: str = "pixel"
    gain: float = 2.0
    scale_jitter: float = 0.0
    rotate_jitter: float = 0.0

    def __post_init__(self):
        check_settings(self)


OPTIMIZERS = ("step", "adam", "lbfgs")


class ConflictingSettings(ValueError):
    """Two settings that are each valid but cannot work together.

    Attributes:
        first, second: (field name, value) of the two settings.
        reason: why they conflict and what to choose instead.
    """

    def __init__(self, first: tuple[str, object], second: tuple[str, object], reason: str):
        self.first, self.second, self.reason = first, second, reason
        flags = " with ".join(f"--{name.replace('_', '-')} {value}" for name, value in (first, second))
        super().__init__(f"{flags}: {reason}")


def check_settings(s: DreamSettings) -> None:
    """Raise ValueError naming the flag for any out-of-range dream setting or conflicting pair."""
    rules = {
        "octaves": (s.octaves, 1, 12),
        "octave_scale": (s.octave_scale, 1.05, 4.0),
        "iterations": (s.iterations, 0, 1000),
        "step": (s.step, 0.0, 1.0),
        "jitter": (s.jitter, 0, 1024),
        "smooth": (s.smooth, 0.0, 20.0),
        "tile": (s.tile, 64, 8192),
        "tile_batch": (s.tile_batch, 1, 256),
        "seed": (s.seed, 0, 2**63 - 1),
        "gain": (s.gain, 0.1, 10.0),
        "scale_jitter": (s.scale_jitter, 0.0, 0.5),
        "rotate_jitter": (s.rotate_jitter, 0.0, 180.0),
    }
    if s.tile is None:
        del rules["tile"]
    for name, (value, lo, hi) in rules.items():
        flag = "--" + name.replace("_", "-")
        expected = int if isinstance(lo, int) and isinstance(hi, int) else (int, float)
        if isinstance(value, bool) or not isinstance(value, expected):
            raise TypeError(f"{flag}: expected a number, got {value!r}")
        if not lo <= value <= hi:
            raise ValueError(f"{flag} {value}: expected a value from {lo} to {hi}")
    for name, choices in (("objective", None), ("optimizer", OPTIMIZERS), ("param", param_mod.PARAMS)):
        value = getattr(s, name)
        if not isinstance(value, str):
            raise TypeError(f"--{name}: expected a string, got {value!r}")
        if choices and value not in choices:
            raise ValueError(f"--{name} {value!r}: expected one of {', '.join(choices)}")
    if s.optimizer == "step":
        # the normalised step is a rule for pixels, and its captured step rolls only
        if s.param != "pixel":
            raise ConflictingSettings(("param", s.param), ("optimizer", s.optimizer),
                                      "the normalised step works on pixels only; choose optimizer adam or lbfgs")
        for name in ("scale_jitter", "rotate_jitter"):
            if getattr(s, name):
                raise ConflictingSettings((name, getattr(s, name)), ("optimizer", s.optimizer),
                                          "random scale and rotation need optimizer adam or lbfgs (the normalised step only rolls)")


def settings_from_dict(values: dict, base: DreamSettings | None = None) -> DreamSettings:
    """``base`` (default settings) with the given fields replaced; unknown keys raise."""
    names = {f.name for f in fields(DreamSettings)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown dream setting(s) {sorted(unknown)}; known: {sorted(names)}")
    current = {f.name: getattr(base or DreamSettings(), f.name) for f in fields(DreamSettings)}
    return DreamSettings(**{**current, **values})


# --- image operations --------------------------------------------------------


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding.

    On a CPU it is a weighted sum of shifted views: on the 2-core development
    CPU a (1, 3, 720, 1280) blur at sigma 0.5 took 100 ms as a grouped
    convolution and 12 ms this way. On a GPU each shifted sum is a kernel of
    its own, so there it is two depthwise convolutions (two kernels), unless
    ``torch.compile`` traces it, which fuses the sums into one.

    Args:
        x: (B, C, H, W).
        sigma: standard deviation in pixels; 0 returns ``x``.

    Returns:
        (B, C, H, W), same device and dtype.
    """
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3 * sigma))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    if radius < 1:
        return x
    k = [math.exp(-0.5 * (t / sigma) ** 2) for t in range(-radius, radius + 1)]
    k = [weight / sum(k) for weight in k]
    h, w = x.shape[-2:]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    # torch.compile fuses the shifted sums into one loop on any device
    if x.device.type == "cpu" or torch.compiler.is_compiling():
        x = sum(weight * x[..., :, i : i + w] for i, weight in enumerate(k))
        return sum(weight * x[..., i : i + h, :] for i, weight in enumerate(k))
    kernel = _blur_kernel(tuple(k), x.shape[1], x.device, x.dtype)
    x = F.conv2d(x, kernel, groups=x.shape[1])
    return F.conv2d(x, kernel.transpose(2, 3), groups=x.shape[1])


@functools.lru_cache(maxsize=64)
def _blur_kernel(weights: tuple[float, ...], channels: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(C, 1, 1, K) depthwise kernel, made once: a copy to the GPU cannot happen inside a graph capture."""
    return torch.tensor(weights, device=device, dtype=dtype).expand(channels, 1, 1, -1)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W) to ``size`` = (h, w), antialiased when shrinking."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def octave_sizes(height: int, width: int, octaves: int, scale: float) -> list[tuple[int, int]]:
    """Pyramid sizes, smallest first, ending at (height, width).

    Levels that would fall below ``MIN_OCTAVE_SIDE`` are dropped.
    """
    sizes = []
    for k in range(octaves - 1, -1, -1):
        h, w = round(height / scale**k), round(width / scale**k)
        if k == 0 or min(h, w) >= MIN_OCTAVE_SIDE:
            sizes.append((h, w))
    return sizes


# --- gradient ascent -----------------------------------------------------------

# fp16 gradients of a mean over a large layer (1/N per element, N ~ 1e6 at
# 720p) fall below fp16's smallest normal number; the score is scaled by this
# before the backward pass and the gradient divided by it after.
FP16_LOSS_SCALE = 2.0**12
# Eager runs of an ascent step before its CUDA graph is captured: the first
# run allocates and picks kernels, the second reuses them as the graph will.
GRAPH_WARMUP_RUNS = 2
# Captured steps a dreamer keeps (a video uses one per octave; zoom looks and
# lanes add a few); each holds the activations of its shape in GPU memory.
MAX_CAPTURED_STEPS = 24


def tile_batches(x: torch.Tensor, tile: int, tile_batch: int) -> Iterator[tuple[torch.Tensor, list[tuple[int, int]]]]:
    """Cut (B, C, H, W) pictures into tiles of at most ``tile`` px and stack equal ones.

    Tiles of one shape (all inner tiles; the last row and column are smaller)
    are stacked along the batch, ``tile_batch`` tiles at a time, tile-major:
    rows ``k*B .. (k+1)*B - 1`` of a stack are tile ``k`` of every picture.

    Yields:
        (stack (G*B, C, th, tw), the G tiles' top-left corners (y0, x0)).
    """
    h, w = x.shape[-2:]
    by_shape: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            by_shape.setdefault((min(tile, h - y0), min(tile, w - x0)), []).append((y0, x0))
    for (th, tw), corners in by_shape.items():
        for i in range(0, len(corners), tile_batch):
            group = corners[i : i + tile_batch]
            yield torch.cat([x[:, :, y0 : y0 + th, x0 : x0 + tw] for y0, x0 in group]), group


def picture_score(
    model: DreamModel,
    objective: Objective,
    autocast_dtype: torch.dtype | None,
    autocast_cache: bool,
    pictures: torch.Tensor,
    reference: torch.Tensor | None = None,
    gain: float = 1.0,
) -> torch.Tensor:
    """The objective of (B, 3, H, W) pictures as (B,) float32, in the autocast precision: what a compiled step compiles.

    ``reference`` (B, 3, H, W), placed like ``pictures``, gives the targets of
    ``enhance:`` objectives: its activations times ``gain``, without gradient.
    """
    amp = torch.autocast(pictures.device.type, dtype=autocast_dtype, cache_enabled=autocast_cache) if autocast_dtype else nullcontext()
    with amp:
        acts = model(pictures, objective.layers)
        if reference is not None:
            with torch.no_grad():
                acts |= {target_key(name): gain * a for name, a in model(reference, objective.targets).items()}
    return objective(acts).float()


def objective_gradient(
    model: DreamModel,
    x: torch.Tensor,
    objective: Objective,
    *,
    tile: int,
    autocast_dtype: torch.dtype | None,
    tile_batch: int = 1,
    autocast_cache: bool = True,
    reference: torch.Tensor | None = None,
    gain: float = 1.0,
    compiled: CompiledSteps | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the objective with respect to the picture, tile by tile.

    A tile's score is weighted by its share of the picture's area, so a tiled
    gradient matches the untiled one away from tile borders; the caller rolls
    the picture before each call so those borders move every step. Up to
    ``tile_batch`` tiles of one shape go through the network together (faster
    on a GPU; memory grows with it). In fp16 the backward pass runs on the
    unweighted score times ``FP16_LOSS_SCALE`` so small gradients do not
    underflow; the weight and scale are applied to the fp32 result.

    Args:
        x: (B, 3, H, W) pictures in [0, 1].
        tile: largest tile side in pixels.
        autocast_dtype: bf16/fp16 autocast, or None for fp32.
        tile_batch: tiles per forward pass.
        autocast_cache: autocast's weight-cast cache; CUDA graph capture needs it off.
        reference: (B, 3, H, W) start pictures, placed like ``x``, for
            objectives with targets (``enhance:LAYER``): their activations
            times ``gain`` are the targets, tile by tile. None: ``x`` itself.
        gain: see ``reference``.
        compiled: scores each tile with its compiled :func:`picture_score`
            (whose backward pass is compiled with it), else eagerly.

    Returns:
        (gradient (B, 3, H, W) float32, score (B,) float32 detached).
    """
    h, w = x.shape[-2:]
    b = x.shape[0]
    grad = torch.zeros_like(x)
    score = torch.zeros(b, device=x.device)
    loss_scale = FP16_LOSS_SCALE if autocast_dtype == torch.float16 else 1.0
    references = tile_batches(x if reference is None else reference, tile, tile_batch) if objective.targets else None
    for part, corners in tile_batches(x.detach(), tile, tile_batch):
        th, tw = part.shape[-2:]
        area = th * tw / (h * w)
        part = part.contiguous(memory_format=model.input_format).requires_grad_(True)
        start = None
        if references is not None:
            start = next(references)[0].contiguous(memory_format=model.input_format)
        if compiled is not None:
            s = compiled.score(model, objective, autocast_dtype, part, start, gain)
        else:
            s = picture_score(model, objective, autocast_dtype, autocast_cache, part, start, gain)
        (g,) = torch.autograd.grad(s.sum() * loss_scale, part)
        for k, (y0, x0) in enumerate(corners):
            grad[:, :, y0 : y0 + th, x0 : x0 + tw] = g[k * b : (k + 1) * b].float() * (area / loss_scale)
        score += s.detach().view(len(corners), b).sum(0) * area
    return grad, score


def roll(x: torch.Tensor, shifts: torch.Tensor, sign: int = 1) -> torch.Tensor:
    """Roll each image of (B, C, H, W) by its own (dy, dx), wrapping around.

    Written as two index gathers so the shifts are a tensor on ``x``'s device:
    a captured CUDA graph replays with new shifts copied into it.

    Args:
        x: (B, C, H, W).
        shifts: (B, 2) or (1, 2) integer (dy, dx) in pixels, on ``x``'s device.
        sign: -1 undoes the roll.

    Returns:
        (B, C, H, W), like ``torch.roll`` per image.
    """
    b, c, h, w = x.shape
    shifts = (sign * shifts).expand(b, 2)
    rows = (torch.arange(h, device=x.device) - shifts[:, :1]) % h
    cols = (torch.arange(w, device=x.device) - shifts[:, 1:]) % w
    x = x.gather(2, rows[:, None, :, None].expand(b, c, h, w))
    return x.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def jitter_shifts(generators: list[torch.Generator], steps: int, limit: int) -> torch.Tensor:
    """Random rolls for ``steps`` ascent steps: (steps, G, 2) int64 on the CPU, in [-limit, limit].

    Drawn step by step, generator by generator, from CPU generators, so a
    picture gets the same rolls on every device and whether or not it shares
    a batch (one generator per image).
    """
    if limit == 0 or steps == 0:
        return torch.zeros(steps, len(generators), 2, dtype=torch.int64)
    return torch.stack([
        torch.stack([torch.randint(-limit, limit + 1, (2,), generator=g) for g in generators]) for _ in range(steps)
    ])  # fmt: skip


# The temporal pull leaves the finest detail free: it pulls the difference to
# the anchor blurred by this sigma (pixels). Measured on three 30-frame clips
# at 256 px (docs/video.md, the temporal term): pulling the whole difference kept
# 0.77-0.86x the fine detail of frames dreamed alone, sigma 0.5 kept
# 0.89-1.1x for a little more flicker, sigma 1.0 kept more still but flickered
# past the target (warping error 0.36-0.40x of frames dreamed alone).
TEMPORAL_PULL_SIGMA = 0.5


def temporal_pull(x: torch.Tensor, anchor: torch.Tensor, weight: torch.Tensor, strength: float | torch.Tensor) -> torch.Tensor:
    """A proximal step towards ``anchor``: ``x - strength * weight * blur(x - anchor)``.

    The temporal term of video dreaming (Ruder et al. 2016): the picture is
    pulled towards the carried dream (the previous output warped onto this
    frame), where the consistency mask ``weight`` says that frame can be
    trusted. The difference is blurred (``TEMPORAL_PULL_SIGMA``) so the ascent
    may still sharpen the finest detail, which the carried dream loses to
    resampling every frame. Pure tensor arithmetic: no host sync, so it runs
    inside a captured CUDA graph.

    Args:
        x, anchor: (B, 3, H, W).
        weight: (B, 1, H, W) in [0, 1]; 0 leaves a pixel alone.
        strength: 0 (off) to 1 per step, a number or a 0-d tensor.

    Returns:
        (B, 3, H, W).
    """
    return x - strength * weight * gaussian_blur(x - anchor, TEMPORAL_PULL_SIGMA)


def ascent_update(
    model: DreamModel,
    x: torch.Tensor,
    objective: Objective,
    shifts: torch.Tensor,
    step: float | torch.Tensor,
    settings: DreamSettings,
    autocast_dtype: torch.dtype | None,
    anchor: tuple[torch.Tensor, torch.Tensor, float | torch.Tensor] | None = None,
    autocast_cache: bool = True,
    reference: torch.Tensor | None = None,
    compiled: CompiledSteps | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One normalised gradient-ascent step (B, 3, H, W) → (B, 3, H, W), and the score (B,).

    The gradient of the rolled picture is rolled back, smoothed and divided
    by its mean absolute value per image, so ``step`` is in pixel units
    whatever the layer's scale (the DeepDream notebook's rule). Every
    operation stays on the device with no host sync, so the whole step can be
    captured as one CUDA graph.

    Args:
        shifts: (B, 2) or (1, 2) int64 rolls on ``x``'s device.
        step: one size, or (B, 1, 1, 1) sizes on ``x``'s device.
        anchor: (anchor picture (B, 3, H, W), weight (B, 1, H, W), strength)
            for :func:`temporal_pull`, or None.
        reference: (B, 3, H, W) start pictures for ``enhance:`` objectives, rolled like ``x``.
        compiled: runs the score (forward and backward) and the update
            compiled (see :class:`CompiledSteps`); step sizes and strength
            must then be tensors, or each new number would compile anew.
    """
    grad, score = objective_gradient(
        model, roll(x, shifts), objective, tile=settings.tile, autocast_dtype=autocast_dtype,
        tile_batch=settings.tile_batch, autocast_cache=autocast_cache,
        reference=None if reference is None else roll(reference, shifts), gain=settings.gain, compiled=compiled,
    )  # fmt: skip
    if compiled is not None:
        return compiled.update(x, grad, shifts, step, settings.smooth, anchor), score
    return apply_gradient(x, grad, shifts, step, settings.smooth, anchor), score


def apply_gradient(
    x: torch.Tensor,
    grad: torch.Tensor,
    shifts: torch.Tensor,
    step: float | torch.Tensor,
    smooth: float,
    anchor: tuple[torch.Tensor, torch.Tensor, float | torch.Tensor] | None,
) -> torch.Tensor:
    """The update of :func:`ascent_update` once the rolled picture's gradient ``grad`` is known: (B, 3, H, W).

    Elementwise work and a blur, memory-bound: compiled, it fuses into a few loops.
    """
    grad = gaussian_blur(roll(grad, shifts, sign=-1), smooth)
    grad = grad / (grad.abs().mean(dim=(1, 2, 3), keepdim=True) + 1e-8)
    x = x + step * grad
    if anchor is not None:
        x = temporal_pull(x, *anchor)
    return x.clamp(0, 1)


def jitter_limit(settings: DreamSettings, height: int, width: int) -> int:
    """Largest roll in pixels: the jitter, plus a tile when tiled so tile borders move every step."""
    return settings.jitter + (settings.tile if max(height, width) > settings.tile else 0)


def ascent_step(
    model: DreamModel,
    x: torch.Tensor,
    objective: Objective,
    settings: DreamSettings,
    generators: list[torch.Generator],
    autocast_dtype: torch.dtype | None,
    step: float | Sequence[float] | None = None,
    compiled: CompiledSteps | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of :func:`ascent_update` with rolls drawn from ``generators`` (one, or one per image)."""
    shifts = jitter_shifts(generators, 1, jitter_limit(settings, *x.shape[-2:]))[0].to(x.device)
    step = _step_sizes(settings, step, x)
    if compiled is not None:
        step, _ = _as_tensors(step, None, x)
        return compiled.step(model, x, objective, shifts, step, settings, autocast_dtype)
    return ascent_update(model, x, objective, shifts, step, settings, autocast_dtype)


def _step_sizes(settings: DreamSettings, step: float | Sequence[float] | None, x: torch.Tensor) -> float | torch.Tensor:
    size = settings.step if step is None else step
    if isinstance(size, Sequence):
        return _on_device(torch.tensor(size, dtype=torch.float32).view(-1, 1, 1, 1), x.device)
    return size


def _as_tensors(step: float | torch.Tensor, anchor: tuple | None, x: torch.Tensor) -> tuple[torch.Tensor, tuple | None]:
    """Step sizes as (B, 1, 1, 1) and the anchor's strength as a 0-d tensor, on ``x``'s device.

    What captured and compiled steps take: a graph's inputs are filled on the
    device, not copied from the host, and a compiled step would compile anew
    for every new number.
    """
    b = x.shape[0]
    step = step.expand(b, 1, 1, 1) if torch.is_tensor(step) else torch.full((b, 1, 1, 1), step, device=x.device)
    return step, None if anchor is None else (*anchor[:2], torch.full((), anchor[2], device=x.device))


def _on_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor copied to ``device`` without waiting for the work queued there.

    A plain copy from pageable memory makes torch wait until the GPU's queue
    is empty, which would stall the host once per octave.
    """
    if device.type == "cuda":
        values = values.pin_memory()
    return values.to(device, non_blocking=True)


class CapturedStep:
    """One ascent step at a fixed shape, captured as a CUDA graph and replayed.

    A Python-launched step costs thousands of kernel launches, which on a
    fast GPU take longer than the kernels; a replay launches them all at once.
    Inputs that change between steps (picture, rolls, step sizes, anchor,
    reference) live in static buffers that :meth:`run` fills; the graph writes
    the new picture back into its input buffer, so replays follow each other
    with no copies.
    """

    def __init__(self, model, objective, settings, autocast_dtype, x, shifts, step, anchor, reference=None, compiled=None):
        self.objective = objective  # kept alive: the cache is keyed by its id
        self.x = x.clone()
        self.shifts = shifts.clone()
        self.step = step.clone()
        self.anchor = tuple(t.clone() for t in anchor) if anchor is not None else None
        self.reference = reference.clone() if reference is not None else None
        # With ``compiled`` the graph holds the compiled step's kernels (compiled in the first warm-up run).
        update = ascent_update if compiled is None else compiled.step

        def run_once():
            return update(
                model, self.x, objective, self.shifts, self.step, settings, autocast_dtype, self.anchor, False, self.reference
            )  # fmt: skip

        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(GRAPH_WARMUP_RUNS):
                run_once()
        torch.cuda.current_stream(x.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the video's reader threads pin host memory meanwhile,
        # which under the default "global" mode would void the capture.
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            new_x, self.score = run_once()
            self.x.copy_(new_x)

    def run(self, x, shifts, step, anchor, on_step, reference=None) -> torch.Tensor:
        """``len(shifts)`` steps from ``x`` with rolls ``shifts`` (steps, B, 2); returns a new tensor."""
        self.x.copy_(x)
        self.step.copy_(step)
        if anchor is not None:
            for buffer, value in zip(self.anchor, anchor):
                buffer.copy_(value)
        if reference is not None:
            self.reference.copy_(reference)
        for rolls in shifts:
            self.shifts.copy_(rolls)
            self.graph.replay()
            if on_step is not None:
                on_step(self.score.clone())
        return self.x.clone()


def _octave_ascent(
    model, x, objective, settings, generators, autocast_dtype, step, n_iter, anchor, on_step, graphs, compiled, reference=None
) -> torch.Tensor:
    """``n_iter`` ascent steps at one octave: replayed from a CUDA graph where ``graphs`` allows, compiled with ``compiled``, else eager."""
    shifts = _on_device(jitter_shifts(generators, n_iter, jitter_limit(settings, *x.shape[-2:])), x.device)
    step = _step_sizes(settings, step, x)
    update = ascent_update
    if (graphs is not None or compiled is not None) and n_iter > 0:
        step, anchor = _as_tensors(step, anchor, x)
    if compiled is not None:
        update = compiled.step
    if graphs is not None and n_iter > 0:
        captured = graphs.get(model, objective, settings, autocast_dtype, x, shifts[0], step, anchor, reference, compiled)
        if captured is not None:
            return captured.run(x, shifts, step, anchor, on_step, reference)
    for rolls in shifts:
        x, score = update(model, x, objective, rolls, step, settings, autocast_dtype, anchor, reference=reference)
        if on_step is not None:
            on_step(score)
    return x


# L-BFGS models the one function it minimises; a new random view (roll,
# rescaling, rotation) or a temporal pull makes another function, so where
# there are any it starts afresh after every this many iterations.
LBFGS_ROUND = 10
# Curvature pairs L-BFGS keeps: torch's default of 100 would hold 200 copies of the parameters.
LBFGS_HISTORY = 10


def _octave_optimize(
    model, x, objective, settings, generators, autocast_dtype, step, n_iter, anchor, on_step, reference
) -> torch.Tensor:
    """``n_iter`` Adam or L-BFGS iterations at one octave, on the picture's parameters (pixels or spectrum).

    Each evaluation decodes the parameters (:func:`param.decode`), rolls the
    picture and, with ``scale_jitter`` or ``rotate_jitter``, rotates and
    rescales it (the reference too), takes the objective's gradient there
    with :func:`objective_gradient` (tiles and precision as in the normalised
    step) and carries it back to the parameters through autograd. Adam draws a
    new view every iteration; L-BFGS keeps one view for a round of
    ``LBFGS_ROUND`` iterations. After every Adam iteration and every L-BFGS
    round the picture is projected back: pulled towards ``anchor`` where there
    is one, and encoded afresh, which clamps pixels to [0, 1] and holds a
    spectrum's pixels within half an 8-bit level of black and white
    (``param.EDGE``), where the sigmoid has not gone flat.

    Every image has its own parameters and Adam its own learning rate (its
    ``step``), so under Adam a batch dreams as its images alone; L-BFGS's line
    search and history are shared by the batch.
    """
    b, _, h, w = x.shape
    lbfgs = settings.optimizer == "lbfgs"
    limit = jitter_limit(settings, h, w)
    shifts = _on_device(jitter_shifts(generators, n_iter, limit), x.device)
    scaled = settings.scale_jitter > 0 or settings.rotate_jitter > 0
    views = _on_device(param_mod.random_views(generators, n_iter, settings.scale_jitter, settings.rotate_jitter), x.device)
    restarts = lbfgs and (limit > 0 or scaled or anchor is not None)
    round_length = LBFGS_ROUND if restarts else max(n_iter, 1)
    rates = settings.step if step is None else step
    rates = list(rates) if isinstance(rates, Sequence) else [rates] * b
    params = [param_mod.encode(x[k : k + 1], settings.param).requires_grad_(True) for k in range(b)]

    def picture() -> torch.Tensor:
        return param_mod.decode(torch.cat(params), settings.param, (h, w))

    def seen(pictures: torch.Tensor, i: int) -> torch.Tensor:
        pictures = roll(pictures, shifts[i])
        return param_mod.rotate_scale(pictures, views[i]) if scaled else pictures

    def evaluate(i: int) -> torch.Tensor:
        """The (B,) score in view ``i``; minus its gradient lands in the parameters' ``grad`` (optimisers minimise)."""
        for p in params:
            p.grad = None
        view = seen(picture(), i)
        grad, score = objective_gradient(
            model, view.detach(), objective, tile=settings.tile, autocast_dtype=autocast_dtype,
            tile_batch=settings.tile_batch, reference=None if reference is None else seen(reference, i), gain=settings.gain,
        )  # fmt: skip
        view.backward(-grad)
        return score

    for i in range(n_iter):
        if i % round_length == 0:
            first = i
            optimizer = (
                torch.optim.LBFGS(params, lr=1, max_iter=1, history_size=LBFGS_HISTORY, line_search_fn="strong_wolfe",
                                  tolerance_grad=0, tolerance_change=0) if lbfgs
                else torch.optim.Adam([{"params": [p], "lr": rate} for p, rate in zip(params, rates)])
            )  # fmt: skip
        if lbfgs:
            scores = []

            def closure() -> torch.Tensor:
                scores.append(evaluate(first))
                return -scores[-1].sum()

            optimizer.step(closure)
            score = scores[0]  # at the iteration's start, as the other optimizers report it
        else:
            score = evaluate(i)
            optimizer.step()
        if not lbfgs or (i + 1) % round_length == 0 or i + 1 == n_iter:
            with torch.no_grad():
                projected = picture().clamp(0, 1)
                if anchor is not None:
                    projected = temporal_pull(projected, *anchor)
                for k, p in enumerate(params):
                    p.copy_(param_mod.encode(projected[k : k + 1], settings.param))
        if on_step is not None:
            on_step(score)
    with torch.no_grad():
        return picture().clamp(0, 1)


class StepGraphs:
    """The captured ascent steps of one dreamer, built on first use of a shape and kept.

    At most ``MAX_CAPTURED_STEPS`` are kept, the least recently used dropped
    first: each holds its shape's activations in GPU memory. A step that cannot
    be captured (a model that asks the host for a value in its forward pass)
    is remembered as such and runs eagerly.
    """

    def __init__(self):
        self._steps: collections.OrderedDict[tuple, CapturedStep | None] = collections.OrderedDict()

    def get(
        self, model, objective, settings, autocast_dtype, x, shifts, step, anchor, reference=None, compiled=None
    ) -> CapturedStep | None:
        """The captured step for this objective, shape and settings (compiled with ``compiled``); None where capture failed."""
        key = (id(objective), tuple(x.shape), settings.tile, settings.tile_batch, settings.smooth, settings.gain, shifts.shape[0],
               anchor is not None, reference is not None)  # fmt: skip
        if key not in self._steps:
            try:
                self._steps[key] = CapturedStep(model, objective, settings, autocast_dtype, x, shifts, step, anchor, reference, compiled)
            except RuntimeError:
                self._steps[key] = None
            if len(self._steps) > MAX_CAPTURED_STEPS:
                self._steps.popitem(last=False)
        self._steps.move_to_end(key)
        return self._steps[key]


# Where compiled kernels are kept between runs: this variable's folder, else
# $XDG_CACHE_HOME/dreamreel, else ~/.cache/dreamreel.
KERNEL_CACHE_ENV = "DREAMREEL_CACHE"


def kernel_cache_folder() -> Path:
    """The folder compiled kernels are kept in (``DREAMREEL_CACHE``, else the user's cache folder)."""
    if os.environ.get(KERNEL_CACHE_ENV):
        return Path(os.environ[KERNEL_CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "dreamreel"


def use_kernel_cache() -> Path:
    """Keep inductor's compiled kernels, and CUDA's JIT-compiled ones, in :func:`kernel_cache_folder`; returns it.

    Sets ``TORCHINDUCTOR_CACHE_DIR`` (inductor's graphs, its C++ and Triton
    kernels) and ``CUDA_CACHE_PATH`` (the driver's cache of kernels compiled
    from PTX, cuDNN's runtime-compiled ones among them) where the user has not
    set them. Inductor reads its variable when it first compiles and CUDA
    when it starts, so this is called before either.
    """
    folder = kernel_cache_folder()
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder / "inductor"))
    os.environ.setdefault("CUDA_CACHE_PATH", str(folder / "cuda"))
    return folder


def _files_in(folder: str | Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def _own_code(function: Callable) -> Callable:
    """``function`` as a new function with a code object of its own.

    torch.compile keeps compiled versions per code object and, past
    ``recompile_limit`` (8) of them, runs the code eagerly; a job meets more
    shapes than that (octaves x tiles x lane batch sizes), so each compiled
    shape gets a code object of its own.
    """
    code = function.__code__.replace()
    return types.FunctionType(code, function.__globals__, function.__name__, function.__defaults__, function.__closure__)


class CompiledSteps:
    """The ascent steps of one dreamer compiled by ``torch.compile`` (inductor), one set of kernels per shape.

    A step is two compiled functions: :func:`picture_score` of a tile, whose
    backward pass AOTAutograd compiles with it, and :func:`apply_gradient`,
    whose elementwise work fuses into a few loops. Each shape is compiled on
    its first step (static shapes: the kernels are specialised to it, and a
    CUDA graph can hold them); inductor keeps the kernels in
    :func:`kernel_cache_folder`, so later runs load them rather than compile.
    A step shape's first step prints one line with the time it took, unless
    :meth:`quietly` collects it (a warm-up prints one line for all octaves).

    Args:
        required: ``--compile on``: a step that fails to compile is an error
            (ValueError); otherwise (``auto``) it warns once and that shape
            runs eagerly.
    """

    def __init__(self, required: bool = False):
        self.required = required
        self.cache = use_kernel_cache()
        self._functions: dict[tuple, Callable] = {}
        self._steps: dict[tuple, bool] = {}  # step shape -> compiled (False: compiling it failed, eager)
        self._objectives: dict[int, Objective] = {}  # kept alive: keys hold their ids
        self._collect: list[float] | None = None

    def step(self, model, x, objective, shifts, step, settings, autocast_dtype, anchor=None, autocast_cache=True, reference=None):
        """:func:`ascent_update` with its parts compiled; ``step`` and the anchor's strength as tensors (see :func:`_as_tensors`)."""
        key = (id(objective), autocast_dtype, tuple(x.shape), settings.tile, settings.tile_batch, settings.smooth, settings.gain,
               anchor is not None, reference is not None)  # fmt: skip
        update = functools.partial(ascent_update, model, x, objective, shifts, step, settings, autocast_dtype, anchor, autocast_cache, reference)
        if self._steps.get(key) is not None:
            return update(compiled=self if self._steps[key] else None)
        self._objectives[id(objective)] = objective
        files, start = _files_in(self.cache), time.perf_counter()
        try:
            result = update(compiled=self)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            if self.required:
                raise ValueError(f"--compile on: torch.compile failed for a {_size(x)} step ({reason}); use --compile off") from exc
            warnings.warn(f"compiling the ascent step failed ({reason}); dreaming uncompiled", stacklevel=2)
            self._steps[key] = False
            return update()
        self._steps[key] = True
        seconds = time.perf_counter() - start
        if self._collect is not None:
            self._collect.append(seconds)
        else:
            self.report(_size(x), seconds, _files_in(self.cache) > files)
        return result

    def report(self, what: str, seconds: float, compiled_anew: bool) -> None:
        """The one line a compile prints on stderr: compiled now, or loaded from the cache of an earlier run."""
        if compiled_anew:
            line = f"compiling kernels for {what} (first run only; kept in {self.cache}): {seconds:.1f} s"
        else:
            line = f"kernels for {what} loaded from {self.cache}: {seconds:.1f} s"
        print(f"dreamreel: {line}", file=sys.stderr, flush=True)

    @contextmanager
    def quietly(self, what: str) -> Iterator[None]:
        """Steps compiled inside print nothing; at the end, one line for them all (if any), naming ``what``."""
        self._collect, files = [], _files_in(self.cache)
        try:
            yield
        finally:
            seconds, self._collect = self._collect, None
        if seconds:
            self.report(what, sum(seconds), _files_in(self.cache) > files)

    def score(self, model, objective, autocast_dtype, part: torch.Tensor, reference=None, gain: float = 1.0) -> torch.Tensor:
        """:func:`picture_score` of ``part`` (and its ``reference``), compiled for its shape and layout."""
        key = ("score", id(objective), autocast_dtype, tuple(part.shape), part.stride(), part.device, reference is not None, gain)
        if key not in self._functions:
            # autocast's cache is off: in a compiled graph the casts are part of the graph
            score = functools.partial(_own_code(picture_score), model, objective, autocast_dtype, False, gain=gain)
            self._functions[key] = torch.compile(score, dynamic=False)
        return self._functions[key](part, reference)

    def update(self, x, grad, shifts, step, smooth, anchor) -> torch.Tensor:
        """:func:`apply_gradient`, compiled for the shapes and the blur's sigma."""
        key = ("update", tuple(x.shape), x.device, tuple(shifts.shape), tuple(step.shape), smooth, anchor is not None)
        if key not in self._functions:
            self._functions[key] = torch.compile(functools.partial(_own_code(apply_gradient), smooth=smooth), dynamic=False)
        return self._functions[key](x, grad, shifts, step, anchor=anchor)


def _size(x: torch.Tensor) -> str:
    """``WxH`` of (B, C, H, W) pictures, with the batch when it is more than one."""
    return f"{x.shape[-1]}x{x.shape[-2]}" + (f" x {x.shape[0]}" if x.shape[0] > 1 else "")


def dream(
    model: DreamModel,
    images: torch.Tensor,
    objective: Objective,
    settings: DreamSettings,
    *,
    autocast_dtype: torch.dtype | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    iterations: int | None = None,
    step: float | Sequence[float] | None = None,
    anchor: tuple[torch.Tensor, torch.Tensor, float] | None = None,
    on_step: Callable[[torch.Tensor], None] | None = None,
    graphs: StepGraphs | None = None,
    compiled: CompiledSteps | None = None,
) -> torch.Tensor:
    """Dream a batch of pictures.

    ``settings.optimizer`` chooses how each octave climbs: ``step``, the
    normalised gradient step of :func:`ascent_update` (captured as a CUDA
    graph on a GPU), or Adam or L-BFGS on the picture's parameters
    (:func:`_octave_optimize`, eager), which may also be a spectrum
    (``settings.param``, :mod:`param`).

    Args:
        model: the network, on the pictures' device.
        images: (B, 3, H, W) RGB in [0, 1].
        objective: what to maximise.
        settings: octaves, iterations, step, jitter, smoothing, tile, seed.
        autocast_dtype: bf16/fp16 mixed precision, or None for fp32.
        generator: random source for jitter, one for the batch or one per
            image; defaults to one seeded with ``settings.seed`` (CPU
            generators, so results do not depend on the device).
        iterations: overrides ``settings.iterations`` (video frames after the first).
        step: overrides ``settings.step``, for the batch or per image
            (schedules and looks in zoom animations).
        anchor: (picture (B, 3, H, W), weight (B, 1, H, W) in [0, 1],
            strength): every step is pulled towards the picture where the
            weight allows (:func:`temporal_pull`), at every octave resized.
        on_step: called after every ascent step with the (B,) scores.
        graphs: CUDA-graph cache; with one, steps on a CUDA device are
            captured once per shape and replayed.
        compiled: compiled steps; with them every step runs compiled
            kernels (inside the captured graph where there is one).

    Returns:
        (B, 3, H, W) dreamed pictures in [0, 1], same size, device and dtype.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    if generator is None:
        generator = torch.Generator().manual_seed(settings.seed)
    generators = list(generator) if isinstance(generator, (list, tuple)) else [generator]
    if len(generators) not in (1, images.shape[0]):
        raise ValueError(f"got {len(generators)} generators for a batch of {images.shape[0]}")
    if images.device.type != "cuda":
        graphs = None
    if settings.tile is None:
        settings = replace(settings, tile=CPU_TILE)
    n_iter = settings.iterations if iterations is None else iterations
    base = images.float()
    h, w = base.shape[-2:]
    detail = None
    for size in octave_sizes(h, w, settings.octaves, settings.octave_scale):
        # 1. the input at this octave, plus the detail dreamed so far
        octave_base = resize(base, size)
        detail = torch.zeros_like(octave_base) if detail is None else resize(detail, size)
        x = (octave_base + detail).clamp(0, 1)
        octave_anchor = None if anchor is None else (resize(anchor[0].float(), size), resize(anchor[1].float(), size), anchor[2])
        # 2. gradient ascent at this octave (enhance: objectives aim at this octave's input)
        reference = octave_base if objective.targets else None
        if settings.optimizer == "step":
            x = _octave_ascent(
                model, x, objective, settings, generators, autocast_dtype, step, n_iter, octave_anchor, on_step, graphs, compiled,
                reference,
            )  # fmt: skip
        else:
            x = _octave_optimize(model, x, objective, settings, generators, autocast_dtype, step, n_iter, octave_anchor, on_step, reference)
        # 3. keep only what the dream added, to carry it up
        detail = x - octave_base
    return (base + detail).clamp(0, 1).to(images.dtype)


# --- a loaded dreamer ----------------------------------------------------------


@dataclass(frozen=True)
class ComputeSettings:
    """Which network, where and in what precision.

    Attributes:
        model: zoo name (``dreamreel models``) or a TorchScript file.
        weights: state-dict file replacing the model's default weights.
        labels: class names file, one per line.
        device: ``auto`` (cuda, then mps, then cpu), ``cpu``, ``cuda``, ``cuda:N``, ``mps``.
        precision: ``auto`` (bf16 where faster), ``bf16``, ``fp16`` or ``fp32``.
        guide: image whose activations ``guide:LAYER`` objectives match.
        compile: ``auto``, ``on`` or ``off``: the ascent step compiled by
            ``torch.compile`` (:class:`CompiledSteps`); ``auto`` compiles
            where that is faster (:func:`~dreamreel.pipeline.models.pick_compile`).
            The same dream up to float rounding either way.
    """

    model: str = "efficientnet-lite0"
    weights: str | None = None
    labels: str | None = None
    device: str = "auto"
    precision: str = "auto"
    guide: str | None = None
    compile: str = "auto"

    def input_files(self) -> dict[str, str]:
        """The files these settings read, by flag (``--model`` only for a model file).

        An output must not be one of them, and a render job stamps them
        (:func:`~dreamreel.pipeline.render.job_record`).
        """
        files = {"--model": self.model if Path(self.model).is_file() else None, "--weights": self.weights,
                 "--labels": self.labels, "--guide": self.guide}  # fmt: skip
        return {flag: path for flag, path in files.items() if path is not None}


class Dreamer:
    """A model loaded once, with its objective, ready to dream batches.

    Example:
        >>> dreamer = Dreamer(DreamSettings(objective="mid"), ComputeSettings(device="cpu"))
        >>> out = dreamer(torch.rand(2, 3, 64, 64))  # doctest: +SKIP
    """

    def __init__(self, settings: DreamSettings, compute: ComputeSettings):
        from . import models, objectives

        self.settings = settings
        self.device = models.pick_device(compute.device)
        compiling = models.pick_compile(compute.compile, self.device)
        if compiling:
            use_kernel_cache()  # before CUDA's first context, which reads where its JIT cache is
        self.autocast_dtype = models.pick_precision(compute.precision, self.device)
        model = models.load_model(compute.model, weights=compute.weights, labels=compute.labels)
        self.model = models.prepare(model, self.device)
        self._guide_acts = self._guide_activations(compute.guide) if compute.guide else None
        self.objective = objectives.parse_objective(settings.objective, self.model, guide_acts=self._guide_acts)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.graphs = StepGraphs() if self.device.type == "cuda" else None
        self.compiled = CompiledSteps(required=compute.compile == "on") if compiling else None
        self.host_buffers = HostBuffers(self.device) if self.device.type == "cuda" else None
        if self.device.type == "cuda":
            torch.set_num_threads(min(torch.get_num_threads(), GPU_HOST_TORCH_THREADS))
        self._step_bytes_per_pixel: float | None = None
        self._gpu_tiles: dict[tuple[int, int, int, int], int] = {}

    def _guide_activations(self, path: str) -> Callable[[str], torch.Tensor]:
        from .files import load_image

        guide = to_tensor(load_image(path), self.device)
        # Guides are matched position by position; a guide much larger than
        # the dream only costs memory, so cap it at the dream tile size.
        side, cap = max(guide.shape[-2:]), self.settings.tile or CPU_TILE
        if side > cap:
            h, w = guide.shape[-2:]
            guide = resize(guide, (round(h * cap / side), round(w * cap / side)))

        def acts(name: str) -> torch.Tensor:
            with torch.no_grad():
                return self.model(guide, [name])[name].float()

        return acts

    def parse_objective(self, objective: str) -> Objective:
        """Another objective expression on this dreamer's model (and guide)."""
        from . import objectives

        return objectives.parse_objective(objective, self.model, guide_acts=self._guide_acts)

    def __call__(
        self,
        images: torch.Tensor,
        *,
        iterations: int | None = None,
        step: float | Sequence[float] | None = None,
        on_step: Callable[[torch.Tensor], None] | None = None,
        generators: list[torch.Generator] | None = None,
        settings: DreamSettings | None = None,
        objective: Objective | None = None,
        anchor: tuple[torch.Tensor, torch.Tensor, float] | None = None,
    ) -> torch.Tensor:
        """Dream (B, 3, H, W) pictures in [0, 1] on the dreamer's device.

        Without ``generators``, successive calls continue one random stream
        seeded by ``settings.seed``; videos and animations pass one generator
        per image, seeded per frame, so a resumed run repeats the same frames.
        ``settings`` and ``objective`` replace the dreamer's own for this call
        (zoom variations of several presets). ``anchor`` is the temporal
        term of :func:`dream`. On CUDA each step shape is captured as a CUDA
        graph on first use and replayed after.
        """
        settings = settings or self.settings
        images = images.to(self.device, non_blocking=True)
        if settings.tile is None and self.device.type == "cuda":
            settings = replace(settings, tile=self.gpu_tile(images.shape[0], *images.shape[-2:], settings))
        return dream(
            self.model,
            images,
            objective or self.objective,
            settings,
            autocast_dtype=self.autocast_dtype,
            generator=generators or self.generator,
            iterations=iterations,
            step=step,
            anchor=anchor,
            on_step=on_step,
            graphs=self.graphs,
            compiled=self.compiled,
        )

    def warm_up(self, batch: int, height: int, width: int, *, anchored: bool = False) -> None:
        """Capture and compile the ascent steps of (batch, 3, height, width) pictures now, so the first real frame is quick.

        With captured or compiled steps (CUDA, ``--compile``) it dreams a flat
        grey batch one step an octave (with a temporal anchor if ``anchored``,
        the video's step), which chooses the tile, compiles every octave's
        step (one line on stderr with the time it took) and captures its
        graph; otherwise it does nothing. The dreamer's own random stream is
        left as it was.
        """
        if self.graphs is None and self.compiled is None:
            return
        grey = torch.full((batch, 3, height, width), 0.5, device=self.device)
        anchor = (grey, torch.zeros_like(grey[:, :1]), 0.5) if anchored else None
        compiling = self.compiled.quietly(f"{width}x{height}" + (f" x {batch}" if batch > 1 else "")) if self.compiled else nullcontext()
        with compiling:
            self(grey, iterations=1, generators=[torch.Generator() for _ in range(batch)], anchor=anchor)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)

    def gpu_tile(self, batch: int, height: int, width: int, settings: DreamSettings) -> int:
        """Tile side for ``tile = None`` on CUDA: the whole picture if one ascent step fits.

        The memory of a step is measured once (one eager step on a 256x256
        picture) as bytes per pixel and scaled to ``batch`` x ``height`` x
        ``width``; a tile may take ``GPU_TILE_MEMORY_SHARE`` of the free memory.
        The choice is kept per shape: asking the GPU for its free memory on
        every frame would wait for its queue.
        """
        key = (batch, height, width, settings.tile_batch)
        if key in self._gpu_tiles:
            return self._gpu_tiles[key]
        if self._step_bytes_per_pixel is None:
            probe = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)).to(self.device)
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            probe_settings = replace(settings, tile=256, tile_batch=1)
            ascent_step(self.model, probe, self.objective, probe_settings, [torch.Generator()], self.autocast_dtype)
            self._step_bytes_per_pixel = (torch.cuda.max_memory_allocated(self.device) - before) / 256**2
        free, _ = torch.cuda.mem_get_info(self.device)
        pixels = GPU_TILE_MEMORY_SHARE * free / self._step_bytes_per_pixel / (batch * settings.tile_batch)
        side = max(height, width) if height * width <= pixels else int(math.sqrt(pixels)) // 32 * 32
        self._gpu_tiles[key] = max(64, min(side, 8192))
        return self._gpu_tiles[key]


def to_tensor(rgb, device: torch.device | str = "cpu", *, buffers: HostBuffers | None = None) -> torch.Tensor:
    """(H, W, 3) uint8 array, a list of them, or a (B, H, W, 3) uint8 tensor → (B, 3, H, W) float32 in [0, 1] on ``device``.

    To a GPU the 8-bit pixels travel through page-locked memory without
    waiting for the work already queued there, and are converted on arrival.
    With ``buffers`` the staging buffer comes from there and goes back after
    the copy; a tensor ``rgb`` taken from ``buffers`` goes back too.
    """
    import numpy as np

    cuda = torch.device(device).type == "cuda"
    if torch.is_tensor(rgb):
        host = rgb
    else:
        array = np.stack(rgb) if isinstance(rgb, (list, tuple)) else rgb[None]
        host = (buffers if buffers is not None else HostBuffers(device)).copy_of(array) if cuda else torch.from_numpy(array)
    images = host.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    if buffers is not None and cuda:
        buffers.give(host)
    return images


class HostBuffers:
    """Page-locked host buffers for copies to and from a GPU, each reused once its own copy has finished.

    The video's reader threads fill them with numpy copies (:meth:`copy_of`)
    and its loop gives them back once their copies are queued, so the
    buffers in use stay bounded by the frames in flight (a cuda-marked test
    runs 60 frames up and down through at most 16 buffers). Thread-safe.

    Args:
        device: the GPU the copies go to and come from; its current stream
            orders them.
        keep: buffers held at most.
    """

    def __init__(self, device: torch.device | str = "cuda", keep: int = 64):
        self.device = torch.device(device)
        self._lock = threading.Lock()
        self._free: collections.deque = collections.deque(maxlen=keep)  # (buffer, event after its last copy)

    def take(self, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """A page-locked tensor of ``shape`` and ``dtype`` that no copy uses any more; its contents are undefined."""
        with self._lock:
            for k, (buffer, done) in enumerate(self._free):
                if buffer.shape == tuple(shape) and buffer.dtype == dtype and done.query():
                    del self._free[k]
                    return buffer
        return torch.empty(tuple(shape), dtype=dtype, pin_memory=True)

    def copy_of(self, array) -> torch.Tensor:
        """A numpy array copied into a buffer by numpy: reader threads call this, and a torch copy would start a team of OpenMP threads in each."""
        import numpy as np

        host = self.take(array.shape, torch.from_numpy(np.empty(0, array.dtype)).dtype)
        host.numpy()[...] = array
        return host

    def __len__(self) -> int:
        """Buffers held for reuse."""
        return len(self._free)

    def give(self, buffer: torch.Tensor) -> None:
        """Take ``buffer`` back, to be reused once the copies queued so far on the current CUDA stream are done."""
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        with self._lock:
            self._free.append((buffer, done))


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) rounded to the 8-bit values a saved frame holds, on the same device.

    Equal to ``to_tensor(to_uint8(images))`` without the round trip through the host.
    """
    return images.detach().clamp(0, 1).mul(255).round().div(255)


def to_uint8(images: torch.Tensor):
    """(B, 3, H, W) in [0, 1] → (B, H, W, 3) uint8 numpy array, rounded."""
    return Download(images).wait()


class Download:
    """(B, 3, H, W) pictures in [0, 1] on their way to the host as (B, H, W, 3) uint8, rounded.

    On a GPU the copy is queued behind the work that makes the pictures, so the
    caller can queue the next frame's work before it waits for this one. With
    ``buffers`` the host buffer comes from there and goes back once
    :meth:`wait` has copied the pictures out, so a loop that downloads every
    frame keeps a few buffers rather than leaving one behind per frame.

    Every picture that reaches the host comes through here, so here a dream
    gone non-finite is stopped: a score that overflows float32 (a huge
    objective weight, fp16 activations) makes NaN gradients and NaN pixels,
    which would be saved as black. The check travels with the copy: on a GPU
    it costs no wait of its own.

    Example:
        >>> pending = Download(dreamed)  # doctest: +SKIP
        >>> ...                          # queue more GPU work
        >>> rgb = pending.wait()         # (B, H, W, 3) numpy uint8
    """

    def __init__(self, images: torch.Tensor, buffers: HostBuffers | None = None):
        pixels = images.detach().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1)
        finite = torch.isfinite(images.detach()).all()
        self._event = None
        self._buffers = buffers
        if pixels.device.type == "cuda":
            self._host = (buffers if buffers is not None else HostBuffers(pixels.device)).take(pixels.shape, torch.uint8)
            self._host.copy_(pixels, non_blocking=True)
            self._finite = torch.empty((), dtype=torch.bool, pin_memory=True).copy_(finite, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record(torch.cuda.current_stream(pixels.device))
        else:
            self._host, self._finite = pixels.cpu(), finite.cpu()

    def wait(self):
        """The pictures as a (B, H, W, 3) uint8 numpy array, once the copy has landed.

        Raises:
            ValueError: a picture holds inf or NaN (the dream's score overflowed).
        """
        if self._event is not None:
            self._event.synchronize()
        if not self._finite:
            raise ValueError(
                "the dream's score overflowed (inf or NaN), which would save a black picture: "
                "lower the objective's weights, or dream in --precision fp32"
            )
        if self._event is None:
            return self._host.numpy()
        if self._buffers is None:
            return self._host.numpy()
        rgb = self._host.numpy().copy()  # the buffer goes back for the next download
        self._buffers.give(self._host)
        return rgb


# The seeded start picture (noise_image): blobs of colour from random grids of
# this many cells across the longer side, each finer grid at half the weight
# of the one before, spread over this range around mid-grey; then grain
# (uniform noise blurred by 1 px) of this amplitude.
NOISE_COLOUR_CELLS = (6, 24)
NOISE_COLOUR_RANGE = 0.8
NOISE_GRAIN = 0.3


def noise_image(width: int, height: int, seed: int) -> torch.Tensor:
    """A seeded start picture for dreaming from nothing: (1, 3, H, W) in [0, 1], mean about 0.5.

    Soft blobs of saturated colour with grain on top. Flat grey gives the
    network nothing to amplify and white noise only pixel-level patterns;
    grey with grain (the earlier start) dreams a grey-pastel tunnel (mean HSV
    saturation 51-55 of 255 over the README's first zoom), because a zoom's
    colour coherence then holds every frame to frame 0's dull colours. Each
    channel here is a random grid of :data:`NOISE_COLOUR_CELLS` cells,
    upsampled bicubically, so the blobs are of every hue and as large at any
    size; the grain gives the network detail to start from.
    """
    g = torch.Generator().manual_seed(seed)
    side = max(width, height)
    colour = torch.zeros(1, 3, height, width)
    for k, cells in enumerate(NOISE_COLOUR_CELLS):
        grid = (max(2, round(cells * height / side)), max(2, round(cells * width / side)))
        coarse = torch.rand(1, 3, *grid, generator=g)
        colour += F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False) / 2**k
    colour -= colour.mean(dim=(2, 3), keepdim=True)
    colour /= colour.abs().amax(dim=(2, 3), keepdim=True).clamp(min=1e-6)
    grain = gaussian_blur(torch.rand(1, 3, height, width, generator=g) - 0.5, 1.0)
    return (0.5 + NOISE_COLOUR_RANGE / 2 * colour + NOISE_GRAIN * grain).clamp(0, 1)


def frame_generator(seed: int, frame: int) -> torch.Generator:
    """The random source of one frame: depends only on the seed and frame index.

    The mix is taken modulo 2**64, the range ``manual_seed`` takes, which
    torch itself applies to negative seeds: every seed works, and seeds
    below about 1.8e13 keep the generators they always had.
    """
    return torch.Generator().manual_seed((seed * 1_000_003 + frame) % 2**64)
