"""Optical flow between input frames, warping along it, and where it can be trusted.

For frame ``t`` the video pipeline computes the *backward* flow from the current
input frame to the previous one, ``flow = FlowEstimator()(cur, prev)``, so that
``prev[y + fy, x + fx] ≈ cur[y, x]``, and pulls the previous *dreamed* frame into
the current frame's coordinates with :func:`warp_with_flow`. Flow is always
computed on input frames, never on dreamed ones (the hallucinated patterns would
be tracked as motion). :func:`consistency_mask` marks the pixels the previous
frame cannot explain (disocclusions, motion boundaries) and :func:`scene_cut`
says when coherence should start afresh.

Conventions: flows are ``(H, W, 2)`` float32 numpy arrays (or ``(B, H, W, 2)``
tensors) in pixels, channel 0 horizontal (x, to the right), channel 1 vertical
(y, downwards); pixel ``(x, y)`` has its centre at integer coordinates. Frames
handed to OpenCV are RGB uint8 ``(H, W, 3)``; tensors are ``(B, C, H, W)``.

Example::

    estimator = FlowEstimator("dis")
    backward = estimator(cur_rgb, prev_rgb)
    forward = estimator(prev_rgb, cur_rgb)
    mask = consistency_mask(forward, backward)
    warped = warp_with_flow(prev_dream, flow_to_tensor(backward, device=prev_dream.device))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from .files import check_rgb, describe

FLOW_METHODS = ("dis", "farneback", "none")
DIS_PRESETS = ("ultrafast", "fast", "medium")
# Smallest FlowEstimator scale: at 1/8, a 720p frame's flow is computed on
# 160x90 pixels, where DIS's 8 px patches see little but the largest shapes.
MIN_FLOW_SCALE = 0.125

# Cost of one flow field (FlowEstimator call, RGB in) on a 1280x720 pan of
# tests/data/chelsea.jpg on the 2-core development CPU (cv2's default 2
# threads; per-call times over three runs of 10-30 calls, which a busy machine
# stretched), and its end-point error against the true 4 px / 3 px shift:
#   DIS ultrafast   6-9 ms, EPE 0.16 px      DIS medium  39-72 ms, EPE 0.04 px
#   DIS fast      10-11 ms, EPE 0.13 px      Farneback 160-200 ms, EPE 1.9 px
# At 640x360: 1.2-1.9, 2.6-4.1, 10-23 and 36-43 ms. An earlier run on the same
# machine gave 13 / 16 / 61 / 181 ms at 1280x720. A dream step costs seconds
# per frame, so the video pipeline's two flows per frame at "medium" are noise
# next to it, and medium's 3x smaller error is what keeps warped detail sharp.
_DIS_PRESET_IDS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}

# Farneback settings from OpenCV's own example (samples/python/opt_flow.py):
# pyramid scale 0.5, 3 levels, 15 px window, 3 iterations, 5 px polynomial
# neighbourhood with sigma 1.2.
_FARNEBACK_ARGS = (0.5, 3, 15, 3, 5, 1.2, 0)

# OpenCV's DIS (modules/video/src/dis_flow.cpp) builds its pyramid down to
# min(round(log2(max_side / (4 * patch))), floor(log2(min_side / patch))) and
# rejects frames where that is negative, i.e. a short side under one patch
# (8 px) or a long side under 12 px. When that coarsest level lies above the
# preset's finest level, calc() reads past its pyramid and crashes the process
# (seen here for 9x40, 12x40, 10x200 and 16x200 frames), so the finest level is
# lowered per frame size; tiny frames are padded up to the minimum.
_DIS_PATCH_PX = 8
_DIS_MIN_SHORT_SIDE_PX = 8
_DIS_MIN_LONG_SIDE_PX = 12

# Forward-backward check of Sundaram, Brox & Keutzer, "Dense point trajectories
# by GPU-accelerated large displacement optical flow", ECCV 2010, with the same
# constants reused by Ruder, Dosovitskiy & Brox, "Artistic style transfer for
# videos", GCPR 2016 (arXiv:1604.08610). A pixel is consistent when
#   |w + ŵ|² <= OCCLUSION_RELATIVE_TOL (|w|² + |ŵ|²) + OCCLUSION_ABSOLUTE_TOL_PX2
# and is on a motion boundary when
#   |∇u|² + |∇v|² > MOTION_BOUNDARY_RELATIVE_TOL |w|² + MOTION_BOUNDARY_ABSOLUTE_TOL.
# Lengths are in pixels, so the absolute terms assume flow at full frame size.
OCCLUSION_RELATIVE_TOL = 0.01
OCCLUSION_ABSOLUTE_TOL_PX2 = 0.5
MOTION_BOUNDARY_RELATIVE_TOL = 0.01
MOTION_BOUNDARY_ABSOLUTE_TOL = 0.002

# Hue x saturation histogram for scene_cut: 18 hue bins of 10 degrees and 8
# saturation bins, each count spread over the neighbouring bins by a 3x3
# Gaussian (soft binning, hue wrapping around). Brightness (the V channel) is
# left out so fades and exposure changes are not cuts. Measured on synthetic
# textures at 48x80 to 320x240 (40 seeds): with hard 18x8 bins a +10 %
# brightness change reached a distance of 0.31, as flat colour blocks on a bin
# edge jumped bins; soft binning brought that to 0.16 while cuts stayed >= 0.28.
_HUE_BINS = 18
_SATURATION_BINS = 8

# Bhattacharyya distances of those histograms, over 40 seeds of synthetic
# textures at 48x80, 64x64 and 320x240 plus tests/data/chelsea.jpg at 31x33 to
# 640x360: 3-10 px pans, a 2 % zoom and +-10 % brightness gave <= 0.16; cuts
# between unrelated images gave >= 0.28, and 0.21 between two crops of the same
# photo (same palette), which the inconsistent-fraction signal below is for.
SCENE_CUT_HISTOGRAM_DISTANCE = 0.2
# Share of pixels failing consistency_mask (DIS medium, erode_px=1): <= 0.05
# for a 10 px pan, 2 % zoom or +-10 % brightness of chelsea.jpg at 640x360 and
# <= 0.08 for 3-10 px pans of 320x240 textures; cuts gave >= 0.95 and >= 0.88
# respectively, including the same-palette one the histogram barely catches. On
# 48x80 and 64x64 frames pans reached 0.47 (the new strip is 12-16 % of the
# frame) and cuts went down to 0.82. Above this the previous frame explains too
# little of the new one to be worth carrying over.
SCENE_CUT_INCONSISTENT_FRACTION = 0.75


class FlowEstimator:
    """Dense optical flow between two RGB frames, with the OpenCV object built once.

    Not thread-safe (the OpenCV object keeps per-call buffers): give each
    thread its own estimator.

    Args:
        method: one of :data:`FLOW_METHODS`. "dis" is Dense Inverse Search
            (Kroeger et al., ECCV 2016), fast and accurate; "farneback" is
            OpenCV's polynomial-expansion flow, slower and blurrier, kept as
            an alternative; "none" returns zero flow (no motion compensation).
        preset: DIS speed/quality trade-off, one of :data:`DIS_PRESETS`; only
            used by "dis". See the timings above the class.
        scale: share of the frame's width and height the flow is computed at,
            ``MIN_FLOW_SCALE`` to 1: the frames are shrunk (area
            interpolation), and the field is upsampled (bilinear) and its
            vectors multiplied back to full-frame pixels. DIS "medium"
            already stops at its pyramid's second level (half the frame), so
            0.5 puts that finest field at a quarter of the frame size (see
            docs/performance.md for its cost in time and in coherence).

    Raises:
        ValueError: unknown ``method`` or ``preset``, or ``scale`` out of range.

    Example::

        estimator = FlowEstimator("dis", preset="medium")
        backward = estimator(cur_rgb, prev_rgb)  # (H, W, 2): cur(p) ≈ prev(p + backward(p))
    """

    def __init__(self, method: str = "dis", *, preset: str = "medium", scale: float = 1.0) -> None:
        if method not in FLOW_METHODS:
            raise ValueError(f"method={method!r} is not a flow method; choose one of {FLOW_METHODS}")
        if preset not in DIS_PRESETS:
            raise ValueError(f"preset={preset!r} is not a DIS preset; choose one of {DIS_PRESETS}")
        check_flow_scale(scale)
        self.method = method
        self.preset = preset
        self.scale = scale
        self._dis = cv2.DISOpticalFlow_create(_DIS_PRESET_IDS[preset]) if method == "dis" else None
        self._dis_finest_level = self._dis.getFinestScale() if self._dis is not None else 0

    def __repr__(self) -> str:
        return f"FlowEstimator(method={self.method!r}, preset={self.preset!r}, scale={self.scale!r})"

    def __call__(self, src_rgb: np.ndarray, dst_rgb: np.ndarray) -> np.ndarray:
        """Flow from ``src_rgb`` to ``dst_rgb``: ``src(p) ≈ dst(p + flow(p))``.

        Call ``estimator(cur, prev)`` for the backward flow the video pipeline
        warps with, ``estimator(prev, cur)`` for the forward flow.

        Args:
            src_rgb: RGB uint8 frame, shape (H, W, 3), any H and W.
            dst_rgb: RGB uint8 frame of the same shape.

        Returns:
            float32 array (H, W, 2) in pixels, (dx, dy) per pixel.

        Raises:
            ValueError: a frame is not RGB uint8 (H, W, 3), or the sizes differ.
        """
        check_rgb(src_rgb, "src_rgb")
        check_rgb(dst_rgb, "dst_rgb")
        if src_rgb.shape != dst_rgb.shape:
            raise ValueError(
                f"src_rgb has shape {src_rgb.shape} but dst_rgb has {dst_rgb.shape}; "
                "flow needs two frames of the same size (resize one to the other first)"
            )
        height, width = src_rgb.shape[:2]
        if self.method == "none":
            return np.zeros((height, width, 2), np.float32)
        src = cv2.cvtColor(src_rgb, cv2.COLOR_RGB2GRAY)
        dst = cv2.cvtColor(dst_rgb, cv2.COLOR_RGB2GRAY)
        small = (max(1, round(width * self.scale)), max(1, round(height * self.scale)))
        if small != (width, height):
            src = cv2.resize(src, small, interpolation=cv2.INTER_AREA)
            dst = cv2.resize(dst, small, interpolation=cv2.INTER_AREA)
        if self.method == "farneback":
            flow = cv2.calcOpticalFlowFarneback(src, dst, None, *_FARNEBACK_ARGS)
        else:
            flow = self._dis_flow(src, dst)
        if small == (width, height):
            return flow
        # The field at full size, its vectors in full-size pixels. Pixel centres
        # map as (x + 0.5) * width / small_width - 0.5, which bilinear resizing follows.
        flow = cv2.resize(flow, (width, height), interpolation=cv2.INTER_LINEAR)
        flow[..., 0] *= width / small[0]
        flow[..., 1] *= height / small[1]
        return flow

    def _dis_flow(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """DIS flow between two gray uint8 frames of any size (see _DIS_PATCH_PX)."""
        height, width = src.shape
        pad_y = max(0, _DIS_MIN_SHORT_SIDE_PX - height)
        pad_x = max(0, _DIS_MIN_SHORT_SIDE_PX - width)
        if max(height + pad_y, width + pad_x) < _DIS_MIN_LONG_SIDE_PX:
            pad_x = _DIS_MIN_LONG_SIDE_PX - width
        if pad_x or pad_y:
            src = cv2.copyMakeBorder(src, 0, pad_y, 0, pad_x, cv2.BORDER_REPLICATE)
            dst = cv2.copyMakeBorder(dst, 0, pad_y, 0, pad_x, cv2.BORDER_REPLICATE)
        short_side, long_side = sorted(src.shape)
        # The same expression as dis_flow.cpp, integer division and all, so
        # rounding cannot put our level above OpenCV's.
        coarsest_level = min(
            int(math.log(long_side / (4.0 * _DIS_PATCH_PX)) / math.log(2.0) + 0.5),
            int(math.log(short_side // _DIS_PATCH_PX) / math.log(2.0)),
        )
        self._dis.setFinestScale(min(self._dis_finest_level, coarsest_level))
        flow = self._dis.calc(src, dst, None)
        return np.ascontiguousarray(flow[:height, :width])


def check_flow_scale(scale: float) -> None:
    """Raise ValueError naming ``--flow-scale`` unless ``scale`` is a number from ``MIN_FLOW_SCALE`` to 1."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not MIN_FLOW_SCALE <= scale <= 1:
        raise ValueError(f"--flow-scale {scale!r}: expected a number from {MIN_FLOW_SCALE} to 1 (1 = full size)")


def warp_with_flow(image: torch.Tensor, flow: torch.Tensor, *, mode: str = "bilinear") -> torch.Tensor:
    """Sample ``image`` at ``p + flow(p)``: ``out(p) = image(p + flow(p))``, bilinear, bicubic or Lanczos.

    With the backward flow of the current input frame (``estimator(cur, prev)``)
    this pulls the previous dreamed frame into the current frame's coordinates.
    Samples falling outside the frame take the nearest edge pixel (border
    padding, like ``grid_sample(padding_mode="border", align_corners=True)``,
    which it matches to float precision). It is written with ``gather`` rather
    than ``grid_sample`` because grid_sample maps pixel coordinates to [-1, 1]
    and back, and in float32 that round trip alone moves samples: zero flow then
    changes a 1280x720 frame by up to 1e-4 (measured), and the error compounds
    as frames are warped again and again. Here zero or integer flow copies pixels
    exactly. Differentiable in ``image`` and in ``flow`` (a.e.).

    Bilinear sampling at a fractional position is a small blur (at half a pixel
    it halves the power of a 4 px period), so detail that is warped every frame
    fades within a few frames. ``mode="bicubic"`` (Keys' cubic convolution,
    a = -0.5; 16 taps) keeps 0.88 of that period's amplitude where bilinear
    keeps 0.71, and 0.69 of a 3 px period; ``mode="lanczos"`` (Lanczos-3, 36
    taps) keeps all of the 4 px period and 0.91 of the 3 px one. Both may
    overshoot the input's range by a little. The video carry uses Lanczos.

    Args:
        image: floating tensor (B, C, H, W), any range.
        flow: floating tensor (B, H, W, 2) in pixels, (dx, dy), on the same
            device; see :func:`flow_to_tensor`. Sample positions are computed in
            at least float32 so half-precision images keep sub-pixel accuracy.
        mode: ``"bilinear"`` (4 taps), ``"bicubic"`` (16) or ``"lanczos"`` (36).

    Returns:
        Tensor (B, C, H, W) with the device and dtype of ``image``.

    Raises:
        ValueError: wrong ranks, shapes that disagree, non-floating dtypes or
            different devices.

    Example::

        >>> image = torch.arange(25.0).view(1, 1, 5, 5)
        >>> flow = torch.zeros(1, 5, 5, 2); flow[..., 0] = 1.0  # one pixel to the right
        >>> warp_with_flow(image, flow)[0, 0, 0].tolist()
        [1.0, 2.0, 3.0, 4.0, 4.0]
    """
    _check_image_tensor(image)
    _check_flow_tensor(flow, image)
    if mode not in WARP_MODES:
        raise ValueError(f"mode={mode!r} is not a warp mode; choose one of {WARP_MODES}")
    batch, channels, height, width = image.shape
    coord_dtype = torch.promote_types(flow.dtype, torch.float32)
    flow = flow.to(coord_dtype)
    xs = torch.arange(width, device=image.device, dtype=coord_dtype).view(1, 1, width)
    ys = torch.arange(height, device=image.device, dtype=coord_dtype).view(1, height, 1)
    # Clamping to the outermost pixel centres (and the taps below) is border padding.
    x = (xs + flow[..., 0]).clamp(0, width - 1)
    y = (ys + flow[..., 1]).clamp(0, height - 1)
    x0 = x.floor()
    y0 = y.floor()
    x_taps = _interpolation_taps((x - x0).to(image.dtype).unsqueeze(1), mode)  # [(offset, (B, 1, H, W))]
    y_taps = _interpolation_taps((y - y0).to(image.dtype).unsqueeze(1), mode)
    # Each tap's column and row start are computed once, not once per pair:
    # on a GPU every operation is a kernel launch from this thread.
    x0, y0 = x0.long(), y0.long()
    cols = [(x0 + dx).clamp(0, width - 1) for dx, _ in x_taps]
    flat = image.reshape(batch, channels, height * width)

    def tap(row_start: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        index = (row_start + col).view(batch, 1, height * width).expand(batch, channels, -1)
        return flat.gather(2, index).view(batch, channels, height, width)

    out = 0
    for dy, wy in y_taps:
        row_start = (y0 + dy).clamp(0, height - 1) * width
        out = out + wy * sum(wx * tap(row_start, col) for (_, wx), col in zip(x_taps, cols))
    return out


WARP_MODES = ("bilinear", "bicubic", "lanczos")


def _interpolation_taps(t: torch.Tensor, mode: str) -> list[tuple[int, torch.Tensor]]:
    """(offset from the pixel left of / above the sample, weight) pairs for fractions ``t`` in [0, 1).

    Bicubic is Keys' cubic convolution with a = -0.5 (Catmull-Rom); Lanczos
    is the 3-lobed windowed sinc, normalised. Both sets of weights sum to 1
    and reproduce the pixels exactly at t = 0.
    """
    if mode == "bilinear":
        return [(0, 1 - t), (1, t)]
    if mode == "lanczos":
        # sinc(t - d) * sinc((t - d) / 3) from three sines for all six taps:
        # sin(pi (t - d)) = (-1)^d sin(pi t), and sin(pi (t - d) / 3) by the
        # angle-difference rule. Twelve torch.sinc calls took 6.2 ms of a
        # 320x180 warp's 24 ms on one CPU thread; this takes 1.1 ms.
        sin_t, sin_third, cos_third = torch.sin(math.pi * t), torch.sin(math.pi / 3 * t), torch.cos(math.pi / 3 * t)
        weights = []
        for d in range(-2, 4):
            window = sin_third * math.cos(math.pi * d / 3) - cos_third * math.sin(math.pi * d / 3)
            weight = ((-1) ** d * 3 / math.pi**2) * sin_t * window / (t - d).square()
            # At t = 0 the other taps are exactly 0 (sin_t is) and this one is 0/0: copy the pixel there.
            weights.append((d, torch.where(t == 0, 1.0, weight) if d == 0 else weight))
        total = sum(w for _, w in weights)
        return [(d, w / total) for d, w in weights]
    t2, t3 = t * t, t * t * t
    return [
        (-1, (-t3 + 2 * t2 - t) / 2),
        (0, (3 * t3 - 5 * t2 + 2) / 2),
        (1, (-3 * t3 + 4 * t2 + t) / 2),
        (2, (t3 - t2) / 2),
    ]


def flow_to_tensor(
    flow: np.ndarray | Sequence[np.ndarray],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Stack numpy flow fields into the (B, H, W, 2) tensor :func:`warp_with_flow` takes.

    Args:
        flow: one (H, W, 2) array, as :class:`FlowEstimator` returns, or a
            sequence of them with the same shape (one per batch item).
        device: where the tensor goes; pass the image's device.
        dtype: floating dtype of the tensor.

    Returns:
        Tensor (B, H, W, 2), B = 1 for a single array.

    Raises:
        ValueError: an array is not (H, W, 2), the shapes differ, or the list is empty.
    """
    arrays = [flow] if isinstance(flow, np.ndarray) else list(flow)
    if not arrays:
        raise ValueError("flow is an empty sequence; pass one (H, W, 2) array or a list of them")
    for index, array in enumerate(arrays):
        _check_flow_array(f"flow[{index}]", array)
        if array.shape != arrays[0].shape:
            raise ValueError(
                f"flow[{index}] has shape {array.shape} but flow[0] has {arrays[0].shape}; "
                "a batch needs flows of one frame size"
            )
    stacked = torch.from_numpy(np.stack(arrays))
    if device is not None and torch.device(device).type == "cuda":
        stacked = stacked.pin_memory()  # copied without waiting for the work queued on the GPU
    return stacked.to(device=device, non_blocking=True).to(dtype)


def consistency_mask(forward_flow, backward_flow, *, erode_px: int = 1):
    """Pixels of the current frame that the previous frame explains: 1 kept, 0 not.

    The forward-backward check of Sundaram et al. 2010 as used by Ruder et al.
    2016 (constants at the top of this module). With ``w`` the backward flow at
    p and ``ŵ`` the forward flow sampled at ``p + w``, p is inconsistent when
    the two do not cancel, when it is on a motion boundary of the backward flow,
    or when ``p + w`` lies outside the previous frame (content that entered
    through the border).

    Computed with torch on the flows' device: the video stage passes tensors
    already on the GPU (the numpy version of this check took 114 ms a 1280x720
    frame on a 16-core host, more than the dream itself).

    Args:
        forward_flow: flow previous → current, ``estimator(prev, cur)``:
            an (H, W, 2) float array, or a (B, H, W, 2) floating tensor.
        backward_flow: flow current → previous, ``estimator(cur, prev)``,
            of the same kind and shape.
        erode_px: grow the inconsistent regions by this many pixels (0 keeps the
            raw check). DIS matches 8 px patches, so flow next to an occlusion
            edge is dragged along by the other side of it and the check misses
            the first pixel or so. Measured with DIS medium on a textured square
            moving over a still or panning textured background (96x96 and
            320x240): 1 px lowered the mean warping error of the kept pixels by
            8-30 % and its 99.5th percentile by 10-38 %, for 1.4-5.6 % fewer
            kept pixels; 2 and 3 px kept improving it by less each.

    Returns:
        0.0 and 1.0 in the current frame's coordinates: a float32 (H, W) array
        for arrays, a (B, 1, H, W) tensor of the flows' dtype and device for tensors.

    Raises:
        ValueError: a flow is not (H, W, 2) / (B, H, W, 2), the shapes differ, or erode_px < 0.
    """
    arrays = isinstance(forward_flow, np.ndarray) or isinstance(backward_flow, np.ndarray)
    if arrays:
        _check_flow_array("forward_flow", forward_flow)
        _check_flow_array("backward_flow", backward_flow)
    if forward_flow.shape != backward_flow.shape:
        raise ValueError(
            f"forward_flow has shape {forward_flow.shape} but backward_flow has {backward_flow.shape}; "
            "both must come from the same pair of frames"
        )
    if isinstance(erode_px, bool) or not isinstance(erode_px, int) or erode_px < 0:
        raise ValueError(f"erode_px={erode_px!r} must be an integer >= 0 (0 turns erosion off)")
    if arrays:
        forward, backward = (torch.from_numpy(np.asarray(f, np.float32))[None] for f in (forward_flow, backward_flow))
        return _consistency_mask(forward, backward, erode_px)[0, 0].numpy()
    return _consistency_mask(forward_flow, backward_flow, erode_px)


def _consistency_mask(forward: torch.Tensor, backward: torch.Tensor, erode_px: int) -> torch.Tensor:
    """:func:`consistency_mask` of (B, H, W, 2) tensors → (B, 1, H, W)."""
    _, height, width, _ = backward.shape
    backward_c = backward.permute(0, 3, 1, 2)
    # Forward flow at p + w, i.e. where p came from in the previous frame.
    forward_at_source = warp_with_flow(forward.permute(0, 3, 1, 2), backward)
    round_trip = ((backward_c + forward_at_source) ** 2).sum(1, keepdim=True)
    backward_sq = (backward_c**2).sum(1, keepdim=True)
    magnitudes = backward_sq + (forward_at_source**2).sum(1, keepdim=True)
    consistent = round_trip <= OCCLUSION_RELATIVE_TOL * magnitudes + OCCLUSION_ABSOLUTE_TOL_PX2

    # Motion boundaries: central differences of the backward flow (one-sided at the edges, as np.gradient), in px / px.
    gradient_sq = (_central_difference(backward_c, 2) ** 2 + _central_difference(backward_c, 3) ** 2).sum(1, keepdim=True)
    consistent &= gradient_sq <= MOTION_BOUNDARY_RELATIVE_TOL * backward_sq + MOTION_BOUNDARY_ABSOLUTE_TOL

    # p + w must land on the previous frame; each pixel covers +-0.5 px around its centre.
    xs = torch.arange(width, device=backward.device, dtype=backward.dtype).view(1, 1, 1, width) + backward_c[:, :1]
    ys = torch.arange(height, device=backward.device, dtype=backward.dtype).view(1, 1, height, 1) + backward_c[:, 1:]
    consistent &= (xs >= -0.5) & (xs <= width - 0.5) & (ys >= -0.5) & (ys <= height - 0.5)

    mask = consistent.to(backward.dtype)
    if erode_px:
        # Outside pixels count as consistent, so the frame edge itself does not eat into the mask.
        padded = torch.nn.functional.pad(mask, (erode_px,) * 4, value=1.0)
        mask = -torch.nn.functional.max_pool2d(-padded, 2 * erode_px + 1, stride=1)
    return mask


def _central_difference(values: torch.Tensor, dim: int) -> torch.Tensor:
    """np.gradient along ``dim``: (f[i+1] - f[i-1]) / 2 inside, one-sided differences at both ends."""
    n = values.shape[dim]
    if n < 2:
        return torch.zeros_like(values)
    inner = (values.narrow(dim, 2, n - 2) - values.narrow(dim, 0, n - 2)) / 2
    first = values.narrow(dim, 1, 1) - values.narrow(dim, 0, 1)
    last = values.narrow(dim, n - 1, 1) - values.narrow(dim, n - 2, 1)
    return torch.cat([first, inner, last], dim)


def color_histogram_distance(prev_rgb: np.ndarray, cur_rgb: np.ndarray) -> float:
    """Bhattacharyya distance between the hue-saturation histograms of two frames.

    0 for identical colour distributions, 1 for disjoint ones; brightness is
    ignored by design (see _HUE_BINS). Frames may differ in size. This is the
    first signal of :func:`scene_cut`; log it to tune ``threshold`` for a clip.

    Args:
        prev_rgb: RGB uint8 frame (H, W, 3).
        cur_rgb: RGB uint8 frame (H', W', 3).

    Returns:
        Distance in [0, 1].

    Raises:
        ValueError: a frame is not RGB uint8 (H, W, 3).
    """
    check_rgb(prev_rgb, "prev_rgb")
    check_rgb(cur_rgb, "cur_rgb")
    prev_histogram = _hue_saturation_histogram(prev_rgb)
    cur_histogram = _hue_saturation_histogram(cur_rgb)
    return float(cv2.compareHist(prev_histogram, cur_histogram, cv2.HISTCMP_BHATTACHARYYA))


def _hue_saturation_histogram(frame: np.ndarray) -> np.ndarray:
    """Soft-binned hue x saturation histogram (_HUE_BINS, _SATURATION_BINS) of an RGB uint8 frame."""
    hsv = cv2.cvtColor(frame, cv2.COLOR_RGB2HSV)  # OpenCV hue is 0..179 for uint8
    histogram = cv2.calcHist([hsv], [0, 1], None, [_HUE_BINS, _SATURATION_BINS], [0, 180, 0, 256])
    hue_wrapped = np.concatenate([histogram[-1:], histogram, histogram[:1]])
    return cv2.GaussianBlur(hue_wrapped, (3, 3), 0, borderType=cv2.BORDER_REPLICATE)[1:-1]


def scene_cut(
    prev_rgb: np.ndarray,
    cur_rgb: np.ndarray,
    *,
    threshold: float = SCENE_CUT_HISTOGRAM_DISTANCE,
    inconsistent_fraction: float | None = None,
    inconsistent_threshold: float = SCENE_CUT_INCONSISTENT_FRACTION,
) -> bool:
    """Whether ``cur_rgb`` starts a new shot, so coherence with ``prev_rgb`` should reset.

    Two signals, either one suffices:

    * the colour histograms differ: :func:`color_histogram_distance` > ``threshold``.
      Cheap and blind to motion, but also blind to cuts between shots of similar
      colours, and to any cut in grey footage (no hue or saturation);
    * optionally, the flow check fails almost everywhere:
      ``inconsistent_fraction`` > ``inconsistent_threshold``, where
      ``inconsistent_fraction = 1 - consistency_mask(...).mean()`` for the same
      pair. This catches the cuts histograms miss. Tiny or textureless frames
      can fail the check without a cut, but then little would be carried over
      anyway.

    Args:
        prev_rgb: previous input frame, RGB uint8 (H, W, 3).
        cur_rgb: current input frame, RGB uint8 (H, W, 3).
        threshold: histogram distance above which it is a cut (see
            SCENE_CUT_HISTOGRAM_DISTANCE for the measurements behind 0.2).
        inconsistent_fraction: share of pixels in [0, 1] that failed
            :func:`consistency_mask`, or None to use the histograms alone.
        inconsistent_threshold: share above which it is a cut.

    Returns:
        True for a cut.

    Raises:
        ValueError: frames not RGB uint8, a threshold outside [0, 1], or
            ``inconsistent_fraction`` outside [0, 1].
    """
    for name, value in (("threshold", threshold), ("inconsistent_threshold", inconsistent_threshold)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}={value!r} must lie in [0, 1]")
    if inconsistent_fraction is not None and not 0.0 <= inconsistent_fraction <= 1.0:
        raise ValueError(
            f"inconsistent_fraction={inconsistent_fraction!r} must lie in [0, 1]: "
            "pass 1 - consistency_mask(...).mean(), or None"
        )
    if color_histogram_distance(prev_rgb, cur_rgb) > threshold:
        return True
    return inconsistent_fraction is not None and inconsistent_fraction > inconsistent_threshold


# CutDetector shrinks frames to this longest side before comparing them, so
# the flow check (DIS medium both ways, and the mask) sees 14-56x fewer pixels
# than at 720p-1080p: with the mask in numpy it took 25-31 ms a pair of
# 1280x720 frames against 380-510 ms at full size (the 2-core development
# machine, busy). Cuts stay far from the threshold (generated footage: a cut
# between two crops of one picture left 0.95-0.99 of the pixels inconsistent,
# a cut in grey footage 0.85-0.98, 4 px pans 0.05-0.18).
CUT_DETECT_SIDE_PX = 256


class CutDetector:
    """Scene cuts in a stream of frames, with both signals of :func:`scene_cut`.

    Each call takes the next frame and says whether it starts a new shot:
    the colour histograms differ, or the flow check (:func:`consistency_mask`
    both ways) fails on more than ``SCENE_CUT_INCONSISTENT_FRACTION`` of the
    pixels, which finds cuts between shots of similar colour and in grey
    footage. Frames are shrunk to ``CUT_DETECT_SIDE_PX`` first, so the video
    stage can afford a pass over the whole input before it starts.

    Example::

        detect = CutDetector()
        cuts = [t for t, frame in enumerate(frames) if detect(frame)]
    """

    def __init__(self) -> None:
        self._estimator = FlowEstimator("dis")
        self._previous: np.ndarray | None = None

    def __call__(self, rgb: np.ndarray) -> bool:
        """True when ``rgb`` (RGB uint8 (H, W, 3)) starts a shot; False for the first frame."""
        check_rgb(rgb, "rgb")
        height, width = rgb.shape[:2]
        scale = CUT_DETECT_SIDE_PX / max(height, width)
        small = rgb if scale >= 1 else cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
        previous, self._previous = self._previous, small
        if previous is None:
            return False
        backward = self._estimator(small, previous)
        forward = self._estimator(previous, small)
        inconsistent = 1.0 - float(consistency_mask(forward, backward).mean())
        return scene_cut(previous, small, inconsistent_fraction=inconsistent)


def _check_flow_array(name: str, flow: object) -> None:
    if not isinstance(flow, np.ndarray) or flow.ndim != 3 or flow.shape[2] != 2 or flow.dtype.kind != "f":
        raise ValueError(
            f"{name} must be a float array of shape (H, W, 2) as FlowEstimator returns, got {describe(flow)}"
        )


def _check_image_tensor(image: object) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or not image.is_floating_point():
        raise ValueError(f"image must be a floating tensor of shape (B, C, H, W), got {describe(image)}")


def _check_flow_tensor(flow: object, image: torch.Tensor) -> None:
    if not isinstance(flow, torch.Tensor) or flow.ndim != 4 or flow.shape[-1] != 2 or not flow.is_floating_point():
        raise ValueError(
            f"flow must be a floating tensor of shape (B, H, W, 2), got {describe(flow)}; see flow_to_tensor"
        )
    batch, _, height, width = image.shape
    if tuple(flow.shape[:3]) != (batch, height, width):
        raise ValueError(
            f"flow has shape {tuple(flow.shape)} but image {tuple(image.shape)} "
            f"needs ({batch}, {height}, {width}, 2): "
            "one flow per image, at the image's size"
        )
    if flow.device != image.device:
        raise ValueError(
            f"flow is on {flow.device} but image on {image.device}; "
            "build it with flow_to_tensor(flow, device=image.device)"
        )
