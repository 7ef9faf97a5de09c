import hashlib
import re
from pathlib import Path

import pytest
import torch
import torchvision

from dreamreel.pipeline import models
from dreamreel.pipeline.models import LOGITS, WeightsUnavailable, load_model

DATA = Path(__file__).parent / "data"


def load_photo(size: int = 224) -> torch.Tensor:
    import cv2

    rgb = cv2.imread(str(DATA / "chelsea.jpg"))[:, :, ::-1].copy()
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)


def test_embedded_model_classifies_a_real_photo_offline(monkeypatch):
    monkeypatch.setenv(models.OFFLINE_ENV, "1")
    model = load_model("efficientnet-lite0")
    with torch.no_grad():
        logits = model(load_photo(), [LOGITS])[LOGITS]
    top = int(logits.argmax())
    assert top == 285, f"expected Egyptian cat (285), got {top} {model.class_names[top]}"
    assert model.class_names[285] == "Egyptian cat"
    assert model.resolve_class("egyptian_cat") == 285


def test_embedded_model_layers_and_aliases():
    model = load_model()
    assert model.layer_names[:2] == ["conv_stem", "blocks.0"]
    for alias in ("low", "mid", "high"):
        assert model.resolve_layer(alias) in model.layer_names
    acts = model(torch.rand(1, 3, 64, 64), ["blocks.2"])
    assert set(acts) == {"blocks.2"} and acts["blocks.2"].shape[1] == 40


def test_unknown_layer_suggests_nearest_names(tiny_model):
    with pytest.raises(ValueError, match=r"unknown layer 'conv4'.*did you mean conv3, conv2, conv1"):
        tiny_model.resolve_layer("conv4")


def test_forward_stops_after_the_last_needed_layer(tiny_model):
    calls = []
    tiny_model.net.head.register_forward_hook(lambda *a: calls.append(1))
    tiny_model(torch.rand(1, 3, 16, 16), ["conv2"])
    assert calls == []
    tiny_model(torch.rand(1, 3, 16, 16), ["conv2", LOGITS])
    assert calls == [1]


def test_layer_hooks_stay_and_record_only_for_the_pass_that_asks(tiny_model):
    """The hooks stay on their layers (a compiled step cannot add them), so they must not disturb other passes."""
    x = torch.rand(1, 3, 16, 16)
    both = tiny_model(x, ["conv1", "conv2"])
    hooks = sum(len(m._forward_hooks) for m in tiny_model.net.modules())
    assert set(tiny_model(x, [LOGITS])) == {LOGITS}  # conv1's and conv2's hooks neither record nor stop this pass
    assert set(tiny_model(x, ["conv2"])) == {"conv2"} and torch.equal(tiny_model(x, ["conv2"])["conv2"], both["conv2"])
    tiny_model(x, ["conv1", "conv2"])
    assert sum(len(m._forward_hooks) for m in tiny_model.net.modules()) == hooks == 2  # one per layer, not per pass


def test_a_folded_layer_is_hooked_again():
    model = models.DreamModel(
        ConvBnNet(), mean=(0.5,) * 3, std=(0.25,) * 3, layer_names=["conv", "block"], aliases={}, name="convbn"
    )
    x = torch.rand(1, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(x, ["conv"])["conv"]  # hooks conv, which folding then replaces with a fused copy
        folded = models.fold_batchnorm(model)
        assert folded.net.conv is not model.net.conv
        after = folded(x, ["conv"])["conv"]
    bn = model.net.bn
    expected = (before - bn.running_mean.view(1, -1, 1, 1)) / (bn.running_var.view(1, -1, 1, 1) + bn.eps).sqrt()
    assert torch.allclose(after, expected * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1), atol=1e-5)


def test_pick_compile_compiles_on_cuda_by_default_and_as_asked():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not models.pick_compile("auto", cpu) and models.pick_compile("auto", cuda)  # CPU: measured slower
    assert models.pick_compile("on", cpu) and not models.pick_compile("off", cuda)
    with pytest.raises(ValueError, match=r"--compile 'yes': expected one of auto, on, off"):
        models.pick_compile("yes", cpu)


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown model 'googlenett': did you mean googlenet"):
        load_model("googlenett")


def test_fine_tuned_torchvision_state_dict_with_own_classes(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.googlenet(weights=None, num_classes=3, aux_logits=True, init_weights=False)
    torch.save({"state_dict": net.state_dict()}, tmp_path / "mine.pth")
    (tmp_path / "labels.txt").write_text("me\nmy dog\n\nmy cat\n")
    model = load_model("googlenet", weights=tmp_path / "mine.pth", labels=tmp_path / "labels.txt")
    assert model.num_classes == 3 and model.class_names == ["me", "my dog", "my cat"]
    assert model.resolve_class("my_dog") == 1
    out = model(torch.rand(2, 3, 96, 96), ["inception4c", LOGITS])
    assert out[LOGITS].shape == (2, 3) and out["inception4c"].shape[1] == 512


def test_wrong_label_count_and_wrong_file_are_clear(tmp_path):
    net = torchvision.models.googlenet(weights=None, num_classes=3, aux_logits=False, init_weights=False)
    torch.save(net.state_dict(), tmp_path / "mine.pth")
    (tmp_path / "labels.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"--labels .*labels\.txt has 2 names but model googlenet has 3 outputs"):
        load_model("googlenet", weights=tmp_path / "mine.pth", labels=tmp_path / "labels.txt")
    with pytest.raises(ValueError, match="not a vgg16 state dict"):
        load_model("vgg16", weights=tmp_path / "mine.pth")
    (tmp_path / "junk.pth").write_text("not a tensor file")
    with pytest.raises(ValueError, match="not a PyTorch state-dict file"):
        load_model("googlenet", weights=tmp_path / "junk.pth")


def test_cached_torchvision_weights_are_found_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv(models.OFFLINE_ENV, "1")
    with pytest.raises(WeightsUnavailable, match=r"expected .*googlenet-1378be20\.pth.*--weights FILE"):
        load_model("googlenet")
    assert "download on first use" in models.weights_status("googlenet")
    # torchvision's own file keeps the auxiliary heads: write one like it
    net = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    path = models.cache_path(models.torchvision_weights("googlenet").url)
    path.parent.mkdir(parents=True)
    torch.save(net.state_dict(), path)
    model = load_model("googlenet")
    assert model.num_classes == 1000 and model.class_names[285] == "Egyptian cat"
    assert models.weights_status("googlenet").startswith("cached")


@pytest.fixture
def weights_server(tmp_path):
    """``(folder, base URL)``: a local HTTP server on 127.0.0.1 serving ``folder``."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


def test_download_checks_the_hash_in_the_file_name(tmp_path, weights_server):
    folder, base = weights_server
    payload = b"weights" * 100
    digest = hashlib.sha256(payload).hexdigest()
    (folder / f"net-{digest[:8]}.pth").write_bytes(payload)
    (folder / "net-deadbeef.pth").write_bytes(payload)
    cache = tmp_path / "cache"
    dest = models.download_weights(f"{base}/net-{digest[:8]}.pth", cache / f"net-{digest[:8]}.pth", progress=False)
    assert dest.read_bytes() == payload
    with pytest.raises(WeightsUnavailable, match=r"could not download .*net-deadbeef\.pth .*invalid hash value"):
        models.download_weights(f"{base}/net-deadbeef.pth", cache / "net-deadbeef.pth", progress=False)
    with pytest.raises(WeightsUnavailable, match=r"could not download .*HTTPError.*put the file at"):
        models.download_weights(f"{base}/missing-abcdef12.pth", cache / "missing-abcdef12.pth", progress=False)
    assert sorted(p.name for p in cache.iterdir()) == [f"net-{digest[:8]}.pth"]  # no partial files left
    # file:// URLs go through the same code (a mirror on a shared drive)
    models.download_weights((folder / f"net-{digest[:8]}.pth").as_uri(), tmp_path / "copy.pth", progress=False)
    assert (tmp_path / "copy.pth").read_bytes() == payload


def test_missing_torchvision_weights_are_downloaded_into_the_cache(tmp_path, monkeypatch, weights_server):
    folder, base = weights_server
    net = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    torch.save(net.state_dict(), tmp_path / "state.pth")
    digest = hashlib.sha256((tmp_path / "state.pth").read_bytes()).hexdigest()
    (tmp_path / "state.pth").rename(folder / f"googlenet-{digest[:8]}.pth")

    real = models.torchvision_weights("googlenet")

    class Served:  # the weights enum entry, its file on the local server
        url = f"{base}/googlenet-{digest[:8]}.pth"
        meta, transforms = real.meta, staticmethod(real.transforms)

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(models, "torchvision_weights", lambda name: Served)
    model = load_model("googlenet", offline=False, progress=False)
    assert models.cache_path(Served.url).is_file()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = net.eval()((x - model.mean) / model.std)
        assert torch.allclose(model(x, [LOGITS])[LOGITS], expected, atol=1e-5)


def test_torchscript_model_dreams_its_logits_and_refuses_layers(tmp_path):
    from conftest import TinyNet

    scripted = torch.jit.script(TinyNet().eval())
    scripted.save(str(tmp_path / "net.pt"))
    model = load_model(str(tmp_path / "net.pt"))
    assert model.resolve_layer(LOGITS) == LOGITS
    for name in ("low", "mid", "high", "conv2"):
        with pytest.raises(ValueError, match=rf"layer '{name}': .*net\.pt is a TorchScript file, whose layers cannot be hooked"):
            model.resolve_layer(name)
    assert model(torch.rand(1, 3, 32, 32), [LOGITS])[LOGITS].shape == (1, 5)
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    with pytest.raises(ValueError, match=r"--labels .*labels\.txt has 3 names but model .*net\.pt has 5 outputs"):
        load_model(str(tmp_path / "net.pt"), labels=tmp_path / "labels.txt")
    (tmp_path / "bad.pt").write_text("nope")
    with pytest.raises(ValueError, match="not a TorchScript file"):
        load_model(str(tmp_path / "bad.pt"))


def test_efficientnet_weights_of_another_layout_are_one_line_exit_2(tmp_path, capsys):
    from dreamreel.cli.main import main

    state = {f"_blocks.{i}.weight": torch.zeros(2) for i in range(3)}  # lukemelas-style names, not timm's
    torch.save(state, tmp_path / "other.pth")
    assert main(["layers", "efficientnet-lite0", "--weights", str(tmp_path / "other.pth")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--weights" in err and "other.pth" in err
    assert "not a timm tf_efficientnet_lite0 state dict (no 'classifier.weight' key)" in err


def test_device_and_precision_choices():
    assert models.pick_device("cpu").type == "cpu"
    assert models.pick_precision("fp32", torch.device("cpu")) is None
    assert models.pick_precision("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(ValueError, match="--precision fp16"):
        models.pick_precision("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="--device 'banana'"):
        models.pick_device("banana")
    for device in ("meta", "xpu", "cpu:1"):  # torch knows them; dreamreel cannot dream there (exit 1, before)
        with pytest.raises(ValueError, match=rf"^--device '{device}': expected auto, cpu, cuda, cuda:N or mps$"):
            models.pick_device(device)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            models.pick_device("cuda")


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_never_picks_emulated_bf16_on_cuda(monkeypatch, native):
    # A GPU before Ampere runs bf16 only through emulation: slower than fp16.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    expected = torch.bfloat16 if native else torch.float16
    assert models.pick_precision("auto", torch.device("cuda")) is expected


class ConvBnNet(torch.nn.Module):
    """conv → batch norm → ReLU twice, with non-trivial running statistics."""

    def __init__(self, bn_first: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(3)  # with bn_first, registered after the conv but called before it
        self.block = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, bias=False), torch.nn.BatchNorm2d(6), torch.nn.ReLU())
        for bn in (self.bn, self.block[1]):
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=g))
            bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            bn.weight.data.copy_(torch.randn(n, generator=g))
            bn.bias.data.copy_(torch.randn(n, generator=g))
        self.bn_first = bn_first
        self.head = torch.nn.Linear(6, 4)

    def forward(self, x):
        x = self.conv(self.bn(x)) if self.bn_first else self.bn(self.conv(x))
        return self.head(self.block(torch.relu(x)).mean((2, 3)))


def conv_bn_model(bn_first: bool = False) -> models.DreamModel:
    return models.DreamModel(
        ConvBnNet(bn_first), mean=(0.5,) * 3, std=(0.25,) * 3, layer_names=["block"],
        aliases={"low": "block", "mid": "block", "high": "block"}, name="convbn",
    )  # fmt: skip


def test_folding_batch_norms_keeps_what_the_network_computes():
    model = conv_bn_model()
    folded = models.fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.net.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.net.modules())  # the original is untouched
    x = torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = model(x, ["block", LOGITS]), folded(x, ["block", LOGITS])
    for name in ("block", LOGITS):
        assert torch.allclose(a[name], b[name], atol=1e-5), name


def test_batch_norm_called_before_the_convolution_it_follows_is_left_alone():
    model = conv_bn_model(bn_first=True)
    assert models.fold_batchnorm(model) is model


def test_prepare_uses_channels_last_on_the_cpu(tiny_model):
    prepared = models.prepare(tiny_model, torch.device("cpu"))
    assert prepared.input_format == torch.channels_last
    assert prepared.net.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)


# --- your own models: ONNX files and timm architectures --------------------------


class SmallClassifier(torch.nn.Module):
    """conv → BN → ReLU → strided conv → ReLU → mean → 3 classes."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
        self.block = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean((2, 3)))


@pytest.fixture
def onnx_classifier(tmp_path):
    """``(path of an .onnx file, the torch network it was exported from, labels file)``."""
    import warnings

    torch.manual_seed(0)
    net = SmallClassifier().eval()
    path = tmp_path / "classifier.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated, and needs no onnxscript
        torch.onnx.export(
            net, (torch.rand(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17, input_names=["image"],
            dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}},
        )  # fmt: skip
    (tmp_path / "classes.txt").write_text("me\nmy dog\nmy cat\n")
    return path, net, tmp_path / "classes.txt"


def test_onnx_model_keeps_its_named_layers_and_computes_what_was_exported(onnx_classifier):
    path, net, labels = onnx_classifier
    model = load_model(str(path), labels=labels)
    assert model.layer_names == ["stem_stem_0_Conv", "stem_stem_2_Relu", "block_block_0_Conv", "block_block_1_Relu"]
    assert model.class_names == ["me", "my dog", "my cat"] and model.resolve_class("my_dog") == 1
    assert {model.resolve_layer(a) for a in ("low", "mid", "high")} <= set(model.layer_names)
    x = torch.rand(2, 3, 40, 36, generator=torch.Generator().manual_seed(0))
    acts = model(x, ["block_block_1_Relu", LOGITS])
    with torch.no_grad():
        normalised = (x - model.mean) / model.std
        assert torch.allclose(acts[LOGITS], net(normalised), atol=1e-5)
        assert torch.allclose(acts["block_block_1_Relu"], net.block(net.stem(normalised)), atol=1e-5)
    prepared = models.prepare(model, torch.device("cpu"))  # channels_last, folding checked: the same logits
    assert torch.allclose(prepared(x, [LOGITS])[LOGITS], acts[LOGITS], atol=1e-5)


def picture_activations(model, picture_path, layer: str) -> torch.Tensor:
    """Activations of ``layer`` for a saved picture (what the CLI wrote)."""
    import cv2

    rgb = cv2.imread(str(picture_path))[:, :, ::-1].copy()
    with torch.no_grad():
        return model(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255, [layer])[layer]


def test_onnx_model_dreams_a_class_and_a_layer_from_the_command_line(onnx_classifier, tmp_path, capsys, device):
    import cv2

    from dreamreel.cli.main import main

    path, _, labels = onnx_classifier
    model = load_model(str(path), labels=labels)
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), (load_photo(48).squeeze(0).permute(1, 2, 0).flip(-1) * 255).round().byte().numpy())
    scores = {  # what each objective raises, read from the pictures
        "class:my_dog": lambda picture: picture_activations(model, picture, LOGITS)[0, 1],
        "block_block_1_Relu:5": lambda picture: picture_activations(model, picture, "block_block_1_Relu")[0, 5].mean(),
    }
    for objective, score in scores.items():
        out = tmp_path / f"{objective.replace(':', '_')}.png"
        argv = ["image", str(photo), str(out), "--model", str(path), "--labels", str(labels), "--objective", objective,
                "--octaves", "1", "--iterations", "10", "--step", "0.02", "--device", device, "--precision", "fp32",
                "--quiet"]  # fmt: skip
        assert main(argv) == 0, capsys.readouterr().err
        before, after = float(score(photo)), float(score(out))
        assert after > before + 0.05 * abs(before), (objective, before, after)


def test_layers_command_lists_the_onnx_layers(onnx_classifier, capsys):
    from dreamreel.cli.main import main

    path, _, labels = onnx_classifier
    assert main(["layers", str(path), "--labels", str(labels)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:5] == [
        "stem_stem_0_Conv        8 channels",
        "stem_stem_2_Relu        8 channels",
        "block_block_0_Conv     16 channels",
        "block_block_1_Relu     16 channels",
        "logits                  3 channels",
    ]
    assert [line.split()[0] for line in lines[5:]] == ["low", "mid", "high"]


def tiny_onnx_graph(path: Path, op: str, input_shape: list[int]) -> Path:
    """An ONNX graph of one ``op`` node on a float input, then global pooling and flattening."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node(op, ["x"], ["a"]),
        helper.make_node("GlobalAveragePool", ["a"], ["p"]),
        helper.make_node("Flatten", ["p"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_onnx_op_that_onnx2torch_cannot_convert_is_one_line_naming_it(tmp_path, capsys):
    from dreamreel.cli.main import main

    path = tiny_onnx_graph(tmp_path / "odd.onnx", "ThresholdedRelu", [1, 3, 32, 32])
    assert main(["layers", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "odd.onnx: onnx2torch cannot convert the op ThresholdedRelu (opset 17)" in err


def test_onnx_input_layout_and_missing_extra_are_clear(tmp_path, monkeypatch):
    nhwc = tiny_onnx_graph(tmp_path / "keras.onnx", "Relu", [1, 224, 224, 3])
    with pytest.raises(ValueError, match=r"channels-last \(1x224x224x3\); .*tf2onnx .*--inputs-as-nchw x"):
        load_model(str(nhwc))
    (tmp_path / "junk.onnx").write_bytes(b"\x00not onnx")
    with pytest.raises(ValueError, match=r"junk\.onnx: not an ONNX file"):
        load_model(str(tmp_path / "junk.onnx"))
    monkeypatch.setitem(__import__("sys").modules, "onnx2torch", None)  # as if the extra were not installed
    with pytest.raises(ValueError, match=r"ONNX models need the onnx extra: pip install 'dreamreel\[onnx\]'"):
        load_model(str(nhwc))


def test_timm_model_by_name_with_a_weights_file(tmp_path, capsys):
    import timm

    from dreamreel.cli.main import main

    torch.manual_seed(0)
    net = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=4).eval()
    torch.save(net.state_dict(), tmp_path / "mine.pth")
    (tmp_path / "classes.txt").write_text("a\nb\nc\nd\n")
    model = load_model("timm:mobilenetv3_small_050", weights=tmp_path / "mine.pth", labels=tmp_path / "classes.txt")
    assert model.layer_names == [info["module"] for info in net.feature_info]
    assert model.aliases == {"low": "blocks.1", "mid": "blocks.3", "high": "blocks.5"}  # strides 8, 16, 32
    assert model.resolve_class("c") == 2
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(x, [LOGITS])[LOGITS], net((x - model.mean) / model.std), atol=1e-5)
    assert main(["layers", "timm:mobilenetv3_small_050", "--weights", str(tmp_path / "mine.pth")]) == 0
    assert "blocks.3" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"timm:mobilenetv3_small_050 needs --weights FILE"):
        load_model("timm:mobilenetv3_small_050")
    with pytest.raises(ValueError, match=r"timm has no model of that name \(did you mean timm:mobilenetv3_small_050"):
        load_model("timm:mobilenetv3_smal_050", weights=tmp_path / "mine.pth")
    with pytest.raises(ValueError, match=r"--weights .*mine\.pth: not a timm resnet18 state dict \(no 'fc\.weight' key\)"):
        load_model("timm:resnet18", weights=tmp_path / "mine.pth")


def test_timm_model_dreams_from_the_command_line_on_each_device(tmp_path, capsys, device):
    import cv2
    import timm

    from dreamreel.cli.main import main

    torch.manual_seed(0)
    torch.save(timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=4).state_dict(), tmp_path / "mine.pth")
    model = load_model("timm:mobilenetv3_small_050", weights=tmp_path / "mine.pth")
    photo, out = tmp_path / "photo.png", tmp_path / "out.png"
    cv2.imwrite(str(photo), (load_photo(64).squeeze(0).permute(1, 2, 0).flip(-1) * 255).round().byte().numpy())
    argv = ["image", str(photo), str(out), "--model", "timm:mobilenetv3_small_050", "--weights", str(tmp_path / "mine.pth"),
            "--objective", "mid", "--octaves", "1", "--iterations", "8", "--device", device, "--quiet"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    mid = model.resolve_layer("mid")
    before, after = (float(picture_activations(model, picture, mid).pow(2).mean()) for picture in (photo, out))
    assert after > 1.05 * before


def test_onnx_weights_shared_through_identity_nodes_convert(tmp_path):
    import warnings

    import onnx

    torch.manual_seed(0)
    convs = [torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)]
    for conv in convs:
        conv.bias.data.zero_()  # two equal biases: the exporter stores one and shares it through an Identity node
    net = torch.nn.Sequential(
        convs[0], torch.nn.ReLU(), convs[1], torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(8, 3),
    ).eval()  # fmt: skip
    path = tmp_path / "shared.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                          dynamic_axes={"input": {2: "h", 3: "w"}}, input_names=["input"])  # fmt: skip
    assert "Identity" in {node.op_type for node in onnx.load(str(path)).graph.node}
    model = load_model(str(path))
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(x, [LOGITS])[LOGITS], net((x - model.mean) / model.std), atol=1e-5)


def test_onnx_constants_and_omitted_inputs_as_exporters_write_them(tmp_path):
    """A Constant of opset 19 (onnx2torch has no converter) feeding a Clip whose upper bound is omitted ("")."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Constant", [], ["low"], value=numpy_helper.from_array(np.array(0.25, np.float32))),
        helper.make_node("Clip", ["x", "low", ""], ["clipped"]),  # how timm's TF-style padding exports
        helper.make_node("GlobalAveragePool", ["clipped"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "clip", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), str(tmp_path / "clip.onnx"))
    model = load_model(str(tmp_path / "clip.onnx"))
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = ((x - model.mean) / model.std).clamp(min=0.25).mean((2, 3))
    assert torch.allclose(model(x, [LOGITS])[LOGITS], expected, atol=1e-6)
    assert model.layer_names == ["Clip", "GlobalAveragePool"]  # the nodes with (B, C, H, W) outputs


# --- files that are not what they claim: one line naming the flag, the file and the fix ---------------


def test_a_model_file_that_does_not_exist_is_no_such_file_not_an_unknown_model(tmp_path):
    for name in ("nonexist.onnx", "net.pt", str(tmp_path / "models" / "mine")):
        with pytest.raises(ValueError, match=rf"^--model {re.escape(name)}: no such file"):
            load_model(name)


def test_labels_files_must_be_utf8_with_unique_names_and_a_bom_is_not_a_name(tmp_path, tiny_model):
    net = torchvision.models.googlenet(weights=None, num_classes=3, aux_logits=False, init_weights=False)
    torch.save(net.state_dict(), tmp_path / "mine.pth")
    labels = tmp_path / "labels.txt"
    labels.write_bytes("café\nthé\nlait\n".encode("latin-1"))
    with pytest.raises(ValueError, match=rf"^--labels {re.escape(str(labels))}: not UTF-8 text \(byte 0xe9 on line 1\); save it as UTF-8$"):
        load_model("googlenet", weights=tmp_path / "mine.pth", labels=labels)
    labels.write_text("cat\ndog\nfish\n", encoding="utf-8-sig")  # Windows Notepad's UTF-8
    model = load_model("googlenet", weights=tmp_path / "mine.pth", labels=labels)
    assert model.class_names == ["cat", "dog", "fish"] and model.resolve_class("cat") == 0
    labels.write_text("tabby cat\ndog\nTabby_Cat\n")
    with pytest.raises(ValueError, match=r"^--labels .*labels\.txt: 'Tabby_Cat' \(line 3\) repeats 'tabby cat' \(line 1\); "
                                         r"class:NAME would only reach the first: give each class its own name$"):
        load_model("googlenet", weights=tmp_path / "mine.pth", labels=labels)


def test_weights_of_another_layout_are_summarised_on_one_short_line(tmp_path):
    state = {f"features.{k}.weight": torch.zeros(1) for k in range(400)}
    state["classifier.weight"] = torch.zeros(1000, 1280)
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(ValueError) as refused:
        load_model("efficientnet-lite0", weights=tmp_path / "other.pth")
    message = str(refused.value)
    assert message.startswith(f"--weights {tmp_path / 'other.pth'}: the file does not fit timm tf_efficientnet_lite0: "
                              "295 of its 296 tensors are missing ('conv_stem.weight', 'bn1.weight', 'bn1.bias', ...), "
                              "400 are unexpected ('features.0.weight', 'features.1.weight', 'features.2.weight', ...)")
    assert len(message) < 400 and "\n" not in message
    state = torchvision.models.googlenet(weights=None, num_classes=3, aux_logits=False, init_weights=False).state_dict()
    state["conv1.conv.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(state, tmp_path / "reshaped.pth")
    with pytest.raises(ValueError, match=r"does not fit googlenet: 1 tensor has another shape \('conv1\.conv\.weight': "
                                         r"\(64, 3, 5, 5\) in the file, \(64, 3, 7, 7\) in the model\)$"):
        load_model("googlenet", weights=tmp_path / "reshaped.pth")


def test_a_classifier_head_that_is_not_a_matrix_is_refused(tmp_path):
    from dreamreel.pipeline.efficientnet import EfficientNetLite0

    torch.save({**EfficientNetLite0().state_dict(), "classifier.weight": torch.tensor(0.0)}, tmp_path / "head.pth")
    with pytest.raises(ValueError, match=r"^--weights .*head\.pth: 'classifier\.weight' has shape \(\), expected "
                                         r"\(classes, features\): not a timm tf_efficientnet_lite0 state dict$"):
        load_model("efficientnet-lite0", weights=tmp_path / "head.pth")


def test_timm_names_with_a_pretrained_tag_timm_lacks_and_models_without_picture_layers_are_refused(tmp_path):
    import timm

    torch.save({"fc.weight": torch.zeros(3, 8)}, tmp_path / "any.pth")
    with pytest.raises(ValueError, match=r"^--model timm:resnet10t\.a1_in1k: timm has no pretrained tag 'a1_in1k' for "
                                         r"resnet10t \(its tags: c3_in1k\); name the architecture alone: timm:resnet10t$"):
        load_model("timm:resnet10t.a1_in1k", weights=tmp_path / "any.pth")
    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3).state_dict(), tmp_path / "vit.pth")
    with pytest.raises(ValueError, match=r"^--model timm:vit_tiny_patch16_224: layer blocks\.0 gives \(1, 197, 192\) "
                                         r"activations, not pictures \(batch, channels, height, width\); dreamreel dreams "
                                         r"convolutional networks \(such as timm:convnext_atto\)$"):
        load_model("timm:vit_tiny_patch16_224", weights=tmp_path / "vit.pth")


def malformed_onnx(path: Path, node, input_shape=(1, 3, 32, 32)) -> Path:
    """A valid pooling classifier with one more, malformed ``node``."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [node, helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])]
    graph = helper.make_graph(
        [n for n in nodes if n is not None], "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_malformed_onnx_nodes_and_huge_declared_inputs_are_refused_before_any_allocation(tmp_path):
    import numpy as np
    from onnx import helper, numpy_helper

    identity = malformed_onnx(tmp_path / "identity.onnx", helper.make_node("Identity", [], ["i"], name="copy"))
    with pytest.raises(ValueError, match=r"^--model .*identity\.onnx: node 'copy' \(Identity\) has 0 inputs and 1 output, "
                                         r"expected 1 and 1: the file is malformed; export the model again$"):
        load_model(str(identity))
    value = numpy_helper.from_array(np.array(1.0, np.float32))
    constant = malformed_onnx(tmp_path / "constant.onnx", helper.make_node("Constant", [], [], value=value))
    with pytest.raises(ValueError, match=r"^--model .*constant\.onnx: a Constant node has 0 inputs and 0 outputs, "
                                         r"expected 0 and 1"):
        load_model(str(constant))
    huge = malformed_onnx(tmp_path / "huge.onnx", None, input_shape=(1, 3, 100_000, 100_000))
    with pytest.raises(ValueError, match=r"^--model .*huge\.onnx: the input is declared 100000x100000 pixels; dreamreel runs "
                                         r"a model at its declared size, up to 2048x2048: export it with a smaller or free "
                                         r"\(dynamic\) height and width$"):
        load_model(str(huge))
    fixed = malformed_onnx(tmp_path / "fixed.onnx", None, input_shape=(1, 3, 2048, 2048))
    assert load_model(str(fixed)).probe_size == (2048, 2048)
