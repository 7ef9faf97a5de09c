"""What the dream maximises: small composable objective values.

An :class:`Objective` maps a dict of layer activations to one score per image,
shape (B,), so a batch of images is dreamed exactly as if one by one. They add
up like numbers (after lucid's ``optvis/objectives.py``)::

    layer("blocks.4") + 0.5 * channel("blocks.5", 97)

and :func:`parse_objective` reads the same thing from the command line::

    --objective "mid + 0.5*blocks.5:97"

The text is a formula of :mod:`expr` (never ``eval``), whose targets are::

    LAYER                   a layer or alias: mean of its squared activations
    LAYER:CHANNEL           the mean activation of one channel (0 to the layer's channels - 1)
    class:INDEX | class:NAME | class:"quoted name"     a class logit
    guide:LAYER             match a guide image's activations (needs --guide)
    enhance:LAYER           agree with --gain x the start picture's activations
    tv | tv:BETA            total variation of the picture (a prior: subtract it)
    norm | norm:ALPHA       alpha-norm of the picture (a prior: subtract it)

Objectives add and subtract; a product has one objective and any number of
number factors (``0.5*mid``, ``mid/2``, ``2**-3*high``); a leading minus
negates. The priors read the picture itself (the pseudo-layer
``models.PICTURE``), so ``mid - 0.5*tv`` is one objective like any other and
its gradient flows through the same ascent step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from .expr import (
    Expression, ExprError, Negate, Node, Number, Power, Product, Sum, Syntax, Target, Token, parse_formula, walk,
)
from .models import LOGITS, PICTURE, DreamModel

Activations = Mapping[str, torch.Tensor]

# Objective strings come from presets written by strangers: bound their size
# (nesting is bounded by expr.MAX_NESTING, as for schedules).
MAX_OBJECTIVE_CHARS = 500
# Scores are float32: a larger weight overflows to inf, whose gradient is NaN.
MAX_WEIGHT = float(torch.finfo(torch.float32).max)
# Mahendran & Vedaldi's exponents (2015): V^2 for the total variation (beta 1,
# plain TV, leaves spikes), and the 6-norm as the range bound; and the range
# each may be set in (tv:BETA, norm:ALPHA).
TV_BETA, TV_BETA_RANGE = 2.0, (1.0, 4.0)
NORM_ALPHA, NORM_ALPHA_RANGE = 6.0, (1.0, 12.0)
# Inside V^beta's root, so its gradient stays finite on flat patches.
TV_EPSILON = 1e-8
PRIORS = {"tv": (TV_BETA_RANGE, "beta"), "norm": (NORM_ALPHA_RANGE, "alpha")}


@dataclass(frozen=True)
class Objective:
    """A named score of activations.

    Attributes:
        fn: activations → (B,) scores; higher is more dream.
        layers: the layer names ``fn`` reads.
        name: readable form, e.g. ``"blocks.4 + 0.5*blocks.5:97"``.
        targets: layers whose target activations ``fn`` reads too, as
            ``acts[target_key(layer)]``: ``--gain`` times the activations of
            the start picture, which the dreaming engine supplies.
    """

    fn: Callable[[Activations], torch.Tensor]
    layers: frozenset[str]
    name: str
    targets: frozenset[str] = frozenset()

    def __call__(self, acts: Activations) -> torch.Tensor:
        return self.fn(acts)

    def __add__(self, other: Objective) -> Objective:
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(lambda a: self(a) + other(a), self.layers | other.layers, f"{self.name} + {other.name}",
                         self.targets | other.targets)

    def __sub__(self, other: Objective) -> Objective:
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(lambda a: self(a) - other(a), self.layers | other.layers, f"{self.name} - {other.name}",
                         self.targets | other.targets)

    def __mul__(self, weight: float) -> Objective:
        if not isinstance(weight, (int, float)):
            return NotImplemented
        w = float(weight)
        return Objective(lambda a: w * self(a), self.layers, f"{w:g}*{_group(self.name)}", self.targets)

    __rmul__ = __mul__

    def __neg__(self) -> Objective:
        return -1.0 * self


def _group(name: str) -> str:
    return f"({name})" if " " in name else name


def layer(name: str) -> Objective:
    """Classic DeepDream: mean of the squared activations of a layer (L2 norm).

    Mordvintsev, Olah & Tyka 2015, "Inceptionism: going deeper into neural networks".
    """

    def score(acts: Activations) -> torch.Tensor:
        a = acts[name].float()
        return a.pow(2).flatten(1).mean(1)

    return Objective(score, frozenset([name]), name)


def channel(name: str, index: int) -> Objective:
    """Mean activation of one channel: the feature that channel detects appears."""

    def score(acts: Activations) -> torch.Tensor:
        a = acts[name]
        if index >= a.shape[1]:
            raise ValueError(f"channel {index} out of range: layer {name} has {a.shape[1]} channels")
        return a[:, index].float().flatten(1).mean(1)

    return Objective(score, frozenset([name]), f"{name}:{index}")


def class_logit(index: int, label: str | None = None) -> Objective:
    """The pre-softmax logit of one class: makes that class appear."""

    def score(acts: Activations) -> torch.Tensor:
        return acts[LOGITS][:, index].float()

    return Objective(score, frozenset([LOGITS]), f"class:{label or index}")


def guide(name: str, guide_acts: torch.Tensor) -> Objective:
    """Guided dreaming: pull each position towards its best match in a guide.

    Each activation vector x_i is matched to the guide feature g_j with the
    largest dot product, and the score is the mean of those dot products; its
    gradient pushes x_i along g_j (the "controlling dreams" method of the
    original DeepDream notebook, Mordvintsev et al. 2015).

    Args:
        name: layer name.
        guide_acts: (1, C, h, w) activations of the guide image at ``name``.
    """
    target = guide_acts.detach().float().flatten(2)[0]  # (C, N)

    def score(acts: Activations) -> torch.Tensor:
        x = acts[name].float().flatten(2)  # (B, C, M)
        g = target.to(x.device)
        match = torch.einsum("bcm,cn->bmn", x, g).argmax(2)  # (B, M) best guide index
        best = g.t()[match].transpose(1, 2)  # (B, C, M)
        return (x * best).sum(1).mean(1)

    return Objective(score, frozenset([name]), f"guide:{name}")


def target_key(name: str) -> str:
    """Where the target activations of layer ``name`` are found in the activations an objective reads."""
    return f"target:{name}"


def enhance(name: str) -> Objective:
    """Agreement with enhanced activations of the start picture: ``-|a - t|² / |t|²`` per image.

    ``t`` is ``--gain`` times the activations of the picture the dream
    started from at this layer (supplied as ``acts[target_key(name)]``). The
    score is 0 when the layer's activations equal ``t`` and falls with the
    squared relative distance, so the ascent amplifies what the layer sees
    in the picture up to ``gain`` times and no further: DeepDream posed as the
    minimisation of ``||phi(x) - enhanced(phi(x0))||^2``, as in the
    reimplementations that solve it with L-BFGS (``--optimizer lbfgs``).
    """
    key = target_key(name)

    def score(acts: Activations) -> torch.Tensor:
        a, t = acts[name].float().flatten(1), acts[key].float().flatten(1)
        return -(a - t).pow(2).mean(1) / t.pow(2).mean(1).clamp(min=1e-12)

    return Objective(score, frozenset([name]), f"enhance:{name}", frozenset([name]))


def tv(beta: float = TV_BETA) -> Objective:
    """Total variation V^beta of the picture: subtract it to smooth away pixel noise.

    The mean over pixels and channels of ``(dx² + dy²)^(beta/2)``, with dx
    and dy the differences to the right and lower neighbour in 8-bit levels
    (Mahendran & Vedaldi 2015, "Understanding deep image representations by
    inverting them"): beta 2 spreads a change over its neighbours, beta 1
    keeps edges sharp. In levels, its gradient is of the size of the layers'
    and classes' gradients, so weights from 0.01 to 1 matter. The picture
    is read as the network sees it (rolled, tile by tile), so the wrap-around
    seam of a roll counts like any other pixel pair.
    """

    def score(acts: Activations) -> torch.Tensor:
        x = acts[PICTURE].float() * 255
        dx = x[..., :-1, 1:] - x[..., :-1, :-1]
        dy = x[..., 1:, :-1] - x[..., :-1, :-1]
        squared = dx.pow(2) + dy.pow(2)
        variation = squared if beta == 2 else (squared + TV_EPSILON).pow(beta / 2)
        return variation.flatten(1).mean(1)

    return Objective(score, frozenset([PICTURE]), "tv" if beta == TV_BETA else f"tv:{beta:g}")


def norm(alpha: float = NORM_ALPHA) -> Objective:
    """The alpha-norm bound of the picture: subtract it to keep values in range without clamping.

    The mean of ``|2x - 1|^alpha`` (Mahendran & Vedaldi 2015): at most 1 for
    pixels in [0, 1], steeply more outside, so an optimiser that does not
    clamp at every step (``--optimizer lbfgs`` on pixels clamps after each
    round) keeps the picture in range.
    """

    def score(acts: Activations) -> torch.Tensor:
        return (2 * acts[PICTURE].float() - 1).abs().pow(alpha).flatten(1).mean(1)

    return Objective(score, frozenset([PICTURE]), "norm" if alpha == NORM_ALPHA else f"norm:{alpha:g}")


def per_image(objectives: Sequence[Objective]) -> Objective:
    """Image k of a batch scored by ``objectives[k]``: several looks dreamed as one batch.

    Each image's score reads only its own activations, so the batch is
    dreamed exactly as if each image were dreamed alone with its objective. A
    batch of several tiles of each image (tile-major, as ``dream.tile_batches``
    stacks them) scores row i with ``objectives[i % K]``.
    """
    objectives = list(objectives)

    def score(acts: Activations) -> torch.Tensor:
        rows = len(next(iter(acts.values())))
        if rows % len(objectives):
            raise ValueError(f"per-image objective of {len(objectives)} images got a batch of {rows}")
        return torch.cat([
            objectives[i % len(objectives)]({name: a[i : i + 1] for name, a in acts.items()}) for i in range(rows)
        ])  # fmt: skip

    layers = frozenset().union(*(obj.layers for obj in objectives))
    targets = frozenset().union(*(obj.targets for obj in objectives))
    return Objective(score, layers, " | ".join(obj.name for obj in objectives), targets)


# --- reading objectives from text --------------------------------------------


def parse_objective(
    text: str,
    model: DreamModel,
    *,
    guide_acts: Callable[[str], torch.Tensor] | None = None,
) -> Objective:
    """Read an objective expression such as ``"mid + 0.5*blocks.5:97"``.

    The text is an :mod:`expr` formula whose targets are the objectives in
    the module docstring; numbers weight them, and may be any variable-free
    formula (``mid/2``, ``2**-3*high``).

    Args:
        text: the expression.
        model: resolves aliases, layer and class names.
        guide_acts: layer name → (1, C, h, w) activations of the guide image.

    Raises:
        ExprError: a ValueError naming the text, the column and what was
            expected, e.g. ``--objective 'mid +': column 6: expected a layer
            name, a number or '(' but found the end``.
    """
    if not isinstance(text, str):
        raise TypeError(f"objective must be a string, got {type(text).__name__}")
    setting = f"--objective {text!r}" if len(text) <= MAX_OBJECTIVE_CHARS else "--objective"
    syntax = Syntax(
        noun="objective",
        max_chars=MAX_OBJECTIVE_CHARS,
        empty_hint="name a layer such as 'mid' (see `dreamreel layers`)",
        operand="a layer name, a number or '('",
        resolve_target=_Targets(setting, model, guide_acts),
    )
    value = _combine(parse_formula(text, setting=setting, syntax=syntax), setting)
    if not isinstance(value, Objective):
        raise ExprError(setting, "the expression is a plain number; name a layer, a channel, a class or a guide")
    return value


class _Targets:
    """Resolves an objective's targets on a model while the text is parsed (see :class:`expr.Syntax`)."""

    def __init__(self, setting: str, model: DreamModel, guide_acts: Callable[[str], torch.Tensor] | None):
        self.setting = setting
        self.model = model
        self.guide_acts = guide_acts

    def __call__(self, name: Token, suffix: Token | None) -> Objective:
        if name.text in ("class", "guide") and suffix is not None:
            return self.class_logit(suffix) if name.text == "class" else self.guide(name, suffix)
        if name.text == "enhance":
            return self.enhance(name, suffix)
        if name.text in PRIORS:
            return self.prior(name, suffix)
        layer_name = self.layer_name(name)
        if suffix is None:
            return layer(layer_name)
        if suffix.kind != "number" or not suffix.text.isdigit():
            raise self.fail(f"expected a channel number after '{name.text}:' but found {suffix.describe()}", suffix)
        index, count = int(suffix.text), self.model.layer_channels()[layer_name]
        if index >= count:
            raise self.fail(
                f"channel {index} is out of range: layer {layer_name} has {count} channels (0..{count - 1}); "
                f"`dreamreel layers {self.model.name}` lists them", suffix,
            )  # fmt: skip
        return channel(layer_name, index)

    def fail(self, problem: str, token: Token) -> ExprError:
        return ExprError(self.setting, problem, column=token.column)

    def layer_name(self, token: Token) -> str:
        try:
            return self.model.resolve_layer(token.text)
        except ValueError as exc:
            raise self.fail(str(exc), token) from None

    def class_logit(self, label: Token) -> Objective:
        if label.kind not in ("number", "name", "string"):
            raise self.fail(f"expected a class number or name after 'class:' but found {label.describe()}", label)
        wanted = label.text.strip("\"'")
        try:
            index = self.model.resolve_class(wanted)
        except ValueError as exc:
            raise self.fail(str(exc), label) from None
        names = self.model.class_names
        return class_logit(index, names[index] if names and not wanted.isdigit() else None)

    def enhance(self, keyword: Token, name: Token | None) -> Objective:
        if name is None or name.kind != "name":
            found = "nothing" if name is None else name.describe()
            raise self.fail(f"expected a layer name after 'enhance:' (enhance:mid) but found {found}", name or keyword)
        return enhance(self.layer_name(name))

    def prior(self, keyword: Token, exponent: Token | None) -> Objective:
        make = tv if keyword.text == "tv" else norm
        (lo, hi), what = PRIORS[keyword.text]
        if exponent is None:
            return make()
        if exponent.kind != "number":
            raise self.fail(f"expected a number ({what}) after '{keyword.text}:' but found {exponent.describe()}", exponent)
        value = float(exponent.text)
        if not lo <= value <= hi:
            raise self.fail(f"{keyword.text}:{exponent.text}: {what} must be from {lo:g} to {hi:g}", exponent)
        return make(value)

    def guide(self, keyword: Token, name: Token) -> Objective:
        if name.kind != "name":
            raise self.fail(f"expected a layer name after 'guide:' but found {name.describe()}", name)
        layer_name = self.layer_name(name)
        if self.guide_acts is None:
            raise self.fail("guide:LAYER needs a guide image: pass --guide IMAGE", keyword)
        return guide(layer_name, self.guide_acts(layer_name))


def _combine(node: Node, setting: str) -> Objective | float:
    """The objective a tree describes, or its number when it has no target.

    Numbers are evaluated by :class:`expr.Expression`, with its checks; sums
    and differences of objectives, and products of an objective with numbers,
    make an objective. The tree is at most ``expr.MAX_NESTING`` deep.
    """
    if not _has_target(node):
        return Expression(node, setting=setting).evaluate_at({}, None)
    if isinstance(node, Target):
        return node.value
    if isinstance(node, Negate):
        return -_combine(node.operand, setting)
    if isinstance(node, Sum):
        return _combine_sum(node, setting)
    if isinstance(node, Product):
        return _combine_product(node, setting)
    what = "a power" if isinstance(node, Power) else f"{node.function}(...)"
    raise ExprError(setting, f"{what} takes numbers, not objectives; weight objectives with '*'", column=node.column)


def _has_target(node: Node) -> bool:
    return any(isinstance(n, Target) for n in walk(node))


def _combine_sum(node: Sum, setting: str) -> Objective:
    terms = [("+", node.first), *node.rest]
    values = [_combine(term, setting) for _, term in terms]
    for k, value in enumerate(values):
        if not isinstance(value, Objective):
            verb = "add" if terms[max(k, 1)][0] == "+" else "subtract"
            raise ExprError(
                setting, f"cannot {verb} a plain number and an objective; weight it with '*'",
                column=terms[k][1].column,
            )
    total = values[0]
    for (op, _), value in zip(terms[1:], values[1:]):
        total = total + value if op == "+" else total - value
    return total


def _combine_product(node: Product, setting: str) -> Objective:
    factors = [("*", node.first), *node.rest]
    at = [k for k, (_, factor) in enumerate(factors) if _has_target(factor)]
    if len(at) > 1:
        raise ExprError(setting, "cannot multiply two objectives; one factor must be a number",
                        column=factors[at[1]][1].column)
    op, factor = factors[at[0]]
    if op == "/":
        raise ExprError(setting, "cannot divide by an objective; one factor must be a number", column=factor.column)
    # The weight is the product of the other factors, in the order written.
    numbers = factors[: at[0]] + factors[at[0] + 1 :]
    first = numbers[0][1] if numbers[0][0] == "*" else Number(1.0)
    rest = tuple(numbers[1:] if numbers[0][0] == "*" else numbers)
    weight = Expression(Product(first, rest) if rest else first, setting=setting).evaluate_at({}, None)
    if not abs(weight) <= MAX_WEIGHT:
        raise ExprError(setting, f"the weight {weight:g} is beyond float32's range ({MAX_WEIGHT:.2g}); use a smaller weight",
                        column=node.column)  # fmt: skip
    return weight * _combine(factor, setting)
