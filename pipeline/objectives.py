"""What the dream maximises: small composable objective values.

An :class:`Objective` maps a dict of layer activations to one score per image,
shape (B,), so a batch of images is dreamed exactly as if one by one. They add
up like numbers (after lucid's ``optvis/objectives.py``)::

    layer("blocks.4") + 0.5 * channel("blocks.5", 97)

and :func:`parse` reads the same thing from the command line::

    --objective "mid + 0.5*blocks.5:97"

Grammar (no ``eval``; a hand-written recursive-descent parser)::

    expr   := term (("+" | "-") term)*
    term   := unary ("*" unary)*           one factor at most is not a number
    unary  := "-" unary | atom
    atom   := NUMBER | "(" expr ")" | target
    target := LAYER [":" CHANNEL]          layer or one channel of it
            | "class:" (INDEX | NAME | "quoted name")
            | "guide:" LAYER               needs a guide image
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from .models import LOGITS, DreamModel

Activations = Mapping[str, torch.Tensor]

# Objective strings come from presets written by strangers: bound their size.
MAX_OBJECTIVE_CHARS = 500
MAX_NESTING = 16


@dataclass(frozen=True)
class Objective:
    """A named score of activations.

    Attributes:
        fn: activations → (B,) scores; higher is more dream.
        layers: the layer names ``fn`` reads.
        name: readable form, e.g. ``"blocks.4 + 0.5*blocks.5:97"``.
    """

    fn: Callable[[Activations], torch.Tensor]
    layers: frozenset[str]
    name: str

    def __call__(self, acts: Activations) -> torch.Tensor:
        return self.fn(acts)

    def __add__(self, other: Objective) -> Objective:
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(lambda a: self(a) + other(a), self.layers | other.layers, f"{self.name} + {other.name}")

    def __sub__(self, other: Objective) -> Objective:
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(lambda a: self(a) - other(a), self.layers | other.layers, f"{self.name} - {other.name}")

    def __mul__(self, weight: float) -> Objective:
        if not isinstance(weight, (int, float)):
            return NotImplemented
        w = float(weight)
        return Objective(lambda a: w * self(a), self.layers, f"{w:g}*{_group(self.name)}")

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
    return Objective(score, layers, " | ".join(obj.name for obj in objectives))


# --- parser ----------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<number>\d+\.\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\d+(?:[eE][-+]?\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_.]*)"
    r"|(?P<string>\"[^\"]*\"|'[^']*')"
    r"|(?P<op>[-+*:()]))"
)


class _Parser:
    def __init__(self, text: str, model: DreamModel, guide_acts: Callable[[str], torch.Tensor] | None):
        self.text = text
        self.model = model
        self.guide_acts = guide_acts
        self.tokens: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                if text[pos:].strip() == "":
                    break
                self.fail(pos + len(text[pos:]) - len(text[pos:].lstrip()), "unexpected character")
            kind = m.lastgroup
            if kind is None:  # only whitespace left
                break
            self.tokens.append((kind, m[kind], m.start(kind)))
            pos = m.end()
        self.i = 0
        self.depth = 0

    def fail(self, column: int, message: str):
        raise ValueError(f"--objective {self.text!r}: column {column + 1}: {message}")

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.i] if self.i < len(self.tokens) else ("end", "", len(self.text))

    def take(self) -> tuple[str, str, int]:
        tok = self.peek()
        self.i += 1
        return tok

    def expect(self, value: str) -> None:
        kind, text, col = self.take()
        if text != value:
            self.fail(col, f"expected {value!r} but found {text or 'the end'!r}")

    def parse(self) -> Objective:
        value = self.expr()
        kind, text, col = self.peek()
        if kind != "end":
            self.fail(col, f"unexpected {text!r}")
        if not isinstance(value, Objective):
            self.fail(0, "the expression is a plain number; name a layer, a channel, a class or a guide")
        return value

    def expr(self):
        value = self.term()
        while self.peek()[1] in ("+", "-"):
            _, op, col = self.take()
            right = self.term()
            value = self.combine(value, right, op, col)
        return value

    def combine(self, left, right, op, col):
        if isinstance(left, Objective) and isinstance(right, Objective):
            return left + right if op == "+" else left - right
        if not isinstance(left, Objective) and not isinstance(right, Objective):
            return left + right if op == "+" else left - right
        self.fail(col, f"cannot {'add' if op == '+' else 'subtract'} a plain number and an objective; weight it with '*'")

    def term(self):
        value = self.unary()
        while self.peek()[1] == "*":
            _, _, col = self.take()
            right = self.unary()
            if isinstance(value, Objective) and isinstance(right, Objective):
                self.fail(col, "cannot multiply two objectives; one factor must be a number")
            value = value * right
        return value

    def unary(self):
        if self.peek()[1] == "-":
            self.take()
            return -self.unary()
        return self.atom()

    def atom(self):
        kind, text, col = self.take()
        if kind == "number":
            return float(text)
        if text == "(":
            self.depth += 1
            if self.depth > MAX_NESTING:
                self.fail(col, f"nested deeper than {MAX_NESTING} parentheses")
            value = self.expr()
            self.expect(")")
            self.depth -= 1
            return value
        if kind != "name":
            self.fail(col, f"expected a layer name, a number or '(' but found {text or 'the end'!r}")
        if text in ("class", "guide") and self.peek()[1] == ":":
            self.take()
            return self.class_target(col) if text == "class" else self.guide_target(col)
        name = self.layer_name(text, col)
        if self.peek()[1] == ":":
            self.take()
            kind, index, icol = self.take()
            if kind != "number" or not index.isdigit():
                self.fail(icol, f"expected a channel number after '{text}:' but found {index or 'the end'!r}")
            return channel(name, int(index))
        return layer(name)

    def layer_name(self, text: str, col: int) -> str:
        try:
            return self.model.resolve_layer(text)
        except ValueError as exc:
            self.fail(col, str(exc))

    def class_target(self, col: int) -> Objective:
        kind, label, lcol = self.take()
        if kind not in ("number", "name", "string"):
            self.fail(lcol, "expected a class number or name after 'class:'")
        label = label.strip("\"'")
        try:
            index = self.model.resolve_class(label)
        except ValueError as exc:
            self.fail(lcol, str(exc))
        names = self.model.class_names
        return class_logit(index, names[index] if names and not label.isdigit() else None)

    def guide_target(self, col: int) -> Objective:
        kind, text, lcol = self.take()
        if kind != "name":
            self.fail(lcol, "expected a layer name after 'guide:'")
        name = self.layer_name(text, lcol)
        if self.guide_acts is None:
            self.fail(col, "guide:LAYER needs a guide image: pass --guide IMAGE")
        return guide(name, self.guide_acts(name))


def parse(
    text: str,
    model: DreamModel,
    *,
    guide_acts: Callable[[str], torch.Tensor] | None = None,
) -> Objective:
    """Read an objective expression such as ``"mid + 0.5*blocks.5:97"``.

    Args:
        text: the expression (see the module docstring for the grammar).
        model: resolves aliases, layer and class names.
        guide_acts: layer name → (1, C, h, w) activations of the guide image.

    Raises:
        ValueError: naming the column and what was expected.
    """
    if not isinstance(text, str):
        raise TypeError(f"objective must be a string, got {type(text).__name__}")
    if len(text) > MAX_OBJECTIVE_CHARS:
        raise ValueError(f"--objective: {len(text)} characters is too long (at most {MAX_OBJECTIVE_CHARS})")
    if not text.strip():
        raise ValueError("--objective is empty: name a layer such as 'mid' (see `dreamreel layers`)")
    return _Parser(text, model, guide_acts).parse()
