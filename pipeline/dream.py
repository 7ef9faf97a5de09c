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

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from .models import DreamModel
from .objectives import Objective

# Octaves stop before the picture gets smaller than this: below ~32 px the
# low layers of ImageNet networks see only a few positions.
MIN_OCTAVE_SIDE = 32


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
        tile: largest side in pixels processed at once; larger pictures are tiled.
        tile_batch: tiles of one picture that go through the network together:
            1 keeps memory bounded by one tile; more fills a GPU on large sizes.
        seed: seeds the jitter and tile offsets (and noise inputs).
    """

    objective: str = "mid"
    octaves: int = 4
    octave_scale: float = 1.4
    iterations: int = 10
    step: float = 0.01
    jitter: int = 32
    smooth: float = 0.5
    # 512: measured on the development CPU at 1280x720 (3 octaves x 5 steps),
    # 512 px tiles dream a frame in 3.4 s fp32 / 2.9 s bf16 at 1.1-1.2 GB
    # peak; one 1280 px tile takes 4.2 s / 2.7 s at 1.4-1.9 GB.
    tile: int = 512
    tile_batch: int = 1
    seed: int = 0

    def __post_init__(self):
        check_settings(self)


def check_settings(s: DreamSettings) -> None:
    """Raise ValueError naming the flag for any out-of-range dream setting."""
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
    }
    for name, (value, lo, hi) in rules.items():
        flag = "--" + name.replace("_", "-")
        expected = int if isinstance(lo, int) and isinstance(hi, int) else (int, float)
        if isinstance(value, bool) or not isinstance(value, expected):
            raise TypeError(f"{flag}: expected a number, got {value!r}")
        if not lo <= value <= hi:
            raise ValueError(f"{flag} {value}: expected a value from {lo} to {hi}")
    if not isinstance(s.objective, str):
        raise TypeError(f"--objective: expected a string, got {s.objective!r}")


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

    Written as a weighted sum of shifted views rather than a depthwise
    ``conv2d``: on the 2-core development CPU a (1, 3, 720, 1280) blur at
    sigma 0.5 took 100 ms as a grouped convolution and 12 ms this way, a
    third of an ascent step saved.

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
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).tolist()
    h, w = x.shape[-2:]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = sum(weight * x[..., :, i : i + w] for i, weight in enumerate(k))
    return sum(weight * x[..., i : i + h, :] for i, weight in enumerate(k))


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


def objective_gradient(
    model: DreamModel,
    x: torch.Tensor,
    objective: Objective,
    *,
    tile: int,
    autocast_dtype: torch.dtype | None,
    tile_batch: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the objective with respect to the picture, tile by tile.

    A tile's score is weighted by its share of the picture's area, so a tiled
    gradient matches the untiled one away from tile borders; the caller rolls
    the picture before each call so those borders move every step. Up to
    ``tile_batch`` tiles of one shape go through the network together (faster
    on a GPU; memory grows with it).

    Args:
        x: (B, 3, H, W) pictures in [0, 1].
        tile: largest tile side in pixels.
        autocast_dtype: bf16/fp16 autocast, or None for fp32.
        tile_batch: tiles per forward pass.

    Returns:
        (gradient (B, 3, H, W) float32, score (B,) float32 detached).
    """
    h, w = x.shape[-2:]
    b = x.shape[0]
    grad = torch.zeros_like(x)
    score = torch.zeros(b, device=x.device)
    amp = torch.autocast(x.device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    for part, corners in tile_batches(x.detach(), tile, tile_batch):
        th, tw = part.shape[-2:]
        part = part.contiguous(memory_format=model.input_format).requires_grad_(True)
        with amp:
            acts = model(part, objective.layers)
        s = objective(acts) * (th * tw / (h * w))
        (g,) = torch.autograd.grad(s.sum(), part)
        for k, (y0, x0) in enumerate(corners):
            grad[:, :, y0 : y0 + th, x0 : x0 + tw] = g[k * b : (k + 1) * b].float()
        score += s.detach().float().view(len(corners), b).sum(0)
    return grad, score


def _roll(x: torch.Tensor, shifts: list[tuple[int, int]], sign: int = 1) -> torch.Tensor:
    """Roll each image of (B, C, H, W) by its own (dy, dx), or all by one shift."""
    if len(shifts) == 1:
        dy, dx = shifts[0]
        return torch.roll(x, shifts=(sign * dy, sign * dx), dims=(2, 3))
    return torch.stack([torch.roll(img, shifts=(sign * dy, sign * dx), dims=(1, 2)) for img, (dy, dx) in zip(x, shifts)])


def ascent_step(
    model: DreamModel,
    x: torch.Tensor,
    objective: Objective,
    settings: DreamSettings,
    generators: list[torch.Generator],
    autocast_dtype: torch.dtype | None,
    step: float | Sequence[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One normalised gradient-ascent step (B, 3, H, W) → (B, 3, H, W), and the score (B,).

    The gradient is divided by its mean absolute value per image, so ``step``
    is in pixel units whatever the layer's scale (the DeepDream notebook's rule).
    ``generators`` holds one random source for the whole batch, or one per image;
    ``step`` is one size for the batch or one per image.
    """
    h, w = x.shape[-2:]
    # Random rolls hide the network's stride grid and move tile borders; with
    # one generator per image each image is dreamed exactly as it would be alone.
    limit = settings.jitter + (settings.tile if max(h, w) > settings.tile else 0)
    shifts = [tuple(torch.randint(-limit, limit + 1, (2,), generator=g).tolist()) if limit else (0, 0) for g in generators]
    rolled = _roll(x, shifts)
    grad, score = objective_gradient(
        model, rolled, objective, tile=settings.tile, autocast_dtype=autocast_dtype, tile_batch=settings.tile_batch
    )
    grad = _roll(grad, shifts, sign=-1)
    grad = gaussian_blur(grad, settings.smooth)
    grad = grad / (grad.abs().mean(dim=(1, 2, 3), keepdim=True) + 1e-8)
    size = settings.step if step is None else step
    if isinstance(size, Sequence):
        size = torch.tensor(size, device=x.device, dtype=grad.dtype).view(-1, 1, 1, 1)
    return (x + size * grad).clamp(0, 1), score


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
    on_step: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Dream a batch of pictures.

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
        on_step: called after every ascent step with the (B,) scores.

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
    n_iter = settings.iterations if iterations is None else iterations
    base = images.float()
    h, w = base.shape[-2:]
    detail = None
    for size in octave_sizes(h, w, settings.octaves, settings.octave_scale):
        # 1. the input at this octave, plus the detail dreamed so far
        octave_base = resize(base, size)
        detail = torch.zeros_like(octave_base) if detail is None else resize(detail, size)
        x = (octave_base + detail).clamp(0, 1)
        # 2. gradient ascent at this octave
        for _ in range(n_iter):
            x, score = ascent_step(model, x, objective, settings, generators, autocast_dtype, step)
            if on_step is not None:
                on_step(score)
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
    """

    model: str = "efficientnet-lite0"
    weights: str | None = None
    labels: str | None = None
    device: str = "auto"
    precision: str = "auto"
    guide: str | None = None


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
        self.autocast_dtype = models.pick_precision(compute.precision, self.device)
        model = models.load_model(compute.model, weights=compute.weights, labels=compute.labels)
        self.model = models.prepare(model, self.device)
        self._guide_acts = self._guide_activations(compute.guide) if compute.guide else None
        self.objective = objectives.parse(settings.objective, self.model, guide_acts=self._guide_acts)
        self.generator = torch.Generator().manual_seed(settings.seed)

    def _guide_activations(self, path: str) -> Callable[[str], torch.Tensor]:
        from .decode import load_image

        guide = to_tensor(load_image(path), self.device)
        # Guides are matched position by position; a guide much larger than
        # the dream only costs memory, so cap it at the dream tile size.
        side = max(guide.shape[-2:])
        if side > self.settings.tile:
            h, w = guide.shape[-2:]
            guide = resize(guide, (round(h * self.settings.tile / side), round(w * self.settings.tile / side)))

        def acts(name: str) -> torch.Tensor:
            with torch.no_grad():
                return self.model(guide, [name])[name].float()

        return acts

    def parse(self, objective: str) -> Objective:
        """Another objective expression on this dreamer's model (and guide)."""
        from . import objectives

        return objectives.parse(objective, self.model, guide_acts=self._guide_acts)

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
    ) -> torch.Tensor:
        """Dream (B, 3, H, W) pictures in [0, 1] on the dreamer's device.

        Without ``generators``, successive calls continue one random stream
        seeded by ``settings.seed``; videos and animations pass one generator
        per image, seeded per frame, so a resumed run repeats the same frames.
        ``settings`` and ``objective`` replace the dreamer's own for this call
        (zoom variations of several presets).
        """
        return dream(
            self.model,
            images.to(self.device),
            objective or self.objective,
            settings or self.settings,
            autocast_dtype=self.autocast_dtype,
            generator=generators or self.generator,
            iterations=iterations,
            step=step,
            on_step=on_step,
        )


def to_tensor(rgb, device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, W, 3) uint8 array, or a list of them → (B, 3, H, W) float32 in [0, 1]."""
    import numpy as np

    batch = np.stack(rgb) if isinstance(rgb, (list, tuple)) else rgb[None]
    return torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float().div_(255)


def to_uint8(images: torch.Tensor):
    """(B, 3, H, W) in [0, 1] → (B, H, W, 3) uint8 numpy array, rounded."""
    return images.detach().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def noise_image(width: int, height: int, seed: int) -> torch.Tensor:
    """A seeded start picture for dreaming from nothing: (1, 3, H, W) in [0, 1].

    Mid-grey with soft coloured noise: flat grey gives the network nothing to
    amplify, white noise gives only pixel-level patterns.
    """
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(1, 3, height, width, generator=g)
    return (0.5 + 0.6 * (gaussian_blur(noise, 1.0) - 0.5)).clamp(0, 1)


def frame_generator(seed: int, frame: int) -> torch.Generator:
    """The random source of one frame: depends only on the seed and frame index."""
    return torch.Generator().manual_seed(seed * 1_000_003 + frame)
