"""Tests for pipeline/flow.py on generated footage: a textured image panned by whole pixels."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import textured_frame
from dreamreel.pipeline.flow import (
    DIS_PRESETS,
    FLOW_METHODS,
    FlowEstimator,
    color_histogram_distance,
    consistency_mask,
    flow_to_tensor,
    scene_cut,
    warp_with_flow,
)

FLOAT_DTYPES = [torch.float32, torch.float64]


def panned_pair(height: int, width: int, shift_xy: tuple[int, int], seed: int = 0):
    """(prev, cur) crops of one texture with cur(p) = prev(p + shift_xy), i.e. backward flow = shift."""
    margin = 12
    big = textured_frame(height + 2 * margin, width + 2 * margin, seed)
    dx, dy = shift_xy
    prev = big[margin : margin + height, margin : margin + width]
    cur = big[margin + dy : margin + dy + height, margin + dx : margin + dx + width]
    return prev, cur


def to_tensor(frame: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.from_numpy(frame).permute(2, 0, 1).unsqueeze(0).to(dtype) / 255


# --- FlowEstimator -----------------------------------------------------------


def test_flow_methods():
    assert FLOW_METHODS == ("dis", "farneback", "none")


@pytest.mark.parametrize(
    ("method", "preset"), [("dis", preset) for preset in DIS_PRESETS] + [("farneback", "medium")]
)
@pytest.mark.parametrize(("height", "width"), [(48, 64), (63, 65)])
def test_estimator_recovers_translation(method, preset, height, width):
    prev, cur = panned_pair(height, width, (-3, 2))
    flow = FlowEstimator(method, preset=preset)(cur, prev)
    assert flow.shape == (height, width, 2) and flow.dtype == np.float32
    interior = flow[8:-8, 8:-8].reshape(-1, 2)
    np.testing.assert_allclose(interior.mean(0), [-3, 2], atol=0.5)


@pytest.mark.parametrize("scale", [0.5, 0.25])
def test_flow_at_a_reduced_scale_is_in_full_size_pixels(scale):
    prev, cur = panned_pair(120, 160, (-6, 4))
    flow = FlowEstimator("dis", scale=scale)(cur, prev)
    assert flow.shape == (120, 160, 2) and flow.dtype == np.float32
    np.testing.assert_allclose(flow[16:-16, 16:-16].reshape(-1, 2).mean(0), [-6, 4], atol=0.5)
    full = FlowEstimator("dis")(cur, prev)
    assert not np.array_equal(flow, full)  # computed on smaller frames, not the full ones


@pytest.mark.parametrize("scale", [0.1, 1.5, True, "0.5"])
def test_a_flow_scale_out_of_range_names_the_flag(scale):
    with pytest.raises(ValueError, match=r"--flow-scale .*: expected a number from 0.125 to 1"):
        FlowEstimator("dis", scale=scale)


def test_estimator_forward_is_opposite_of_backward():
    prev, cur = panned_pair(64, 64, (2, -1))
    estimator = FlowEstimator()
    np.testing.assert_allclose(estimator(prev, cur)[8:-8, 8:-8].mean((0, 1)), [-2, 1], atol=0.5)


def test_estimator_none_is_zero():
    prev, cur = panned_pair(32, 40, (3, 0))
    flow = FlowEstimator("none")(cur, prev)
    assert flow.shape == (32, 40, 2) and flow.dtype == np.float32 and not flow.any()


@pytest.mark.parametrize(
    ("height", "width"),
    # 9x40, 12x40, 10x200 and 16x200 crashed the process inside OpenCV's DIS
    # before the finest pyramid level was capped; below 8x12 DIS refuses to run.
    [(1, 1), (5, 7), (9, 40), (12, 40), (40, 12), (10, 200), (16, 200), (31, 33), (32, 32)],
)
def test_estimator_any_size(height, width):
    frame = textured_frame(max(height, 8), max(width, 8), seed=1)[:height, :width]
    for preset in DIS_PRESETS:
        flow = FlowEstimator("dis", preset=preset)(frame, frame)
        assert flow.shape == (height, width, 2)
        assert np.abs(flow).max() < 1.0
    # Farneback runs at any size too, though on frames this small its 15 px
    # window sees mostly border and the flow is noise.
    assert FlowEstimator("farneback")(frame, frame).shape == (height, width, 2)


def test_estimator_rejects_unknown_method_and_preset():
    with pytest.raises(ValueError, match=r"method='raft'.*'dis', 'farneback', 'none'"):
        FlowEstimator("raft")
    with pytest.raises(ValueError, match=r"preset='slow'.*'ultrafast'"):
        FlowEstimator("dis", preset="slow")


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((32, 32), np.uint8),
        np.zeros((32, 32, 4), np.uint8),
        np.zeros((32, 32, 3), np.float32),
        [[0, 0, 0]],
    ],
)
def test_estimator_rejects_non_rgb_uint8(bad):
    good = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match=r"src_rgb must be an RGB uint8 array of shape \(H, W, 3\)"):
        FlowEstimator()(bad, good)


def test_estimator_rejects_size_mismatch():
    with pytest.raises(ValueError, match=r"\(32, 32, 3\) but dst_rgb has \(32, 30, 3\)"):
        FlowEstimator()(np.zeros((32, 32, 3), np.uint8), np.zeros((32, 30, 3), np.uint8))


# --- warp_with_flow ----------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES + [torch.float16])
def test_warp_keeps_device_and_dtype(device, dtype):
    image = torch.rand(2, 3, 5, 5, device=device).to(dtype)
    flow = torch.rand(2, 5, 5, 2, device=device)
    out = warp_with_flow(image, flow)
    assert out.shape == image.shape and out.dtype == dtype and out.device == image.device


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(("height", "width"), [(5, 5), (37, 53), (360, 640)])
def test_warp_zero_flow_is_identity(device, dtype, height, width):
    image = torch.rand(2, 3, height, width, dtype=dtype, device=device)
    out = warp_with_flow(image, torch.zeros(2, height, width, 2, dtype=dtype, device=device))
    assert torch.allclose(out, image, rtol=0, atol=1e-6)
    assert torch.equal(out, image)  # in fact exact: no coordinate round trip


def test_warp_integer_translation(device):
    image = torch.rand(1, 3, 20, 30, device=device)
    flow = torch.zeros(1, 20, 30, 2, device=device)
    flow[..., 0], flow[..., 1] = 4.0, -2.0  # out(x, y) = image(x + 4, y - 2)
    out = warp_with_flow(image, flow)
    assert torch.equal(out[..., 2:, :-4], image[..., :-2, 4:])
    # Border padding: samples beyond the right edge repeat the last column.
    assert torch.equal(out[..., 2:, -1], image[..., :-2, -1])


def test_warp_matches_grid_sample_conventions():
    torch.manual_seed(0)
    height, width = 17, 23
    image = torch.rand(2, 3, height, width, dtype=torch.float64)
    flow = (torch.rand(2, height, width, 2, dtype=torch.float64) - 0.5) * 12  # some samples leave the frame
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    grid = torch.stack(
        [2 * (xs + flow[..., 0]) / (width - 1) - 1, 2 * (ys + flow[..., 1]) / (height - 1) - 1], dim=-1
    )
    expected = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)
    assert torch.allclose(warp_with_flow(image, flow), expected, atol=1e-10)


def test_warp_with_estimated_flow_reproduces_current_frame():
    prev, cur = panned_pair(64, 80, (3, -2))
    flow = flow_to_tensor(FlowEstimator()(cur, prev))
    warped = warp_with_flow(to_tensor(prev), flow)
    interior = (warped - to_tensor(cur))[..., 6:-6, 6:-6].abs()
    assert interior.mean() < 0.01  # 1 % of full range; grain alone gives ~0.05 if misaligned


def test_warp_gradients():
    torch.manual_seed(0)
    image = torch.rand(1, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    # Fractional offsets away from integers (where bilinear weights have kinks).
    offsets = 0.25 + 0.5 * torch.rand(1, 5, 5, 2, dtype=torch.float64)
    flow = (offsets * torch.tensor([1.0, -1.0], dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(warp_with_flow, (image, flow))


@pytest.mark.parametrize(
    ("image", "flow", "message"),
    [
        (torch.rand(3, 5, 5), torch.zeros(1, 5, 5, 2), r"image must be a floating tensor of shape \(B, C, H, W\)"),
        (torch.zeros(1, 3, 5, 5, dtype=torch.uint8), torch.zeros(1, 5, 5, 2), r"got torch.uint8"),
        (torch.rand(1, 3, 5, 5), torch.zeros(1, 5, 5, 3), r"flow must be a floating tensor of shape \(B, H, W, 2"),
        (torch.rand(1, 3, 5, 5), torch.zeros(1, 5, 6, 2), r"needs \(1, 5, 5, 2\)"),
        (torch.rand(2, 3, 5, 5), torch.zeros(1, 5, 5, 2), r"needs \(2, 5, 5, 2\)"),
        (torch.rand(1, 3, 5, 5), torch.zeros(1, 5, 5, 2, device="meta"), r"flow is on meta but image on cpu"),
    ],
)
def test_warp_rejects_bad_inputs(image, flow, message):
    with pytest.raises(ValueError, match=message):
        warp_with_flow(image, flow)


# --- flow_to_tensor ----------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_flow_to_tensor(dtype):
    flow = np.random.default_rng(0).random((6, 7, 2), dtype=np.float32)
    single = flow_to_tensor(flow, dtype=dtype)
    assert single.shape == (1, 6, 7, 2) and single.dtype == dtype and single.device.type == "cpu"
    batch = flow_to_tensor([flow, -flow], device="cpu", dtype=dtype)
    assert batch.shape == (2, 6, 7, 2)
    assert torch.equal(batch[1], -torch.from_numpy(flow).to(dtype))


def test_flow_to_tensor_rejects_bad_inputs():
    with pytest.raises(ValueError, match="empty"):
        flow_to_tensor([])
    with pytest.raises(ValueError, match=r"flow\[0\] must be a float array of shape \(H, W, 2\)"):
        flow_to_tensor(np.zeros((6, 7), np.float32))
    with pytest.raises(ValueError, match=r"flow\[1\] has shape \(6, 8, 2\) but flow\[0\] has \(6, 7, 2\)"):
        flow_to_tensor([np.zeros((6, 7, 2), np.float32), np.zeros((6, 8, 2), np.float32)])


# --- consistency_mask --------------------------------------------------------


def constant_flow(height: int, width: int, dx: float, dy: float) -> np.ndarray:
    return np.broadcast_to(np.float32([dx, dy]), (height, width, 2)).copy()


@pytest.mark.parametrize("erode_px", [0, 1])
def test_mask_exact_pan_keeps_all_but_disoccluded_strip(erode_px):
    backward = constant_flow(20, 30, 3, 0)  # cur(x) = prev(x + 3): the right 3 columns are new
    mask = consistency_mask(-backward, backward, erode_px=erode_px)
    assert mask.dtype == np.float32 and mask.shape == (20, 30)
    assert set(np.unique(mask)) == {0.0, 1.0}
    strip = 3 + erode_px
    assert not mask[:, -strip:].any()
    assert mask[:, :-strip].all()  # the frame edges themselves are not eroded


def test_mask_of_tensors_on_each_device_equals_the_arrays_mask(device):
    backward = constant_flow(20, 30, 2.5, -1)
    backward[8:12, 10:14] = (-4, 3)  # a patch moving against the pan: a motion boundary and an occlusion
    forward = -backward
    expected = consistency_mask(forward, backward)
    mask = consistency_mask(*(torch.from_numpy(f)[None].to(device) for f in (forward, backward)))
    assert mask.shape == (1, 1, 20, 30) and mask.device.type == device
    assert 0 < expected.mean() < 1 and torch.equal(mask[0, 0].cpu(), torch.from_numpy(expected))


def test_mask_estimated_pan():
    prev, cur = panned_pair(64, 80, (4, 2))  # new content enters on the right and at the bottom
    estimator = FlowEstimator()
    mask = consistency_mask(estimator(prev, cur), estimator(cur, prev))
    assert not mask[:, -4:].any() and not mask[-2:, :].any()
    assert mask[:-5, :-7].mean() > 0.97


def test_mask_rejects_flows_that_disagree():
    backward = constant_flow(10, 10, 2, 1)
    assert not consistency_mask(backward, backward, erode_px=0)[:, :6].any()  # forward should be -backward


def test_mask_marks_motion_boundaries():
    # The right half slides 2 px left over a still left half: cur(x) = prev(x + 2) for x >= 10.
    backward = np.zeros((10, 20, 2), np.float32)
    backward[:, 10:, 0] = 2.0
    forward = np.zeros_like(backward)
    forward[:, 12:, 0] = -2.0  # prev columns 10 and 11 get covered; they keep zero flow
    mask = consistency_mask(forward, backward, erode_px=0)
    assert not mask[:, 9:11].any()  # the two columns on the step, caught by the flow gradient alone
    assert not mask[:, 18:].any()  # these come from beyond the previous frame's right edge
    assert mask[:, :9].all() and mask[:, 11:18].all()


def test_mask_rejects_bad_inputs():
    flow = np.zeros((8, 8, 2), np.float32)
    with pytest.raises(ValueError, match=r"forward_flow has shape \(8, 8, 2\) but backward_flow has \(8, 9, 2\)"):
        consistency_mask(flow, np.zeros((8, 9, 2), np.float32))
    with pytest.raises(ValueError, match=r"backward_flow must be a float array of shape \(H, W, 2\)"):
        consistency_mask(flow, np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(ValueError, match=r"erode_px=-1 must be an integer >= 0"):
        consistency_mask(flow, flow, erode_px=-1)


# --- scene_cut ---------------------------------------------------------------


@pytest.mark.parametrize(("height", "width"), [(48, 80), (96, 96)])
def test_scene_cut_between_unrelated_textures(height, width):
    assert scene_cut(textured_frame(height, width, 1), textured_frame(height, width, 2))
    assert scene_cut(textured_frame(height, width, 3), textured_frame(height, width, 4))


@pytest.mark.parametrize(("height", "width"), [(48, 80), (96, 96)])
def test_no_scene_cut_for_pan_or_brightness_change(height, width):
    prev, cur = panned_pair(height, width, (10, 0), seed=3)
    assert not scene_cut(prev, cur)
    darker = (prev * 0.9).astype(np.uint8)
    brighter = np.clip(prev * 1.1, 0, 255).astype(np.uint8)
    assert not scene_cut(prev, darker)
    assert not scene_cut(prev, brighter)


def test_scene_cut_from_inconsistent_fraction():
    frame = textured_frame(48, 64, 0)
    assert color_histogram_distance(frame, frame) == pytest.approx(0.0, abs=1e-6)
    assert scene_cut(frame, frame, inconsistent_fraction=0.9)
    assert not scene_cut(frame, frame, inconsistent_fraction=0.1)


def test_scene_cut_rejects_bad_inputs():
    frame = textured_frame(16, 16, 0)
    with pytest.raises(ValueError, match=r"inconsistent_fraction=1.5 must lie in \[0, 1\]"):
        scene_cut(frame, frame, inconsistent_fraction=1.5)
    with pytest.raises(ValueError, match=r"threshold=2 must lie in \[0, 1\]"):
        scene_cut(frame, frame, threshold=2)
    with pytest.raises(ValueError, match=r"cur_rgb must be an RGB uint8 array"):
        scene_cut(frame, frame[..., 0])


def test_bicubic_and_lanczos_warps_copy_whole_pixels_and_keep_fine_detail_that_bilinear_blurs(device):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 12, 16, generator=g).to(device)
    whole = torch.zeros(1, 12, 16, 2, device=device)
    whole[..., 0], whole[..., 1] = 2.0, -1.0
    flat = torch.full((1, 1, 12, 16), 0.3, device=device)
    half = torch.zeros(1, 12, 16, 2, device=device)
    half[..., 0] = 0.5
    for mode in ("bicubic", "lanczos"):
        torch.testing.assert_close(warp_with_flow(image, whole, mode=mode), warp_with_flow(image, whole), rtol=0, atol=0)
        torch.testing.assert_close(warp_with_flow(image, torch.zeros_like(whole), mode=mode), image, rtol=0, atol=0)
        torch.testing.assert_close(warp_with_flow(flat, half, mode=mode), flat)
    # A 4 px period shifted by half a pixel: amplitude 0.88 bicubic, 0.71 bilinear (away from the
    # borders), 1.02 Lanczos (its ripple overshoots a little); a 3 px period: 0.69 bicubic, 0.91 Lanczos.
    amplitude = {}
    for period in (4, 3):
        stripes = torch.cos((torch.arange(30.0, device=device) - 0.5) * 2 * torch.pi / period).expand(1, 1, 12, 30).contiguous()
        shift = torch.zeros(1, 12, 30, 2, device=device)
        shift[..., 0] = 0.5
        for mode in ("bilinear", "bicubic", "lanczos"):
            amplitude[mode, period] = warp_with_flow(stripes, shift, mode=mode)[..., 6:24].abs().max().item()
    assert amplitude["bilinear", 4] == pytest.approx(0.5**0.5, abs=1e-5)
    assert amplitude["bicubic", 4] == pytest.approx(0.625 * 2**0.5, abs=1e-5)
    assert amplitude["lanczos", 4] == pytest.approx(1.022, abs=1e-3)
    assert amplitude["lanczos", 3] == pytest.approx(0.908, abs=1e-3)
    assert amplitude["bicubic", 3] == pytest.approx(0.688, abs=1e-3)
    with pytest.raises(ValueError, match="mode='nearest' is not a warp mode"):
        warp_with_flow(image, whole, mode="nearest")
