import pytest
import torch

from dreamreel.pipeline import param
from dreamreel.pipeline.dream import frame_generator


@pytest.mark.parametrize("size", [(32, 48), (37, 51), (64, 64)])
def test_fft_of_a_picture_and_back_is_the_identity_within_one_level(size):
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    x[0, :, :4] = 0.0  # pure black and white: the logit's ends
    x[1, :, -4:] = 1.0
    p = param.encode(x, "fft")
    assert p.shape == (2, 3, size[0], size[1] // 2 + 1, 2)
    back = param.decode(p, "fft", size)
    assert back.shape == x.shape and (back - x).abs().max() < 1 / 255


def test_pixel_parameters_are_a_copy_of_the_picture():
    x = torch.rand(1, 3, 8, 8)
    p = param.encode(x, "pixel")
    assert torch.equal(param.decode(p, "pixel", (8, 8)), x)
    p += 1
    assert x.max() <= 1  # a copy: optimising it leaves the start picture alone


def test_any_spectrum_decodes_to_a_picture_in_range_and_gradients_reach_it():
    p = (100 * torch.randn(1, 3, 16, 9, 2, generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    x = param.decode(p, "fft", (16, 16))
    assert 0 <= x.min() and x.max() <= 1
    x.mean().backward()
    assert p.grad is not None and p.grad.abs().sum() > 0


def test_spectrum_weights_fall_as_one_over_frequency():
    weights = param.spectrum_weights(64, 64)
    assert weights.shape == (64, 33)
    # 4 and 8 cycles across: twice the frequency, half the weight; the mean shares the lowest frequency's weight
    assert torch.isclose(weights[0, 4] / weights[0, 8], torch.tensor(2.0))
    assert weights[0, 0] == weights[0, 1] == weights.max()


def test_colour_matrix_is_imagenets_decorrelation_with_the_longest_column_one():
    m = param.colour_matrix()
    assert torch.isclose(m.norm(dim=0).max(), torch.tensor(1.0))
    # the first decorrelated channel is brightness: the same sign and nearly the same weight in R, G and B
    assert (m[:, 0] > 0).all() and m[:, 0].max() / m[:, 0].min() < 1.1


def test_unknown_parametrisation_names_the_flag():
    with pytest.raises(ValueError, match="--param 'wavelet': expected one of pixel, fft"):
        param.encode(torch.rand(1, 3, 8, 8), "wavelet")


def test_random_views_are_those_of_each_image_alone_and_in_range():
    together = param.random_views([frame_generator(0, 1), frame_generator(0, 2)], 5, 0.1, 10.0)
    alone = param.random_views([frame_generator(0, 2)], 5, 0.1, 10.0)
    assert together.shape == (5, 2, 2) and torch.equal(together[:, 1:], alone)
    assert ((together[..., 0] - 1).abs() <= 0.1).all() and (together[..., 1].abs() <= 10).all()
    assert together[..., 1].std() > 1  # they do vary
    still = param.random_views([frame_generator(0, 1)], 3, 0.0, 0.0)
    assert torch.equal(still, torch.tensor([1.0, 0.0]).expand(3, 1, 2))


def test_rotate_scale_identity_quarter_turn_and_magnification():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(param.rotate_scale(x, torch.tensor([[1.0, 0.0]])), x, atol=1e-5)
    turned = param.rotate_scale(x, torch.tensor([[1.0, 90.0]]))
    assert torch.allclose(turned, torch.rot90(x, 1, dims=(2, 3)), atol=1e-5) or torch.allclose(
        turned, torch.rot90(x, -1, dims=(2, 3)), atol=1e-5
    )
    # per image: the first turned, the second magnified 2x about its centre
    stripes = torch.zeros(2, 1, 16, 16)
    stripes[..., ::4] = stripes[..., 1::4] = 1.0  # period 4 along x
    views = torch.tensor([[1.0, 90.0], [2.0, 0.0]])
    out = param.rotate_scale(stripes, views)
    assert torch.allclose(out[0], stripes[0].transpose(1, 2), atol=1e-5) or torch.allclose(
        out[0], stripes[0].transpose(1, 2).flip(1), atol=1e-5
    )
    row = out[1, 0, 8]
    changes = (row[1:] - row[:-1]).abs().gt(0.5).sum()
    assert changes < (stripes[1, 0, 8, 1:] - stripes[1, 0, 8, :-1]).abs().gt(0.5).sum()  # fewer, wider stripes


def test_rotate_scale_is_differentiable():
    x = torch.rand(1, 3, 12, 20).requires_grad_(True)
    param.rotate_scale(x, torch.tensor([[1.1, 7.0]])).sum().backward()
    assert x.grad.abs().sum() > 0
