"""Dream one still picture: the `dreamreel image` job."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

from .decode import output_size
from .dream import ComputeSettings, Dreamer, DreamSettings, noise_image, to_tensor, to_uint8, resize
from .files import IMAGE_SUFFIXES, check_not_an_input, load_image, save_image

NOISE = "noise"  # INPUT word: dream from seeded noise


@dataclass(frozen=True)
class ImageResult:
    """What `dream_image` did: output path, size (w, h), seconds, first and last score."""

    output: Path
    size: tuple[int, int]
    seconds: float
    score_start: float
    score_end: float


def check_output(output: str | Path, *, inputs: Mapping[str, str | Path | None] = {}, suffixes=IMAGE_SUFFIXES) -> Path:
    """Validate an output file path before any work starts; ``inputs`` name → path, as :func:`check_not_an_input` takes them.

    Raises:
        ValueError: wrong suffix, missing or unwritable folder, or the output
            would overwrite an input.
    """
    path = Path(output)
    if suffixes and path.suffix.lower() not in suffixes:
        raise ValueError(f"OUTPUT {output}: unknown picture type {path.suffix or '(none)'!r}; use one of {', '.join(suffixes)}")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"OUTPUT {output}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"OUTPUT {output}: folder {folder} is not writable")
    check_not_an_input(path, inputs)
    return path


def dream_image(
    input: str | Path,
    output: str | Path,
    settings: DreamSettings,
    compute: ComputeSettings,
    *,
    max_side: int | None = None,
    noise_size: tuple[int, int] = (512, 512),
    progress: bool = True,
) -> ImageResult:
    """Dream the picture ``input`` (or seeded noise for ``"noise"``) into ``output``.

    Args:
        input: picture path, or ``"noise"``.
        output: picture path; written atomically, same size as the (scaled) input.
        max_side: downscale so the longest side is at most this many pixels.
        noise_size: (width, height) of the noise start picture.
    """
    import time

    # 1. check paths, then read the input before loading the model
    out = check_output(output, inputs={"input": input if str(input) != NOISE else None, **compute.input_files()})
    if str(input) == NOISE:
        images = noise_image(*noise_size, seed=settings.seed)
    else:
        images = to_tensor(load_image(input))
        if max_side:
            w, h = output_size(images.shape[-1], images.shape[-2], max_side)
            images = resize(images, (h, w))
    # 2. load the model and objective once; one picture never repays compiling, so auto does not compile
    dreamer = Dreamer(settings, replace(compute, compile="off") if compute.compile == "auto" else compute)
    # 3. dream, with one bar over every ascent step of every octave
    from .dream import octave_sizes

    total = len(octave_sizes(*images.shape[-2:], settings.octaves, settings.octave_scale)) * settings.iterations
    scores: list[torch.Tensor] = []
    start = time.perf_counter()
    with tqdm(total=total, desc="dreaming", unit="step", disable=not progress) as bar:

        def on_step(score: torch.Tensor) -> None:
            scores.append(score[0])  # kept on the device: no host sync per step on a GPU
            bar.update(1)

        result = dreamer(images, on_step=on_step)
    seconds = time.perf_counter() - start
    # 4. write atomically
    save_image(out, to_uint8(result)[0])
    return ImageResult(
        output=out,
        size=(images.shape[-1], images.shape[-2]),
        seconds=seconds,
        score_start=float(scores[0]) if scores else float("nan"),
        score_end=float(scores[-1]) if scores else float("nan"),
    )
