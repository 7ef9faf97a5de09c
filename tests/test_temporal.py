"""The temporal term of video dreaming: the pull towards the carried dream, and what it does to a clip.

Unit tests on small tensors for :func:`temporal_pull` and the anchor plumbing,
and one end-to-end check with the tiny model on the generated panning footage
of ``make_panning_clip``: pulling every step towards the carried start picture
makes consecutive frames agree along the flow (a lower warping error).
"""

from __future__ import annotations

import pytest
import torch

from conftest import read_png_frames
from dreamreel.pipeline.decode import read_frames
from dreamreel.pipeline.dream import ComputeSettings, DreamSettings, dream, temporal_pull
from dreamreel.pipeline.encode import EncodeSettings
from dreamreel.pipeline.metrics import measure
from dreamreel.pipeline.objectives import layer
from dreamreel.pipeline.video import VideoSettings, temporal_anchor, dream_video

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = ComputeSettings(device="cpu", precision="fp32")


def pictures(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 8, 10, generator=g), torch.rand(2, 3, 8, 10, generator=g)


def test_pull_moves_towards_the_anchor_only_where_the_weight_allows():
    x, anchor = pictures()
    weight = torch.zeros(2, 1, 8, 10)
    weight[:, :, :4] = 1.0  # top half trusted
    pulled = temporal_pull(x, anchor, weight, 0.4)
    torch.testing.assert_close(pulled[:, :, 4:], x[:, :, 4:], rtol=0, atol=0)
    assert (pulled - anchor)[:, :, :4].abs().sum() < 0.9 * (x - anchor)[:, :, :4].abs().sum()


def test_pull_of_a_smooth_difference_is_strength_times_weight_and_the_finest_detail_stays_freer():
    _, anchor = pictures(1)
    weight = torch.full((2, 1, 8, 10), 0.5)
    flat = anchor + 0.2
    torch.testing.assert_close(temporal_pull(flat, anchor, weight, 0.4), flat - 0.4 * 0.5 * 0.2)
    checker = anchor + 0.2 * ((torch.arange(8).view(8, 1) + torch.arange(10)) % 2 * 2 - 1)
    moved_checker = (temporal_pull(checker, anchor, weight, 0.4) - checker).abs().mean()
    assert moved_checker < 0.5 * 0.4 * 0.5 * 0.2  # pixel-level detail is pulled less than a third as hard


def test_pull_strength_may_be_a_0d_tensor():
    x, anchor = pictures(1)
    weight = torch.ones(2, 1, 8, 10)
    torch.testing.assert_close(temporal_pull(x, anchor, weight, torch.tensor(0.3)), temporal_pull(x, anchor, weight, 0.3))


def test_strength_0_dreams_exactly_as_without_an_anchor(tiny_model, textured):
    settings = DreamSettings(octaves=2, iterations=3, step=0.05, jitter=4, seed=2)
    plain = dream(tiny_model, textured, layer("conv2"), settings)
    anchor = (torch.rand_like(textured), torch.ones_like(textured[:, :1]), 0.0)
    torch.testing.assert_close(dream(tiny_model, textured, layer("conv2"), settings, anchor=anchor), plain, rtol=0, atol=0)


def test_a_strong_pull_keeps_the_dream_at_the_anchor_where_trusted(tiny_model, textured):
    settings = DreamSettings(octaves=2, iterations=4, step=0.05, jitter=4, seed=2)
    weight = torch.zeros_like(textured[:, :1])
    weight[..., :32] = 1.0  # left half trusted
    free = dream(tiny_model, textured, layer("conv2"), settings)
    held = dream(tiny_model, textured, layer("conv2"), settings, anchor=(textured, weight, 0.9))
    change_free = (free - textured).abs()
    change_held = (held - textured).abs()
    assert change_held[..., :32].mean() < 0.2 * change_free[..., :32].mean()
    assert change_held[..., 40:].mean() > 0.5 * change_free[..., 40:].mean()  # away from the border: free


def test_anchor_is_none_when_off_and_keeps_each_lanes_mask():
    starts = torch.rand(2, 3, 4, 4)
    masks = torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)])  # a fresh lane and a carried one
    assert temporal_anchor(starts, masks, 0.0) is None
    picture, weight, strength = temporal_anchor(starts, masks, 0.5)
    assert picture is starts and weight is masks and strength == 0.5


@pytest.mark.parametrize("value", [-0.1, 1.5, "0.3", True])
def test_temporal_setting_is_checked(value):
    with pytest.raises(ValueError, match="--temporal"):
        VideoSettings(temporal=value)


def test_temporal_lowers_the_warping_error_of_a_moving_clip(tmp_path, make_panning_clip, tiny_model, use_model):
    """12 frames panning 4 px right, 2 px down: the pulled dream follows the motion much better."""
    use_model(tiny_model)
    clip = make_panning_clip(tmp_path / "pan.mp4", frames=12)
    inputs = list(read_frames(clip))
    settings = DreamSettings(objective="mid", octaves=1, iterations=4, step=0.02, jitter=4, seed=1)
    reports = {}
    for temporal in (0.0, 0.6):
        out = tmp_path / f"temporal-{round(10 * temporal)}"
        video = VideoSettings(blend=1.0, iterations_next=4, batch=1, temporal=temporal)
        dream_video(clip, out, settings, CPU, video, EncodeSettings(speed="ultrafast"), progress=False)
        reports[temporal] = measure(read_png_frames(out), inputs)
    # Measured: warping error 0.033 without the pull, 0.014 with it; strength
    # 0.15 (pure feedback accumulates) and 0.066.
    assert reports[0.6].dream_strength > 0.02  # the pulled clip still dreams
    assert reports[0.6].warping_error < 0.6 * reports[0.0].warping_error, reports


def test_temporal_works_with_lanes_whose_first_frames_share_a_batch_with_carried_ones(
    tmp_path, make_panning_clip, tiny_model, use_model
):
    """--batch 2 with one step count for all frames: a lane's fresh first frame (weight 0) rides in the anchored batch."""
    use_model(tiny_model)
    clip = make_panning_clip(tmp_path / "pan.mp4", frames=12)
    inputs = list(read_frames(clip))
    settings = DreamSettings(objective="mid", octaves=1, iterations=3, step=0.02, jitter=4, seed=1)
    errors = {}
    for temporal in (0.0, 0.6):
        out = tmp_path / f"lanes-{round(10 * temporal)}"
        video = VideoSettings(blend=1.0, batch=2, warmup=2, temporal=temporal)
        dream_video(clip, out, settings, CPU, video, EncodeSettings(speed="ultrafast"), progress=False)
        frames = read_png_frames(out)
        assert len(frames) == 12
        errors[temporal] = measure(frames, inputs).warping_error
    assert errors[0.6] < 0.8 * errors[0.0], errors
