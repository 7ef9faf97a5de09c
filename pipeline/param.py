"""How the optimiser holds the picture: as pixels, or as a 1/f-scaled spectrum in a decorrelated colour space.

Gradient steps on pixels favour the high frequencies: a pixel-level change
moves a classifier's output as much as a large soft one, so class dreams grow
fine, colourful texture. Olah, Mordvintsev & Schubert (2017, "Feature
Visualization", Distill) optimise instead the Fourier coefficients of the
picture, each weighted by 1/frequency so every octave of scale learns at the
same pace (natural pictures' amplitude spectra fall as about 1/f), with the
colours in a basis in which ImageNet's colours are uncorrelated; a sigmoid
keeps the pixels in range. Their lucid library published that colour basis,
the square root of ImageNet's RGB covariance (:data:`COLOUR_SQRT`).

Both parametrisations map a start picture exactly onto their parameters
(:func:`encode`) and back (:func:`decode`), so a photo, a carried video frame
or a zoom's fed-back frame is where the optimisation begins, whichever is used.

The robustness transforms of that work (a random rotation and rescaling of
the picture before each step, besides the roll) are here too:
:func:`random_views` draws them, :func:`rotate_scale` applies them.

Every function takes (B, C, H, W) tensors; device and dtype come from the input.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

PARAMS = ("pixel", "fft")
# The square root of ImageNet's RGB colour covariance (U * sqrt(S) of its SVD):
# column k is the RGB direction of decorrelated channel k, scaled by that
# channel's standard deviation. Olah et al. 2017, as published in lucid.
COLOUR_SQRT = ((0.26, 0.09, 0.02), (0.27, 0.00, -0.05), (0.27, -0.09, 0.03))
# The spectrum's weights are 1 / (this * max(frequency, lowest frequency)),
# frequencies in cycles per pixel: lucid's constant, with which Adam at a
# learning rate of about 0.05 changes colours neither too slowly nor into
# saturation.
SPECTRUM_DIVISOR = 4.0
# encode() moves pixels at exactly 0 or 1 this far inside before the
# logit, where the sigmoid cannot reach: half an 8-bit level, so the round
# trip stays within one level.
EDGE = 0.5 / 255


@functools.lru_cache(maxsize=16)
def colour_matrix(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, *, inverse: bool = False) -> torch.Tensor:
    """(3, 3) map from decorrelated colour channels to RGB: :data:`COLOUR_SQRT` with its longest column scaled to 1.

    ``inverse`` gives the map from RGB back. Made once per device: a copy to
    a GPU from the host waits for the GPU's queue.
    """
    m = torch.tensor(COLOUR_SQRT, dtype=torch.float64)
    m = m / m.norm(dim=0).max()
    return (torch.linalg.inv(m) if inverse else m).to(device=device, dtype=dtype)


def spectrum_weights(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, W // 2 + 1) weights of the half spectrum ``torch.fft.rfft2`` gives: about 1/frequency.

    Frequencies are in cycles per pixel; the lowest ones (the mean and the
    longest waves) share the weight of ``1 / max(height, width)``.
    """
    fy = torch.fft.fftfreq(height, device=device)[:, None]
    fx = torch.fft.rfftfreq(width, device=device)[None, :]
    f = (fx**2 + fy**2).sqrt()
    return 1.0 / (SPECTRUM_DIVISOR * f.clamp(min=1.0 / max(height, width)))


def encode(x: torch.Tensor, param: str) -> torch.Tensor:
    """The parameters that :func:`decode` turns into the pictures ``x``.

    Args:
        x: (B, 3, H, W) pictures in [0, 1].
        param: ``pixel`` (the pixels themselves, a copy) or ``fft``.

    Returns:
        ``pixel``: (B, 3, H, W). ``fft``: (B, 3, H, W // 2 + 1, 2) float, the
        real and imaginary parts of the weighted spectrum of the pictures'
        decorrelated logits.
    """
    if param == "pixel":
        return x.detach().clone(memory_format=torch.contiguous_format)  # L-BFGS views its gradient flat
    _check_param(param)
    h, w = x.shape[-2:]
    logits = torch.logit(x.detach().float().clamp(EDGE, 1 - EDGE))
    decorrelated = torch.einsum("ck,bkhw->bchw", colour_matrix(x.device, inverse=True), logits)
    spectrum = torch.fft.rfft2(decorrelated, norm="ortho") / spectrum_weights(h, w, x.device)
    return torch.view_as_real(spectrum).contiguous()


def decode(p: torch.Tensor, param: str, size: tuple[int, int]) -> torch.Tensor:
    """(B, 3, H, W) pictures in [0, 1] from :func:`encode`'s parameters; differentiable.

    Args:
        p: parameters of ``param``.
        param: ``pixel`` or ``fft``.
        size: (H, W) of the pictures (the spectrum alone does not tell an odd width).
    """
    if param == "pixel":
        return p
    _check_param(param)
    h, w = size
    spectrum = torch.view_as_complex(p) * spectrum_weights(h, w, p.device)
    decorrelated = torch.fft.irfft2(spectrum, s=(h, w), norm="ortho")
    return torch.sigmoid(torch.einsum("kc,bchw->bkhw", colour_matrix(p.device), decorrelated))


def _check_param(param: str) -> None:
    if param not in PARAMS:
        raise ValueError(f"--param {param!r}: expected one of {', '.join(PARAMS)}")


# --- robustness transforms ------------------------------------------------------


def random_views(
    generators: Sequence[torch.Generator], steps: int, scale_jitter: float, rotate_jitter: float
) -> torch.Tensor:
    """Random (scale, angle in degrees) for ``steps`` steps: (steps, G, 2) float32 on the CPU.

    Scales are uniform in [1 - scale_jitter, 1 + scale_jitter], angles in
    [-rotate_jitter, rotate_jitter]. Drawn step by step, generator by
    generator, from CPU generators, like the rolls, so a picture gets the
    same views on every device and whether or not it shares a batch.
    """
    if steps == 0 or (scale_jitter == 0 and rotate_jitter == 0):
        return torch.tensor([1.0, 0.0]).expand(steps, len(generators), 2).clone()
    limits = torch.tensor([scale_jitter, rotate_jitter])
    draws = torch.stack([
        torch.stack([(2 * torch.rand(2, generator=g) - 1) * limits for g in generators]) for _ in range(steps)
    ])  # fmt: skip
    return draws + torch.tensor([1.0, 0.0])


def rotate_scale(x: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """Each picture rotated about its centre and magnified, bilinear, edges mirrored; differentiable.

    Args:
        x: (B, C, H, W).
        views: (B, 2) or (1, 2) (scale, angle in degrees) on ``x``'s device;
            a scale above 1 magnifies.

    Returns:
        (B, C, H, W): output pixel (u, v) from the centre shows the input at
        ``R(angle) (u, v) / scale``.
    """
    b, _, h, w = x.shape
    views = views.to(x.dtype).expand(b, 2)
    scale, angle = views[:, 0], views[:, 1] * (math.pi / 180)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    zero = torch.zeros_like(cos)
    # affine_grid's coordinates run from -1 to 1 along each side: the
    # rotation is in pixels, so the off-diagonal terms carry the aspect ratio
    theta = torch.stack([
        torch.stack([cos, -sin * (h / w), zero], 1),
        torch.stack([sin * (w / h), cos, zero], 1),
    ], 1)  # fmt: skip
    grid = F.affine_grid(theta, [b, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
