"""Infinite-zoom feedback animations: `dreamreel zoom`.

Each frame is dreamed lightly, then zoomed, rotated and shifted about the
centre and fed back as the start of the next, so the camera seems to fly
forever into a changing dream. Every motion and dream setting may be a
keyframe schedule of the frame, the time, the beat and the music's loudness
and bands (:mod:`schedule`, :mod:`audio`).

Two things keep a feedback loop from drifting over hundreds of frames:

* resampling with Lanczos (OpenCV ``INTER_LANCZOS4``): 30 bilinear zoom steps
  of 1.02 keep about 1% of the fine detail, so a bilinear loop dissolves
  into blobs; Lanczos keeps it;
* colour coherence: each frame's Lab mean and standard deviation, and the
  spread of its regional colour, are pulled back to those of frame 0, so the
  picture neither fades to grey nor saturates (the "color coherence" of
  Deforum-style animation tools).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .dream import (
    ComputeSettings, Download, Dreamer, DreamSettings, frame_generator, gaussian_blur, noise_image, quantize_8bit, to_tensor,
)
from .encode import EncodeSettings, FrameWriter, output_kind
from .files import check_not_an_input, check_output_folder, load_image
from .render import RenderJob, RenderResult, file_stamp, job_record
from .schedule import Schedule, check_inputs, frame_env, parse_schedule

SCHEDULED = ("zoom", "angle", "translate_x", "translate_y", "step", "iterations_next", "blend")
# A scheduled dream setting keeps the range of the fixed one (dream.check_settings,
# video's --blend), on every frame: iterations_next = "1e9" is refused, not run.
# A zoom of 0 has no inverse; beyond 10x per frame (or 1/10) a loop shows
# nothing of its previous frame.
SCHEDULE_BOUNDS = {"zoom": (0.1, 10.0), "step": (0.0, 1.0), "iterations_next": (0, 1000), "blend": (0.0, 1.0)}
# Messages name a schedule by its flag (--zoom); [zoom] step and blend have
# none (--step and --blend set the dream's step and video's blend), so they
# are named by their preset keys.
PRESET_ONLY = ("step", "blend")
MAX_VARIATIONS = 16  # looks side by side in one video


@dataclass(frozen=True)
class ZoomSettings:
    """The feedback loop. Each scheduled field is a number or a schedule string.

    Attributes:
        zoom: scale per frame (1.02 = 2% closer each frame; < 1 zooms out), 0.1 to 10.
        angle: rotation per frame in degrees, counter-clockwise.
        translate_x, translate_y: shift per frame in pixels.
        step: dream step per frame; None uses the [dream] step.
        iterations_next: ascent steps per octave for frames after the first
            (``--iterations-next``, as in video; frame 0 takes the [dream]
            ``iterations``); None uses the [dream] iterations.
        blend: share of the fed-back frame in the next start; the rest is the
            start picture (``--init`` or the noise), which anchors the loop.
            1 = pure feedback.
        sharpen: unsharp-mask amount applied after each resampling (0 = off).
        color_coherence: how strongly Lab statistics are pulled to frame 0, 0..1.
        interpolation: between keyframes, "linear" or "cubic".
        fps: frames per second of the animation.
        cadence: dream every Nth frame (frames 0, N, 2N, ...); the frames
            between are fed back (moved, blended, sharpened, colour-matched)
            without dreaming. 1 = dream every frame.
    """

    zoom: str | float = 1.02
    angle: str | float = 0.0
    translate_x: str | float = 0.0
    translate_y: str | float = 0.0
    step: str | float | None = None
    iterations_next: str | float | None = 3
    blend: str | float = 1.0
    sharpen: float = 0.0
    color_coherence: float = 1.0
    interpolation: str = "linear"
    fps: float = 24.0
    cadence: int = 1

    def __post_init__(self):
        for name, lo, hi in (("sharpen", 0.0, 5.0), ("color_coherence", 0.0, 1.0), ("fps", 1.0, 240.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
                raise ValueError(f"--{name.replace('_', '-')} {value!r}: expected a number from {lo:g} to {hi:g}")
        if isinstance(self.cadence, bool) or not isinstance(self.cadence, int) or not 1 <= self.cadence <= 10_000:
            raise ValueError(f"--cadence {self.cadence!r}: expected a whole number from 1 to 10000")
        self.schedules()  # parse all now: a malformed schedule fails before any work

    def schedules(self) -> dict[str, Schedule]:
        """The scheduled fields parsed, named in messages as :data:`PRESET_ONLY` says; None fields are left out."""
        return {
            name: parse_schedule(getattr(self, name), setting=name if name in PRESET_ONLY else "--" + name.replace("_", "-"),
                                 interpolation=self.interpolation, bounds=SCHEDULE_BOUNDS.get(name))
            for name in SCHEDULED
            if getattr(self, name) is not None
        }  # fmt: skip


# --- image operations ------------------------------------------------------------


def affine_step(images: torch.Tensor, *, zoom: float, angle_deg: float, translate_x: float, translate_y: float) -> torch.Tensor:
    """Zoom, rotate and shift about the centre, with bicubic resampling on the images' device.

    Args:
        images: (B, C, H, W) in [0, 1].
        zoom: scale factor (> 1 zooms in).
        angle_deg: counter-clockwise rotation in degrees.
        translate_x, translate_y: shift in pixels (positive moves content right/down).

    Returns:
        (B, C, H, W) on the input's device and dtype. Borders are mirrored so
        zooming out or shifting never pulls in black.
    """
    if not zoom > 0 or not math.isfinite(zoom):
        raise ValueError(f"zoom {zoom!r}: expected a scale factor > 0 (1 = no zoom)")
    h, w = images.shape[-2:]
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle_deg, zoom)
    matrix[:, 2] += (translate_x, translate_y)
    # grid_sample wants, per output pixel, where to read: the inverse map, in
    # coordinates where -1 and 1 are the corner pixels' centres (align_corners).
    inverse = np.vstack([cv2.invertAffineTransform(matrix), [0, 0, 1]])
    to_unit = np.array([[2 / max(w - 1, 1), 0, -1], [0, 2 / max(h - 1, 1), -1], [0, 0, 1]])
    theta = torch.tensor((to_unit @ inverse @ np.linalg.inv(to_unit))[:2], dtype=torch.float32, device=images.device)
    grid = F.affine_grid(theta.expand(images.shape[0], 2, 3), list(images.shape), align_corners=True)
    out = F.grid_sample(images.float(), grid, mode="bicubic", padding_mode="reflection", align_corners=True)
    return out.clamp(0, 1).to(images.dtype)


def motion_matrix(width: int, height: int, *, zoom: float, angle: float, translate_x: float, translate_y: float, **_) -> np.ndarray:
    """The 3x3 pixel map of one :func:`affine_step` on a ``width`` x ``height`` picture (where a pixel moves to).

    Steps compose by matrix product (later step on the left), and
    :func:`matrix_motion` turns a product back into one step's settings, so
    many frames' motion can be applied in one resampling (live ``--zoom``).
    Extra keyword arguments (a frame's other settings) are ignored.
    """
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, zoom)
    matrix[:, 2] += (translate_x, translate_y)
    return np.vstack([matrix, [0.0, 0.0, 1.0]])


def matrix_motion(matrix: np.ndarray, width: int, height: int) -> dict[str, float]:
    """The ``zoom``, ``angle``, ``translate_x`` and ``translate_y`` of :func:`affine_step` that make ``matrix`` (a product of :func:`motion_matrix`)."""
    alpha, beta = matrix[0, 0], matrix[0, 1]
    cx, cy = (width - 1) / 2, (height - 1) / 2
    return {
        "zoom": math.hypot(alpha, beta),
        "angle": math.degrees(math.atan2(beta, alpha)),
        "translate_x": matrix[0, 2] - ((1 - alpha) * cx - beta * cy),
        "translate_y": matrix[1, 2] - (beta * cx + (1 - alpha) * cy),
    }


def sharpen(images: torch.Tensor, amount: float, sigma: float = 1.0) -> torch.Tensor:
    """Unsharp mask: ``x + amount * (x - blur(x))`` on (B, C, H, W), clamped to [0, 1]."""
    if amount <= 0:
        return images
    return (images + amount * (images - gaussian_blur(images, sigma))).clamp(0, 1)


# sRGB (D65) → CIE XYZ and the white point: OpenCV's constants, so these
# match cv2.COLOR_RGB2Lab / COLOR_Lab2RGB on float pictures (to 0.5 in L).
_RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
_WHITE_XYZ = (0.950456, 1.0, 1.088754)
_LAB_EPSILON = 0.008856  # (6/29)**3: below it the cube root is replaced by a line


def rgb_to_lab(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) sRGB in [0, 1] → CIE Lab (L 0..100, a and b about -128..127), same device."""
    linear = torch.where(images <= 0.04045, images / 12.92, ((images.clamp(min=0) + 0.055) / 1.055) ** 2.4)
    to_xyz = torch.tensor(_RGB_TO_XYZ, device=images.device, dtype=images.dtype)
    white = torch.tensor(_WHITE_XYZ, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    xyz = torch.einsum("ij,bjhw->bihw", to_xyz, linear) / white
    f = torch.where(xyz > _LAB_EPSILON, xyz.clamp(min=1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    lightness = torch.where(xyz[:, 1:2] > _LAB_EPSILON, 116 * f[:, 1:2] - 16, 903.3 * xyz[:, 1:2])
    return torch.cat([lightness, 500 * (f[:, :1] - f[:, 1:2]), 200 * (f[:, 1:2] - f[:, 2:])], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_lab`: (B, 3, H, W) Lab → sRGB, not clamped."""
    lightness, a, b = lab[:, :1], lab[:, 1:2], lab[:, 2:]
    fy = (lightness + 16) / 116
    f = torch.cat([fy + a / 500, fy, fy - b / 200], dim=1)
    xyz = torch.where(f > 6 / 29, f**3, (f - 16 / 116) / 7.787)
    xyz[:, 1:2] = torch.where(lightness > 903.3 * _LAB_EPSILON, fy**3, lightness / 903.3)
    white = torch.tensor(_WHITE_XYZ, device=lab.device, dtype=lab.dtype).view(1, 3, 1, 1)
    to_rgb = torch.linalg.inv(torch.tensor(_RGB_TO_XYZ, dtype=torch.float64)).to(lab.device, lab.dtype)
    linear = torch.einsum("ij,bjhw->bihw", to_rgb, xyz * white)
    return torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear.clamp(min=0) ** (1 / 2.4) - 0.055)


# Colour coherence keeps colour in regions, not only in the pixel-level
# fringes a dream draws: "regional" colour is the Lab picture blurred with a
# Gaussian of this share of the shorter side (6 px at 384x384). Video codecs
# store colour at half resolution (4:2:0), which erases the fringes: a zoom
# whose PNG frames had a mean HSV saturation of 108 of 255 came out at 86 in
# the H.264 file until the regional colour was held too.
REGION_SIGMA_SHARE = 1 / 64
# Most the regional colour may be scaled up or down in one frame.
MAX_REGION_GAIN = 2.0


def lab_stats(images: torch.Tensor) -> torch.Tensor:
    """Per-image Lab statistics: (B, 3, H, W) RGB in [0, 1] → (B, 3, 3), same device.

    Rows: mean, std, and the std of the regional (blurred, see
    :data:`REGION_SIGMA_SHARE`) picture; columns L, a, b.
    """
    lab = rgb_to_lab(images.detach().float())
    return torch.cat([_moments(lab), _regional(lab).std(dim=(2, 3), unbiased=False)[:, None]], dim=1)


def _moments(lab: torch.Tensor) -> torch.Tensor:
    return torch.stack([lab.mean(dim=(2, 3)), lab.std(dim=(2, 3), unbiased=False)], dim=1)


def _regional(lab: torch.Tensor) -> torch.Tensor:
    return gaussian_blur(lab, max(1.0, REGION_SIGMA_SHARE * min(lab.shape[-2:])))


def match_color(images: torch.Tensor, reference: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Pull each image's Lab statistics towards ``reference`` (B, 3, 3) by ``strength`` 0..1.

    First the regional colour (a and b of the blurred picture, about their
    mean) is scaled towards the reference's regional std (by at most
    :data:`MAX_REGION_GAIN`), then each channel's mean and std towards the
    reference's. So the colour a dream keeps lives in regions a codec keeps.
    """
    if strength <= 0:
        return images
    lab = rgb_to_lab(images.detach().float())
    reference = reference.to(lab.device, lab.dtype)
    chroma = lab[:, 1:]
    regional = _regional(chroma) - chroma.mean(dim=(2, 3), keepdim=True)
    regional_std = regional.std(dim=(2, 3), unbiased=False, keepdim=True) + 1e-6
    gain = (1 + strength * (reference[:, 2, 1:, None, None] / regional_std - 1)).clamp(1 / MAX_REGION_GAIN, MAX_REGION_GAIN)
    lab = torch.cat([lab[:, :1], chroma + (gain - 1) * regional], dim=1)
    stats = _moments(lab)
    mean, std = stats[:, 0, :, None, None], stats[:, 1, :, None, None] + 1e-6
    target_mean = mean + strength * (reference[:, 0, :, None, None] - mean)
    target_std = std + strength * (reference[:, 1, :, None, None] - std)
    matched = (lab - mean) / std * target_std + target_mean
    return lab_to_rgb(matched).clamp(0, 1).to(images.dtype)


# --- the loop -------------------------------------------------------------------


@dataclass(frozen=True)
class Look:
    """One variation of a zoom render: its random seed, dream and loop settings."""

    seed: int
    dream: DreamSettings
    zoom: ZoomSettings


def make_looks(
    settings: DreamSettings, zoom: ZoomSettings, variations: int | Sequence[tuple[DreamSettings, ZoomSettings]]
) -> list[Look]:
    """The looks of a render: ``variations`` K seeds of one look, or one per (dream, zoom) pair.

    Raises:
        ValueError: no looks, more than 16, or looks of different fps or cadence (one video has one rate).
    """
    if isinstance(variations, int) and not isinstance(variations, bool):
        looks = [Look(settings.seed + k, settings, zoom) for k in range(variations)]
    else:
        looks = [Look(dream.seed, dream, loop) for dream, loop in variations]
    if not 1 <= len(looks) <= MAX_VARIATIONS:
        raise ValueError(f"--variations {len(looks)}: expected 1 to {MAX_VARIATIONS} looks side by side")
    rates = sorted({look.zoom.fps for look in looks})
    if len(rates) > 1:
        raise ValueError(f"--variations: the looks ask for different frame rates ({', '.join(f'{r:g}' for r in rates)} fps); pass --fps")
    cadences = sorted({look.zoom.cadence for look in looks})
    if len(cadences) > 1:
        raise ValueError(f"--variations: the looks ask for different cadences ({', '.join(map(str, cadences))}); pass --cadence")
    return looks


def feed_back(previous: torch.Tensor, anchor: torch.Tensor, reference: torch.Tensor, zoom: ZoomSettings, value: dict) -> torch.Tensor:
    """The start of the next frame: the last frame moved, blended with the anchor, sharpened, colour-matched.

    Args:
        previous: (B, 3, H, W) last frames in [0, 1].
        anchor: (B, 3, H, W) the start pictures (mixed in when ``blend`` < 1).
        reference: (B, 3, 3) Lab statistics of frame 0 (:func:`lab_stats`).
        zoom: the loop settings (sharpen, colour coherence).
        value: this frame's scheduled values (zoom, angle, translate_x/y, blend).
    """
    start = affine_step(previous, zoom=value["zoom"], angle_deg=value["angle"], translate_x=value["translate_x"], translate_y=value["translate_y"])
    if value["blend"] < 1:
        start = value["blend"] * start + (1 - value["blend"]) * anchor
    return match_color(sharpen(start, zoom.sharpen), reference, zoom.color_coherence)


def frame_values(schedules: Sequence[dict[str, Schedule]], t: int, fps: float, bpm: float | None, features) -> list[dict[str, float]]:
    """Each look's scheduled values at frame ``t`` (``features``: the audio's, or None).

    Raises:
        ExprError: a value fails or is out of range, naming the flag and the frame.
    """
    env = frame_env(t, fps, bpm, features)
    return [{name: schedule(t, env) for name, schedule in each.items()} for each in schedules]


def dream_zoom(
    output: str | Path,
    settings: DreamSettings,
    compute: ComputeSettings,
    zoom: ZoomSettings,
    encode: EncodeSettings,
    *,
    frames: int | None = None,
    size: tuple[int, int] = (512, 512),
    init: str | Path | None = None,
    audio: str | Path | None = None,
    bpm: float | None = None,
    variations: int | Sequence[tuple[DreamSettings, ZoomSettings]] = 1,
    progress: bool = True,
) -> RenderResult:
    """Render a feedback animation to ``output`` (video file, .gif or PNG folder).

    Args:
        frames: length; None = the audio's length, or 5 seconds without audio.
        size: (width, height) of one variation.
        init: start picture (resized to ``size``); None = seeded noise.
        audio: music whose features drive the schedules; muxed into the output.
        bpm: tempo for ``b``; None = estimated from the audio.
        variations: K seeds (seed, seed+1, ...) of ``settings`` and ``zoom``,
            or one (dream, zoom) pair per look (say, from K presets); rendered
            side by side, and dreamed as one batch wherever the looks share
            their pyramid and step count.

    Resumable like :func:`~dreamreel.pipeline.video.dream_video`.

    Longer than most functions here on purpose: its numbered steps (checks,
    model, job, then per frame schedules → feed back → dream → save) are one
    render read top to bottom, and the per-frame steps share a dozen locals.
    """
    from . import audio as audio_mod
    from .objectives import Objective, per_image

    # 1. check everything before any work: the output, the looks, every
    # schedule at every frame (cheap next to one dream step), the start picture
    out = Path(output)
    output_kind(out)
    check_output_folder(out.parent)  # before the work folder is made there
    check_not_an_input(out, {"--init": init, "--audio": audio, **compute.input_files()})
    looks = make_looks(settings, zoom, variations)
    fps_value, cadence = looks[0].zoom.fps, looks[0].zoom.cadence
    schedules = [look.zoom.schedules() for look in looks]
    features = audio_mod.audio_features(audio, fps=fps_value, bpm=bpm) if audio else None
    have_bpm = bpm is not None or (features is not None and features.bpm is not None)
    check_inputs([s for each in schedules for s in each.values()], have_audio=features is not None, have_bpm=have_bpm)
    if frames is None:
        frames = features.n_frames if features is not None else round(5 * fps_value)
    if not 1 <= frames <= 1_000_000:
        raise ValueError(f"--frames {frames}: expected 1 to 1000000")
    for t in range(frames):
        frame_values(schedules, t, fps_value, bpm, features)
    width, height = size
    init_rgb = load_image(init) if init else None

    # 2. the model and each look's objective
    dreamer = Dreamer(looks[0].dream, compute)
    parsed = {look.dream.objective: dreamer.parse_objective(look.dream.objective) for look in looks}

    @functools.cache
    def batch_objective(members: tuple[int, ...]) -> Objective:
        """One objective for a batch of looks, made once: the GPU keeps a captured step per objective."""
        objectives = [parsed[looks[k].dream.objective] for k in members]
        return objectives[0] if len(set(map(id, objectives))) == 1 else per_image(objectives)

    # 3. the render job: work folder and lock, frames already done, the writer
    record = job_record(
        "zoom", compute, looks=[asdict(look) for look in looks], frames=frames, size=[width, height],
        init=file_stamp(init), audio=file_stamp(audio), bpm=bpm,
    )  # fmt: skip
    fps = Fraction(fps_value).limit_denominator(1001)
    writer = lambda: FrameWriter(out, fps=fps, size=(width * len(looks), height), settings=encode, audio_source=audio)  # noqa: E731
    with RenderJob.open(out, record, frames, writer=writer) as job:
        first = 0
        while first in job.done:
            first += 1
        # 4. the start pictures (frame 0's input), and the last frame on disk when resuming.
        # Every picture lives on the dreamer's device; only the finished 8-bit frame comes back to the host.
        device = dreamer.device
        if init_rgb is not None:
            init_small = cv2.resize(init_rgb, (width, height), interpolation=cv2.INTER_AREA)
            base = to_tensor(init_small, device).expand(len(looks), -1, -1, -1)
        else:
            base = torch.cat([noise_image(width, height, look.seed) for look in looks]).to(device)
        previous = reference = None
        if first > 0:
            previous = _split(to_tensor(job.load_frame(first - 1), device), len(looks))
            reference = lab_stats(_split(to_tensor(job.load_frame(0), device), len(looks)))
        with job.running(desc="zooming", progress=progress):
            for t in range(first, frames):
                if job.stop_requested:
                    break
                # 5. this frame's settings, from each look's schedules
                values = frame_values(schedules, t, fps_value, bpm, features)
                # 6. feed back: move each look's last frame, blend, keep its colours
                if previous is None:
                    start = base
                    steps_per_octave = [look.dream.iterations for look in looks]
                else:
                    start = torch.cat([
                        feed_back(previous[k : k + 1], base[k : k + 1], reference[k : k + 1], look.zoom, values[k])
                        for k, look in enumerate(looks)
                    ])  # fmt: skip
                    steps_per_octave = [
                        look.dream.iterations if "iterations_next" not in value else max(0, round(value["iterations_next"]))
                        for look, value in zip(looks, values)
                    ]  # fmt: skip
                # 7. dream: one batch per pyramid and step count, one random stream per look and frame;
                # frames between key frames (--cadence) are only fed back
                dreamed = start.clone()
                for members in _batches(looks, steps_per_octave) if t % cadence == 0 else []:
                    dreamed[members] = dreamer(
                        start[members],
                        iterations=steps_per_octave[members[0]],
                        step=[values[k].get("step", looks[k].dream.step) for k in members],
                        generators=[frame_generator(looks[k].seed, t) for k in members],
                        settings=looks[members[0]].dream,
                        objective=batch_objective(tuple(members)),
                    ).to(dreamed.dtype)
                previous = quantize_8bit(dreamed)  # carry the 8-bit frame, exactly as saved
                rgb = Download(previous, dreamer.host_buffers).wait()
                if reference is None:
                    reference = lab_stats(previous)
                # 8. save and encode (side by side)
                job.put(t, np.concatenate(list(rgb), axis=1))
        return job.finish()


def _batches(looks: list[Look], steps_per_octave: list[int]) -> list[list[int]]:
    """Indices of the looks that can be dreamed as one batch: same pyramid, same step count."""
    groups: dict[tuple, list[int]] = {}
    for k, (look, n) in enumerate(zip(looks, steps_per_octave)):
        pyramid = replace(look.dream, objective="", step=0.0, seed=0, iterations=0)
        groups.setdefault((pyramid, n), []).append(k)
    return list(groups.values())


def _split(side_by_side: torch.Tensor, variations: int) -> torch.Tensor:
    """(1, 3, H, K*W) → (K, 3, H, W)."""
    return torch.cat(side_by_side.chunk(variations, dim=3))


def zoom_fields() -> list[str]:
    return [f.name for f in fields(ZoomSettings)]
