import subprocess
import sys

import pytest
import torch

from dreamreel.pipeline.efficientnet import EfficientNetLite0, SameConv2d
from dreamreel.pipeline.models import load_model


@pytest.fixture(scope="module")
def timm_and_ours():
    """timm's tf_efficientnet_lite0 and ours, both with the embedded weights."""
    import timm

    ours = load_model().net
    theirs = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    theirs.load_state_dict(ours.state_dict())
    return theirs, ours


def test_state_dict_names_are_timms(timm_and_ours):
    theirs, ours = timm_and_ours
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert {name for name, _ in ours.named_modules()} >= {"conv_stem", "blocks.4", "blocks.5.3", "conv_head"}


@pytest.mark.parametrize("size", [(224, 224), (73, 130), (90, 161)])
def test_same_outputs_as_timm_at_odd_and_even_sizes(timm_and_ours, size):
    theirs, ours = timm_and_ours
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    seen = {}
    for name, net in (("theirs", theirs), ("ours", ours)):
        hook = dict(net.named_modules())["blocks.4"].register_forward_hook(lambda m, i, out, n=name: seen.update({n: out}))
        with torch.no_grad():
            seen[name + " logits"] = net(x)
        hook.remove()
    torch.testing.assert_close(seen["ours"], seen["theirs"], rtol=0, atol=1e-5)
    torch.testing.assert_close(seen["ours logits"], seen["theirs logits"], rtol=0, atol=1e-4)


def test_same_padding_gives_ceil_of_size_over_stride_and_pads_bottom_right():
    conv = SameConv2d(1, 1, 3, stride=2, bias=False)
    torch.nn.init.zeros_(conv.weight)
    conv.weight.data[0, 0, 0, 0] = 1  # picks the top-left tap: shows where the padding went
    x = torch.arange(1, 17, dtype=torch.float32).view(1, 1, 4, 4)
    y = conv(x)
    assert y.shape[-2:] == (2, 2)
    # even size: one pixel of padding in all, at the bottom and right, so the top-left tap reads the input
    assert y.flatten().tolist() == [1, 3, 9, 11]
    assert conv(torch.ones(1, 1, 5, 7)).shape[-2:] == (3, 4)


def test_a_lite0_fine_tuned_in_timm_loads_with_its_own_classes(tmp_path):
    import timm

    torch.manual_seed(0)
    theirs = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=3).eval()
    torch.save(theirs.state_dict(), tmp_path / "mine.pth")
    (tmp_path / "labels.txt").write_text("me\nmy dog\nmy cat\n")
    model = load_model("efficientnet-lite0", weights=tmp_path / "mine.pth", labels=tmp_path / "labels.txt")
    assert isinstance(model.net, EfficientNetLite0) and model.num_classes == 3
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model.net(x), theirs(x), rtol=0, atol=1e-5)


def test_a_dream_on_the_default_model_imports_neither_timm_nor_torchvision(tmp_path):
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "in.png"), np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    code = (
        "import sys; from dreamreel.cli.main import main; "
        f"assert main(['image', {str(tmp_path / 'in.png')!r}, {str(tmp_path / 'out.png')!r}, "
        "'--octaves', '1', '--iterations', '1', '--device', 'cpu', '--quiet']) == 0; "
        "print(sorted({k.split('.')[0] for k in sys.modules} & {'timm', 'torchvision'})); "
        "from dreamreel.pipeline.models import load_model; print(load_model().class_names[285]); "
        "print('torchvision' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[-3:] == ["[]", "Egyptian cat", "True"]  # class names: read from torchvision when first asked for
    assert out[0].startswith("wrote") and (tmp_path / "out.png").is_file()


def test_traced_network_pads_for_the_size_it_is_given():
    net = load_model().net
    with torch.no_grad():
        traced = torch.jit.trace(net, torch.rand(1, 3, 64, 64))
        for size in ((65, 97), (100, 150)):
            x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(1))
            torch.testing.assert_close(traced(x), net(x), rtol=0, atol=1e-5)


def test_stem_and_head_stay_before_their_activation_with_folded_batch_norms():
    from dreamreel.pipeline.models import fold_batchnorm

    model = load_model()
    folded = fold_batchnorm(model)
    assert folded is not model
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        acts = folded(x, ["conv_stem", "conv_head", "logits"])  # the forward runs past both layers
        alone = model(x, ["conv_stem"])["conv_stem"]
    # conv_stem is the convolution before its batch norm; folded, the norm lives in the weights
    bn = model.net.bn1
    expected = (alone - bn.running_mean.view(1, -1, 1, 1)) / (bn.running_var.view(1, -1, 1, 1) + bn.eps).sqrt()
    expected = expected * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(acts["conv_stem"], expected, rtol=1e-4, atol=1e-4)
    assert acts["conv_stem"].min() < 0 and acts["conv_head"].min() < 0  # not yet clipped by ReLU6


def test_default_network_dreams_on_each_device_as_on_the_cpu(device):
    """The real network on the GPU path: folded batch norms, SAME padding inside captured CUDA graphs."""
    from dreamreel.pipeline import dream as D
    from dreamreel.pipeline.dream import DreamSettings
    from dreamreel.pipeline.models import prepare
    from dreamreel.pipeline.objectives import parse_objective

    x = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 16, generator=torch.Generator().manual_seed(2)), size=(45, 67))
    settings = DreamSettings(objective="mid", octaves=2, iterations=3, jitter=4)
    pictures = {}
    for where in ("cpu", device):
        model = prepare(load_model(), torch.device(where))
        scores = []
        pictures[where] = D.dream(model, x.to(where), parse_objective("mid", model), settings,
                                  generator=[D.frame_generator(0, 0)], graphs=D.StepGraphs(), on_step=scores.append).cpu()
        assert len(scores) == 6 and scores[-1] > scores[-3]  # it rises over the last octave's steps
    assert (pictures[device] - pictures["cpu"]).abs().max() < 4 / 255


def test_lite1_has_timms_lite1_layout_and_packaged_weights_must_fit(tmp_path):
    """The measuring network: Lite0's stages with ceil(1.1x) the inner stages' blocks, as timm builds tf_efficientnet_lite1."""
    import timm

    from dreamreel.pipeline.efficientnet import LITE1_DEPTH, load_packaged_weights

    ours = EfficientNetLite0(depth=LITE1_DEPTH)
    theirs = timm.create_model("tf_efficientnet_lite1", pretrained=False)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in theirs.state_dict().items()]
    assert [len(stage) for stage in ours.blocks] == [1, 3, 3, 4, 4, 5, 1]
    torch.save(EfficientNetLite0().state_dict(), tmp_path / "lite0.pth")
    with pytest.raises(RuntimeError, match="packaged weights have 296 tensors, lite1 expects 386"):
        load_packaged_weights(ours, str(tmp_path / "lite0.pth"), "lite1")
