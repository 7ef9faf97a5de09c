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
* colour coherence: each frame's Lab mean and standard deviation are pulled
  back to those of frame 0, so the picture neither fades to grey nor
  saturates (the "color coherence" of Deforum-style animation tools).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import torch

from .dream import ComputeSettings, Dreamer, DreamSettings, frame_generator, gaussian_blur, noise_image, to_tensor, to_uint8
from .encode import EncodeSettings, FrameWriter, clear_frames_folder, output_kind
from .schedule import Schedule, check_inputs, frame_env
from .sink import FrameSink, StopFlag
from .workdir import WorkDir

SCHEDULED = ("zoom", "angle", "translate_x", "translate_y", "step", "iterations", "blend")


@dataclass(frozen=True)
class ZoomSettings:
    """The feedback loop. Each scheduled field is a number or a schedule string.

    Attributes:
        zoom: scale per frame (1.02 = 2% closer each frame; < 1 zooms out).
        angle: rotation per frame in degrees, counter-clockwise.
        translate_x, translate_y: shift per frame in pixels.
        step: dream step per frame; None uses the [dream] step.
        iterations: ascent steps per octave per frame after the first; None
            uses the [dream] iterations.
        blend: share of the fed-back frame in the next start; the rest is the
            (equally transformed) first frame's input, which anchors the loop.
            1 = pure feedback.
        sharpen: unsharp-mask amount applied after each resampling (0 = off).
        color_coherence: how strongly Lab statistics are pulled to frame 0, 0..1.
        interpolation: between keyframes, "linear" or "cubic".
        fps: frames per second of the animation.
    """

    zoom: str | float = 1.02
    angle: str | float = 0.0
    translate_x: str | float = 0.0
    translate_y: str | float = 0.0
    step: str | float | None = None
    iterations: str | float | None = 3
    blend: str | float = 1.0
    sharpen: float = 0.0
    color_coherence: float = 1.0
    interpolation: str = "linear"
    fps: float = 24.0

    def __post_init__(self):
        for name, lo, hi in (("sharpen", 0.0, 5.0), ("color_coherence", 0.0, 1.0), ("fps", 1.0, 240.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
                raise ValueError(f"--{name.replace('_', '-')} {value!r}: expected a number from {lo:g} to {hi:g}")
        zoom = self.schedules()["zoom"]  # parse all now: a malformed schedule fails before any work
        if zoom.is_constant and not zoom(0, {}) > 0:
            raise ValueError(f"--zoom {self.zoom!r}: expected a scale factor > 0 (1 = no zoom, 1.02 = 2% closer per frame)")

    def schedules(self) -> dict[str, Schedule]:
        """The scheduled fields parsed; None fields are left out."""
        return {
            name: Schedule.parse(getattr(self, name), setting=name.replace("_", "-"), interpolation=self.interpolation)
            for name in SCHEDULED
            if getattr(self, name) is not None
        }


# --- image operations ------------------------------------------------------------


def affine_step(images: torch.Tensor, *, zoom: float, angle_deg: float, shift_x: float, shift_y: float) -> torch.Tensor:
    """Zoom, rotate and shift about the centre, with Lanczos resampling.

    Args:
        images: (B, C, H, W) in [0, 1].
        zoom: scale factor (> 1 zooms in).
        angle_deg: counter-clockwise rotation in degrees.
        shift_x, shift_y: translation in pixels (positive moves content right/down).

    Returns:
        (B, C, H, W) on the input's device and dtype. Borders are mirrored so
        zooming out or shifting never pulls in black.
    """
    if not zoom > 0 or not math.isfinite(zoom):
        raise ValueError(f"zoom {zoom!r}: expected a scale factor > 0 (1 = no zoom)")
    h, w = images.shape[-2:]
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle_deg, zoom)
    matrix[:, 2] += (shift_x, shift_y)
    out = []
    for img in images.detach().float().cpu().numpy():
        hwc = np.ascontiguousarray(img.transpose(1, 2, 0))
        warped = cv2.warpAffine(hwc, matrix, (w, h), flags=cv2.INTER_LANCZOS4, borderMode=cv2.BORDER_REFLECT)
        out.append(warped.reshape(h, w, -1).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out)).to(images.device, images.dtype).clamp(0, 1)


def sharpen(images: torch.Tensor, amount: float, sigma: float = 1.0) -> torch.Tensor:
    """Unsharp mask: ``x + amount * (x - blur(x))`` on (B, C, H, W), clamped to [0, 1]."""
    if amount <= 0:
        return images
    return (images + amount * (images - gaussian_blur(images, sigma))).clamp(0, 1)


def lab_stats(images: torch.Tensor) -> torch.Tensor:
    """Per-image Lab mean and std: (B, 3, H, W) RGB in [0, 1] → (B, 2, 3)."""
    labs = [cv2.cvtColor(np.ascontiguousarray(img.transpose(1, 2, 0)), cv2.COLOR_RGB2Lab) for img in images.detach().float().cpu().numpy()]
    return torch.tensor(np.stack([[lab.reshape(-1, 3).mean(0), lab.reshape(-1, 3).std(0)] for lab in labs]))


def match_color(images: torch.Tensor, reference: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Pull each image's Lab mean/std towards ``reference`` (B, 2, 3) by ``strength`` 0..1."""
    if strength <= 0:
        return images
    out = []
    for img, ref in zip(images.detach().float().cpu().numpy(), reference.numpy()):
        lab = cv2.cvtColor(np.ascontiguousarray(img.transpose(1, 2, 0)), cv2.COLOR_RGB2Lab)
        mean, std = lab.reshape(-1, 3).mean(0), lab.reshape(-1, 3).std(0) + 1e-6
        target_mean = mean + strength * (ref[0] - mean)
        target_std = std + strength * (ref[1] - std)
        matched = (lab - mean) / std * target_std + target_mean
        rgb = cv2.cvtColor(matched.astype(np.float32), cv2.COLOR_Lab2RGB)
        out.append(rgb.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out)).to(images.device, images.dtype).clamp(0, 1)


# --- the loop -------------------------------------------------------------------


@dataclass(frozen=True)
class ZoomResult:
    output: Path
    frames: int
    fps: float
    seconds: float
    resumed_from: int


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
    variations: int = 1,
    progress: bool = True,
) -> ZoomResult:
    """Render a feedback animation to ``output`` (video file, .gif or PNG folder).

    Args:
        frames: length; None = the audio's length, or 5 seconds without audio.
        size: (width, height) of one variation.
        init: start picture (resized to ``size``); None = seeded noise.
        audio: music whose features drive the schedules; muxed into the output.
        bpm: tempo for ``b``; None = estimated from the audio.
        variations: K seeds (seed, seed+1, ...) rendered as one batch, side by side.

    Resumable like :func:`~dreamreel.pipeline.video.dream_video`.
    """
    from tqdm import tqdm

    from . import audio as audio_mod
    from .decode import check_output_folder, load_image

    # 1. check everything before any work
    out = Path(output)
    output_kind(out)
    check_output_folder(out.parent)  # before the work folder is made there
    if not 1 <= variations <= 16:
        raise ValueError(f"--variations {variations}: expected 1 to 16")
    schedules = zoom.schedules()
    features = audio_mod.audio_features(audio, fps=zoom.fps, bpm=bpm) if audio else None
    check_inputs(schedules.values(), have_audio=features is not None, have_bpm=bpm is not None or (features is not None and features.bpm is not None))
    if frames is None:
        frames = features.n_frames if features is not None else round(5 * zoom.fps)
    if not 1 <= frames <= 1_000_000:
        raise ValueError(f"--frames {frames}: expected 1 to 1000000")
    width, height = size
    init_rgb = load_image(init) if init else None

    # 2. the work folder
    job = {"kind": "zoom", "dream": asdict(settings), "zoom": asdict(zoom), "model": compute.model,
           "weights": compute.weights, "guide": compute.guide, "precision": compute.precision, "frames": frames,
           "size": [width, height], "init": str(Path(init).resolve()) if init else None,
           "audio": str(Path(audio).resolve()) if audio else None, "bpm": bpm, "variations": variations}
    workdir = WorkDir(out, job)
    resumed = workdir.open()
    done = workdir.done()
    first = 0
    while first in done:
        first += 1
    if resumed and output_kind(out) == "frames":
        clear_frames_folder(out)  # the interrupted run's partial copy; re-written from the work folder
    writer = None
    try:
        fps = Fraction(zoom.fps).limit_denominator(1001)
        writer = FrameWriter(out, fps=fps, size=(width * variations, height), settings=encode, audio_source=audio)
        # 3. the model; the start pictures (frame 0's input, or the last frame on disk)
        dreamer = Dreamer(settings, compute)
        seeds = [settings.seed + k for k in range(variations)]
        if init_rgb is not None:
            base = to_tensor(cv2.resize(init_rgb, (width, height), interpolation=cv2.INTER_AREA))
        else:
            base = torch.cat([noise_image(width, height, seed) for seed in seeds])
        base = base.expand(variations, -1, -1, -1).contiguous()
        previous = reference = None
        if first > 0:
            previous = _split(to_tensor(workdir.load_frame(first - 1)), variations)
            reference = lab_stats(_split(to_tensor(workdir.load_frame(0)), variations))
        bar = tqdm(total=frames, initial=len(done), desc="zooming", unit="frame", disable=not progress)
        sink = FrameSink(workdir, frames, writer, on_saved=lambda _: bar.update(1))
        stop = StopFlag()
        start_time = time.perf_counter()
        with stop:
            for t in range(first, frames):
                if stop.requested:
                    break
                # 4. this frame's settings from the schedules
                env = frame_env(t, zoom.fps, bpm, features)
                value = {name: s(t, env) for name, s in schedules.items()}
                # 5. feed back: transform the last frame (and the anchor), blend, keep colours
                if previous is None:
                    start, n_iter = base, settings.iterations
                else:
                    motion = dict(zoom=value["zoom"], angle_deg=value["angle"], shift_x=value["translate_x"], shift_y=value["translate_y"])
                    start = affine_step(previous, **motion)
                    if value["blend"] < 1:
                        start = value["blend"] * start + (1 - value["blend"]) * base
                    start = match_color(sharpen(start, zoom.sharpen), reference, zoom.color_coherence)
                    n_iter = settings.iterations if "iterations" not in value else max(0, round(value["iterations"]))
                # 6. dream, one random stream per variation and frame
                generators = [frame_generator(seed, t) for seed in seeds]
                dreamed = dreamer(start, iterations=n_iter, step=value.get("step"), generators=generators)
                rgb = to_uint8(dreamed)
                previous = to_tensor(list(rgb))  # carry the 8-bit frame, exactly as saved
                if reference is None:
                    reference = lab_stats(previous)
                # 7. save and encode (side by side)
                sink.put(t, np.concatenate(list(rgb), axis=1))
        if stop.requested:
            sink.abort()
            bar.close()
            raise KeyboardInterrupt
        sink.finish()
        bar.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        workdir.release()
        raise
    workdir.remove()
    return ZoomResult(out, frames, zoom.fps, time.perf_counter() - start_time, resumed)


def _split(side_by_side: torch.Tensor, variations: int) -> torch.Tensor:
    """(1, 3, H, K*W) → (K, 3, H, W)."""
    return torch.cat(side_by_side.chunk(variations, dim=3))


def zoom_fields() -> list[str]:
    return [f.name for f in fields(ZoomSettings)]
