"""Keyframed, audio-reactive schedules for numeric settings.

Every numeric setting of ``dreamreel zoom`` (zoom, angle, translate_x, step,
iterations, blend, objective weights) may be a schedule instead of a number,
written in the keyframe syntax of Deforum::

    "1.02"                                  the same number on every frame
    "1.01 + 0.03*bass"                      one expression, evaluated every frame
    "0:(1.02), 120:(1.05), 240:(1.0)"       keyframes, frame:(value)
    "0:(1 + 0.02*sin(t/10)), 300:(1.0)"     expressions inside keyframes

Expressions have numbers (``3``, ``0.5``, ``.5``, ``1e-3``), ``+ - * / **`` and
parentheses with Python's precedence (``**`` binds tighter than a leading minus,
so ``-2**2 == -4``, and is right-associative, so ``2**3**2 == 2**9``), the
constant ``pi``, the functions in :data:`FUNCTIONS`, and these variables:

    ``t``       frame index, 0, 1, 2, ...
    ``s``       seconds since the start, t / fps
    ``b``       beats since the start, s * bpm / 60 (needs a tempo)
    ``rms``, ``bass``, ``mid``, ``treble``, ``onset``
                the audio features of the frame (see :mod:`audio`), where 1 is
                the track's typical level and 0 is silence

Presets are TOML files from strangers, so a schedule is read by the hand-written
tokenizer and recursive-descent parser below into a small tree of frozen
dataclasses, and nothing is ever handed to ``eval``. The grammar::

    schedule   := keyframes | expression
    keyframes  := keyframe ("," keyframe)* [","]
    keyframe   := FRAME ":" "(" expression ")"          FRAME: digits only
    expression := term (("+" | "-") term)*
    term       := unary (("*" | "/") unary)*
    unary      := ("-" | "+") unary | power
    power      := atom ["**" unary]
    atom       := NUMBER | NAME | NAME "(" expression ("," expression)* ")"
                | "(" expression ")"

Length and nesting limits keep parsing bounded, all arithmetic is done in
floats, and every math problem (division by zero, overflow, ``sqrt`` of a
negative number) raises :class:`ScheduleError` naming the setting, the frame
and the part of the formula at fault. Parts that use no variable are evaluated
once when the schedule is parsed, so ``9**9**9`` or ``log(0)`` is reported when
a preset is loaded rather than hours into a render.
"""

from __future__ import annotations

import difflib
import math
import re
from bisect import bisect_right
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from numbers import Real
from typing import TYPE_CHECKING, Union

from .audio import FEATURE_NAMES

if TYPE_CHECKING:
    from .audio import AudioFeatures

DEFAULT_VARIABLES = ("t", "s", "b", *FEATURE_NAMES)

# A keyframe per frame for 40 s of 25 fps video, as audio-to-keyframe tools
# write them ("1000:(1.0234), " is ~16 characters), fits; a megabyte of text
# is refused before it is read. Tokenising 20k characters takes milliseconds.
MAX_SOURCE_CHARS = 20_000

# Parentheses, signs, powers and function calls may nest this deep. Real
# formulas use three or four levels; the limit keeps the parser's recursion
# (about five Python frames per level) far below Python's limit of 1000.
MAX_NESTING = 32

# Frame numbers above a billion (a year of video at 30 fps) are typos; the cap
# also keeps int() away from Python's 4300-digit limit on str-to-int parsing.
MAX_FRAME = 10**9

CONSTANTS = {"pi": math.pi}

INTERPOLATIONS = ("linear", "cubic")


class ScheduleError(ValueError):
    """A schedule that cannot be parsed, or that cannot be evaluated at a frame.

    The message reads ``SETTING: [frame F: ][column C: ]PROBLEM``, for example
    ``zoom: column 9: expected a number, a name or '(' but found ')'``. The
    parts are attributes too, for callers that add a preset file or TOML key.
    Columns count characters of the schedule text from 1.
    """

    def __init__(self, setting: str, problem: str, *, column: int | None = None, frame: int | None = None):
        where = "".join(f"{label} {value}: " for label, value in (("frame", frame), ("column", column))
                        if value is not None)
        super().__init__(f"{setting}: {where}{problem}")
        self.setting = setting
        self.problem = problem
        self.column = column
        self.frame = frame


# --------------------------------------------------------------------------
# Functions


@dataclass(frozen=True)
class Function:
    """A function schedules may call.

    Attributes:
        impl: computes the value from float arguments, returning a float.
        usage: how to call it, for messages ("clamp(x, lo, hi)").
        min_args, max_args: how many arguments it takes (max None: any number).
        domain: what the arguments must satisfy, for "is undefined" messages.
    """

    impl: Callable[..., float]
    usage: str
    min_args: int = 1
    max_args: int | None = 1
    domain: str = ""


def _floor(x: float) -> float:
    # math.floor returns an int, and ints would let later products grow
    # without overflowing; every value stays a float.
    return float(math.floor(x))


def _ceil(x: float) -> float:
    return float(math.ceil(x))


def _clamp(x: float, lo: float, hi: float) -> float:
    if lo > hi:
        raise ValueError("lo > hi")
    return min(max(x, lo), hi)


# What presets need to shape motion: periodic wobble (sin, cos), easing and
# limits (min, max, clamp, abs), stepping (floor, ceil), and growth curves
# (sqrt, exp, log). Angles are in radians, log is the natural logarithm.
FUNCTIONS: dict[str, Function] = {
    "sin": Function(math.sin, "sin(x)"),
    "cos": Function(math.cos, "cos(x)"),
    "tan": Function(math.tan, "tan(x)"),
    "abs": Function(math.fabs, "abs(x)"),
    "floor": Function(_floor, "floor(x)"),
    "ceil": Function(_ceil, "ceil(x)"),
    "sqrt": Function(math.sqrt, "sqrt(x)", domain="x >= 0"),
    "exp": Function(math.exp, "exp(x)"),
    "log": Function(math.log, "log(x)", domain="x > 0"),
    "min": Function(min, "min(a, b, ...)", 2, None),
    "max": Function(max, "max(a, b, ...)", 2, None),
    "clamp": Function(_clamp, "clamp(x, lo, hi)", 3, 3, domain="lo <= hi"),
}


# --------------------------------------------------------------------------
# Syntax tree
#
# Each node evaluates itself in float arithmetic and prints itself back with
# only the parentheses it needs. `column` (1-based, where the node starts in
# the source) serves error messages and is left out of equality, so that two
# spellings of the same formula compare equal.

_SUM, _PRODUCT, _UNARY, _POWER, _ATOM = 1, 2, 3, 4, 5  # binding strength, loosest first


class _EvaluationProblem(Exception):
    """Raised inside evaluation; Expression turns it into a ScheduleError."""

    def __init__(self, node: Node, problem: str):
        super().__init__(problem)
        self.node = node
        self.problem = problem


def _format_number(value: float) -> str:
    """Shortest text that reads back as `value`: 120 rather than 120.0."""
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _wrap(node: Node, parenthesise: bool) -> str:
    return f"({node})" if parenthesise else str(node)


def _require_finite(node: Node, value: float) -> float:
    if not math.isfinite(value):
        raise _EvaluationProblem(node, f"{node} is too large for a float")
    return value


@dataclass(frozen=True, slots=True)
class Number:
    """A literal number, like 1.02."""

    value: float
    column: int = field(default=0, compare=False)

    children = ()

    @property
    def precedence(self) -> int:
        # A negative constant only arises from a plain number setting (-1.5);
        # it prints like a negation so it stays correct inside larger formulas.
        return _UNARY if self.value < 0 else _ATOM

    def eval(self, env: Mapping[str, float]) -> float:
        return self.value

    def __str__(self) -> str:
        return _format_number(self.value)


@dataclass(frozen=True, slots=True)
class Constant:
    """A named constant, like pi."""

    name: str
    value: float
    column: int = field(default=0, compare=False)

    children = ()
    precedence = _ATOM

    def eval(self, env: Mapping[str, float]) -> float:
        return self.value

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Variable:
    """A per-frame variable (t, s, b, bass, ...), read from the environment."""

    name: str
    column: int = field(default=0, compare=False)

    children = ()
    precedence = _ATOM

    def eval(self, env: Mapping[str, float]) -> float:
        try:
            value = float(env[self.name])
        except KeyError:
            have = ", ".join(sorted(env)) or "none"
            problem = f"no value for '{self.name}' at this frame (values given: {have})"
            raise _EvaluationProblem(self, problem) from None
        if not math.isfinite(value):
            raise _EvaluationProblem(self, f"'{self.name}' is {value}, not a finite number")
        return value

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Negate:
    """A leading minus: -operand."""

    operand: Node
    column: int = field(default=0, compare=False)

    precedence = _UNARY

    @property
    def children(self) -> tuple[Node, ...]:
        return (self.operand,)

    def eval(self, env: Mapping[str, float]) -> float:
        return -self.operand.eval(env)

    def __str__(self) -> str:
        return "-" + _wrap(self.operand, self.operand.precedence < _UNARY)


@dataclass(frozen=True, slots=True)
class Power:
    """base**exponent, in floats (math.pow)."""

    base: Node
    exponent: Node

    precedence = _POWER

    @property
    def column(self) -> int:
        return self.base.column

    @property
    def children(self) -> tuple[Node, ...]:
        return (self.base, self.exponent)

    def eval(self, env: Mapping[str, float]) -> float:
        # math.pow works in floats only: no huge exact ints, no complex results
        # for (-8)**(1/3); it raises instead, which we report.
        try:
            return _require_finite(self, math.pow(self.base.eval(env), self.exponent.eval(env)))
        except OverflowError:
            raise _EvaluationProblem(self, f"{self} is too large for a float") from None
        except ValueError:
            raise _EvaluationProblem(
                self, f"{self} is undefined: a**b needs a > 0 when b is fractional, and a != 0 when b < 0"
            ) from None

    def __str__(self) -> str:
        # The base must be an atom ((-2)**2, (2**3)**2); the exponent may be
        # anything a unary allows (2**-1, 2**3**2).
        base = _wrap(self.base, self.base.precedence <= _POWER)
        return f"{base}**{_wrap(self.exponent, self.exponent.precedence < _UNARY)}"


@dataclass(frozen=True, slots=True)
class Sum:
    """``first (+|-) node (+|-) node ...``, flat so long sums do not nest deeply."""

    first: Node
    rest: tuple[tuple[str, Node], ...]

    precedence = _SUM

    @property
    def column(self) -> int:
        return self.first.column

    @property
    def children(self) -> tuple[Node, ...]:
        return (self.first, *(node for _, node in self.rest))

    def eval(self, env: Mapping[str, float]) -> float:
        total = self.first.eval(env)
        for op, node in self.rest:
            if op == "+":
                total += node.eval(env)
            else:
                total -= node.eval(env)
        return _require_finite(self, total)

    def __str__(self) -> str:
        # A sum inside a sum only comes from parentheses; keep them, so the
        # text reads back to the same tree.
        text = _wrap(self.first, self.first.precedence <= _SUM)
        for op, node in self.rest:
            text += f" {op} {_wrap(node, node.precedence <= _SUM)}"
        return text


@dataclass(frozen=True, slots=True)
class Product:
    """``first (*|/) node (*|/) node ...``, flat like Sum."""

    first: Node
    rest: tuple[tuple[str, Node], ...]

    precedence = _PRODUCT

    @property
    def column(self) -> int:
        return self.first.column

    @property
    def children(self) -> tuple[Node, ...]:
        return (self.first, *(node for _, node in self.rest))

    def eval(self, env: Mapping[str, float]) -> float:
        value = self.first.eval(env)
        for op, node in self.rest:
            operand = node.eval(env)
            if op == "*":
                value *= operand
            elif operand == 0.0:
                culprit = "" if isinstance(node, Number) else f" ({node} is 0)"
                raise _EvaluationProblem(node, f"{self} divides by zero{culprit}")
            else:
                value /= operand
        return _require_finite(self, value)

    def __str__(self) -> str:
        text = _wrap(self.first, self.first.precedence <= _PRODUCT)
        for op, node in self.rest:
            text += f"{op}{_wrap(node, node.precedence <= _PRODUCT)}"
        return text


@dataclass(frozen=True, slots=True)
class Call:
    """A call of one of FUNCTIONS, like clamp(x, 0, 1)."""

    function: str
    args: tuple[Node, ...]
    column: int = field(default=0, compare=False)

    precedence = _ATOM

    @property
    def children(self) -> tuple[Node, ...]:
        return self.args

    def eval(self, env: Mapping[str, float]) -> float:
        function = FUNCTIONS[self.function]
        args = [arg.eval(env) for arg in self.args]
        try:
            return _require_finite(self, function.impl(*args))
        except OverflowError:
            raise _EvaluationProblem(self, f"{self} is too large for a float") from None
        except ValueError:
            problem = f"{self} is undefined: {self.function} needs {function.domain}"
            raise _EvaluationProblem(self, problem) from None

    def __str__(self) -> str:
        return f"{self.function}({', '.join(map(str, self.args))})"


Node = Union[Number, Constant, Variable, Negate, Power, Sum, Product, Call]


def _walk(root: Node) -> Iterator[Node]:
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node.children)


def _variables_of(node: Node) -> frozenset[str]:
    return frozenset(n.name for n in _walk(node) if isinstance(n, Variable))


# --------------------------------------------------------------------------
# Tokenizer and parser


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "number", "name", "op" or "end"
    text: str
    column: int  # 1-based

    def describe(self) -> str:
        return "the end" if self.kind == "end" else f"'{self.text}'"


# ASCII digits only: \d would also accept digits of other scripts.
_NUMBER = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = ("**", "+", "-", "*", "/", "(", ")", ",", ":")  # "**" before "*"
_WHITESPACE = " \t\r\n"
# Characters people reach for from other languages, and what to write instead.
_CHARACTER_HINTS = {
    "^": "write powers as a**b",
    "%": "there is no % operator",
    "'": "schedules have no strings",
    '"': "schedules have no strings",
    "[": "group with parentheses",
    "]": "group with parentheses",
    "{": "group with parentheses",
    "}": "group with parentheses",
    ";": "separate keyframes with commas",
}


class _Parser:
    """Recursive descent over the grammar in the module docstring.

    Tokens are read lazily, so the first problem reported is the leftmost one.
    """

    def __init__(self, text: str, setting: str, variables: Collection[str]):
        if len(text) > MAX_SOURCE_CHARS:
            raise ScheduleError(
                setting,
                f"the schedule is {len(text)} characters long; the limit is {MAX_SOURCE_CHARS} "
                "(a schedule is a short formula or a list of keyframes)",
            )
        self.text = text
        self.setting = setting
        self.variables = tuple(variables)
        self.position = 0
        self.depth = 0
        self.lookahead: _Token | None = None
        self.token = self._read_token()

    # -- tokens --------------------------------------------------------------

    def _read_token(self) -> _Token:
        text, position = self.text, self.position
        while position < len(text) and text[position] in _WHITESPACE:
            position += 1
        column = position + 1
        if position == len(text):
            self.position = position
            return _Token("end", "", column)
        char = text[position]
        if match := _NUMBER.match(text, position):
            kind, token_text = "number", match[0]
        elif match := _NAME.match(text, position):
            kind, token_text = "name", match[0]
        else:
            token_text = next((op for op in _OPERATORS if text.startswith(op, position)), "")
            kind = "op"
            if not token_text:
                hint = _CHARACTER_HINTS.get(char)
                problem = f"unexpected character {char!r}" + (f" ({hint})" if hint else "")
                raise ScheduleError(self.setting, problem, column=column)
        self.position = position + len(token_text)
        return _Token(kind, token_text, column)

    def advance(self) -> _Token:
        """Move to the next token; returns the one moved past."""
        current = self.token
        self.token = self.lookahead or self._read_token()
        self.lookahead = None
        return current

    def peek(self) -> _Token:
        """The token after the current one, without moving."""
        if self.lookahead is None:
            self.lookahead = self._read_token()
        return self.lookahead

    def at(self, op: str) -> bool:
        return self.token.kind == "op" and self.token.text == op

    def error(self, problem: str, token: _Token | None = None) -> ScheduleError:
        return ScheduleError(self.setting, problem, column=(token or self.token).column)

    def close(self, opening: _Token, what: str) -> None:
        """Consume the ')' matching `opening`."""
        if not self.at(")"):
            found = self.token.describe()
            raise self.error(f"expected {what} to close the '(' at column {opening.column} but found {found}")
        self.advance()

    # -- schedule level ------------------------------------------------------

    def schedule(self) -> tuple[list[tuple[int, Node]], bool]:
        """Parse the whole text: ([(frame, node), ...], whether it had keyframes)."""
        if self.token.kind == "end":
            raise self.error("the schedule is empty; give a number like 1.02 "
                             "or keyframes like 0:(1.02), 120:(1.05)")
        if not (self.token.kind == "number" and self.peek().text == ":"):
            return [(0, self.whole_expression())], False
        keys = [self.keyframe()]
        while self.at(","):
            self.advance()
            if self.token.kind == "end":  # a trailing comma, as hand-edited lists often have
                break
            frame_token = self.token
            frame, node = self.keyframe()
            previous = keys[-1][0]
            if frame == previous:
                raise self.error(f"frame {frame} has two keyframes", frame_token)
            if frame < previous:
                raise self.error(
                    f"keyframe {frame} comes after keyframe {previous}; "
                    "keyframes must be in increasing frame order",
                    frame_token,
                )
            keys.append((frame, node))
        if self.token.kind != "end":
            found = self.token.describe()
            raise self.error(f"expected ',' before the next keyframe, or the end, but found {found}")
        return keys, True

    def keyframe(self) -> tuple[int, Node]:
        token = self.token
        if token.kind != "number":
            raise self.error(f"expected a frame number like 120 but found {token.describe()}")
        if not token.text.isdigit():
            raise self.error(f"frame numbers are whole numbers, not '{token.text}'")
        if len(token.text) > len(str(MAX_FRAME)) or int(token.text) > MAX_FRAME:
            raise self.error(f"frame {token.text} is beyond the last frame allowed, {MAX_FRAME}")
        frame = int(token.text)
        self.advance()
        if not self.at(":"):
            raise self.error(f"expected ':' after the frame number {frame} but found {self.token.describe()}")
        self.advance()
        if not self.at("("):
            raise self.error(
                f"expected '(' after '{frame}:' but found {self.token.describe()} "
                f"(keyframe values go in parentheses, like {frame}:(1.05))"
            )
        opening = self.advance()
        node = self.expression()
        self.close(opening, "')'")
        return frame, node

    def whole_expression(self) -> Node:
        """An expression that must run to the end of the text."""
        node = self.expression()
        if self.token.kind != "end":
            found = self.token.describe()
            if self.at(":"):
                hint = "; keyframes start with a whole frame number, like 120:(1.05)"
            elif self.at(")"):
                hint = " without a matching '('"
            elif self.token.kind != "op" or self.at("("):
                hint = "; to multiply, write '*' (2*t, not 2t)"
            else:
                hint = ""
            raise self.error(f"expected an operator (+ - * / **) or the end but found {found}{hint}")
        return node

    # -- expressions ---------------------------------------------------------

    def expression(self) -> Node:
        first = self.term()
        rest = []
        while self.at("+") or self.at("-"):
            op = self.advance().text
            rest.append((op, self.term()))
        return Sum(first, tuple(rest)) if rest else first

    def term(self) -> Node:
        first = self.unary()
        rest = []
        while self.at("*") or self.at("/"):
            op = self.advance().text
            rest.append((op, self.unary()))
        return Product(first, tuple(rest)) if rest else first

    def unary(self) -> Node:
        # Every way of nesting (parentheses, signs, powers, calls) passes
        # through here, so this is where depth is counted.
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.error(
                f"nested more than {MAX_NESTING} levels deep (parentheses, signs, powers and calls count)"
            )
        if self.at("-"):
            sign = self.advance()
            node: Node = Negate(self.unary(), sign.column)
        elif self.at("+"):
            self.advance()
            node = self.unary()
        else:
            node = self.power()
        self.depth -= 1
        return node

    def power(self) -> Node:
        base = self.atom()
        if self.at("**"):
            self.advance()
            return Power(base, self.unary())
        return base

    def atom(self) -> Node:
        token = self.token
        if token.kind == "number":
            self.advance()
            value = float(token.text)
            if not math.isfinite(value):
                raise self.error(f"{token.text} is too large for a float", token)
            return Number(value, token.column)
        if token.kind == "name":
            self.advance()
            return self.call(token) if self.at("(") else self.name(token)
        if self.at("("):
            opening = self.advance()
            node = self.expression()
            self.close(opening, "')'")
            return node  # grouping only; __str__ puts back the parentheses that matter
        raise self.error(f"expected a number, a name or '(' but found {token.describe()}")

    def name(self, token: _Token) -> Node:
        name = token.text
        if name in CONSTANTS:
            return Constant(name, CONSTANTS[name], token.column)
        if name in self.variables:
            return Variable(name, token.column)
        if name in FUNCTIONS:
            raise self.error(f"{name} is a function; call it like {FUNCTIONS[name].usage}", token)
        raise self.unknown(token)

    def call(self, token: _Token) -> Node:
        name = token.text
        function = FUNCTIONS.get(name)
        if function is None:
            if name in self.variables or name in CONSTANTS:
                raise self.error(f"'{name}' is not a function; to multiply, write {name}*(...)", token)
            raise self.unknown(token)
        opening = self.advance()
        if self.at(")"):
            raise self.error(f"{name} needs arguments: {function.usage}")
        args = [self.expression()]
        while self.at(","):
            self.advance()
            args.append(self.expression())
        self.close(opening, f"',' or ')' in {name}(...)")
        too_many = function.max_args is not None and len(args) > function.max_args
        if len(args) < function.min_args or too_many:
            given = f"{len(args)} argument" + ("s" if len(args) != 1 else "")
            raise self.error(f"{function.usage} was given {given}", token)
        return Call(name, tuple(args), token.column)

    def unknown(self, token: _Token) -> ScheduleError:
        name = token.text
        if name in DEFAULT_VARIABLES:
            available = ", ".join(self.variables) or "no variables"
            return self.error(f"'{name}' is not available for {self.setting} (it can use {available})", token)
        known = [*self.variables, *CONSTANTS, *FUNCTIONS]
        if close := difflib.get_close_matches(name, known, n=1):
            return self.error(f"unknown name '{name}' (did you mean '{close[0]}'?)", token)
        return self.error(
            f"unknown name '{name}'; the variables are {', '.join(self.variables) or 'none'}, "
            f"the constants {', '.join(CONSTANTS)}, and the functions {', '.join(FUNCTIONS)}",
            token,
        )


# --------------------------------------------------------------------------
# Public classes


class Expression:
    """A parsed formula, ready to evaluate for each frame.

    Attributes:
        setting: the setting it belongs to, for messages ("zoom").
        variables: names of the variables it uses, e.g. frozenset({"t", "bass"}).

    Example:
        >>> Expression.parse("1.01 + 0.03*bass", setting="zoom").evaluate({"bass": 2.0})
        1.07
    """

    __slots__ = ("setting", "variables", "_root", "_constant")

    def __init__(self, root: Node, *, setting: str):
        """Wrap a syntax tree, evaluating its variable-free parts once.

        Raises:
            ScheduleError: a variable-free part fails (``9**9**9``, ``log(0)``).
        """
        self.setting = setting
        self._root = root
        self.variables = _variables_of(root)
        self._constant: float | None = None
        self._check_constant_parts(root)
        self._constant = None if self.variables else self._evaluate({}, None)

    @classmethod
    def parse(cls, text: str, *, setting: str, variables: Collection[str] = DEFAULT_VARIABLES) -> Expression:
        """Parse one expression (no keyframes).

        Raises:
            ScheduleError: the text is not an expression over `variables`.
        """
        if not isinstance(text, str):
            raise ScheduleError(setting, f"expected a formula as text, got {type(text).__name__}")
        return cls(_Parser(text, setting, variables).whole_expression(), setting=setting)

    @property
    def is_constant(self) -> bool:
        """Whether it uses no variables, so has the same value on every frame."""
        return self._constant is not None

    def evaluate(self, env: Mapping[str, float]) -> float:
        """The value for one frame.

        Args:
            env: a value for each variable the expression uses (see
                :func:`frame_env`); others are ignored.

        Returns:
            A finite float.

        Raises:
            ScheduleError: a variable is missing, or the arithmetic fails
                (division by zero, overflow, a function outside its domain);
                the message names the frame when ``env`` has ``t``.
        """
        t = env.get("t")
        return self._evaluate(env, int(t) if t is not None and math.isfinite(t) else None)

    def _evaluate(self, env: Mapping[str, float], frame: int | None) -> float:
        if self._constant is not None:
            return self._constant
        try:
            return self._root.eval(env)
        except _EvaluationProblem as failure:
            involved = sorted(_variables_of(failure.node))
            values = ", ".join(f"{name}={env[name]:g}" for name in involved if name in env)
            problem = failure.problem + (f" (with {values})" if values else "")
            column = failure.node.column or None  # 0: a node built in code, not parsed
            raise ScheduleError(self.setting, problem, column=column, frame=frame) from None

    def _check_constant_parts(self, node: Node) -> bool:
        """Evaluate each largest variable-free part once; returns whether `node` is one.

        Each part is evaluated a single time (not once per enclosing node), so
        this is linear in the size of the formula.
        """
        constant_children = [self._check_constant_parts(child) for child in node.children]
        if isinstance(node, Variable):
            return False
        if all(constant_children):
            return True
        for child, constant in zip(node.children, constant_children):
            if constant:
                Expression(child, setting=self.setting)
        return False

    def __str__(self) -> str:
        return str(self._root)

    def __repr__(self) -> str:
        return f"Expression.parse({str(self)!r}, setting={self.setting!r})"

    def __eq__(self, other: object) -> bool:
        """Same formula (spacing and redundant parentheses aside)."""
        return isinstance(other, Expression) and self._root == other._root

    def __hash__(self) -> int:
        return hash(self._root)


class Schedule:
    """A setting's value as a function of the frame: a number, a formula, or keyframes.

    Between keyframes the value is interpolated, before the first keyframe it
    holds the first value and after the last the last. Each keyframe's formula
    is evaluated with the current frame's variables and then interpolated, so
    ``0:(1 + 0.03*bass), 300:(1.0)`` reacts to the music on every frame while
    fading out.

    Interpolation:
        ``"linear"``: straight lines between keyframes.
        ``"cubic"``: monotone cubic Hermite (PCHIP: Fritsch & Carlson 1980,
        with the weighted harmonic-mean slopes of Fritsch & Butland 1984 that
        scipy's PchipInterpolator uses). It passes through every keyframe and
        never overshoots between two of them, which matters here: an overshoot
        would turn a zoom of 1.0 into a zoom-out, or a step of 0 negative.
        The slope is 0 at the first and last keyframe, where the value goes on
        as a hold, so the curve eases into and out of them.

    Attributes:
        setting: the name used in messages ("zoom").
        keyframes: ((frame, Expression), ...), frames strictly increasing; a
            plain number or formula is one keyframe at frame 0.
        interpolation: "linear" or "cubic".
        variables: names of all variables used.
        is_constant: the same value on every frame, whatever the audio.

    Example:
        >>> zoom = Schedule.parse("0:(1.0), 100:(2.0)", setting="zoom")
        >>> zoom(50, {})
        1.5
    """

    def __init__(
        self,
        setting: str,
        keyframes: Iterable[tuple[int, Expression]],
        *,
        interpolation: str = "linear",
        keyframed: bool = True,
    ):
        self.setting = setting
        self.keyframes = tuple(keyframes)
        if not self.keyframes:
            raise ScheduleError(setting, "a schedule needs at least one keyframe")
        if interpolation not in INTERPOLATIONS:
            raise ScheduleError(setting, f"interpolation must be 'linear' or 'cubic', not {interpolation!r}")
        frames = [frame for frame, _ in self.keyframes]
        if any(later <= earlier for earlier, later in zip(frames, frames[1:])):
            raise ScheduleError(setting, f"keyframes must be in strictly increasing frame order, got {frames}")
        self.interpolation = interpolation
        self._keyframed = keyframed
        self._frames = tuple(frames)
        self._values = tuple(value for _, value in self.keyframes)
        self.variables = frozenset().union(*(value.variables for value in self._values))
        constants = {value._constant for value in self._values}
        self.is_constant = not self.variables and len(constants) == 1

    @classmethod
    def parse(
        cls,
        text: str | int | float,
        *,
        setting: str,
        variables: Collection[str] = DEFAULT_VARIABLES,
        interpolation: str = "linear",
    ) -> Schedule:
        """Read a setting's value from a preset or the command line.

        Args:
            text: a number (``1.02``), a formula (``"1.01 + 0.03*bass"``) or
                keyframes (``"0:(1.02), 120:(1.05)"``).
            setting: the setting's name, for messages.
            variables: the variable names formulas may use.
            interpolation: "linear" or "cubic" between keyframes.

        Raises:
            ScheduleError: the text is malformed, uses an unknown name, or has
                a variable-free part that fails; the message names the setting
                and the column.
        """
        if isinstance(text, bool) or not isinstance(text, (str, Real)):
            raise ScheduleError(
                setting,
                f'expected a number or a schedule like "0:(1.02), 120:(1.05)", '
                f"got {type(text).__name__} {text!r:.40}",
            )
        if isinstance(text, str):
            keys, keyframed = _Parser(text, setting, variables).schedule()
        else:
            try:
                value = float(text)
            except OverflowError:
                value = math.inf
            if not math.isfinite(value):
                raise ScheduleError(setting, f"expected a finite number, got {text!r:.40}")
            keys, keyframed = [(0, Number(value, 1))], False
        return cls(
            setting,
            [(frame, Expression(node, setting=setting)) for frame, node in keys],
            interpolation=interpolation,
            keyframed=keyframed,
        )

    def __call__(self, frame: int, env: Mapping[str, float]) -> float:
        """The setting's value at `frame`.

        Args:
            frame: frame index (0-based).
            env: variable values for this frame, from :func:`frame_env`.

        Returns:
            A finite float.

        Raises:
            ScheduleError: evaluation failed; names the setting, frame and column.
        """
        frames = self._frames
        if frame <= frames[0]:
            return self._values[0]._evaluate(env, frame)
        if frame >= frames[-1]:
            return self._values[-1]._evaluate(env, frame)
        i = bisect_right(frames, frame) - 1
        y0 = self._values[i]._evaluate(env, frame)
        y1 = self._values[i + 1]._evaluate(env, frame)
        width = frames[i + 1] - frames[i]
        u = (frame - frames[i]) / width
        if self.interpolation == "linear":
            value = y0 + (y1 - y0) * u
        else:
            slope = (y1 - y0) / width
            m0 = m1 = 0.0  # at the first and last keyframe, where holds begin
            if i > 0:
                y_before = self._values[i - 1]._evaluate(env, frame)
                h_before = frames[i] - frames[i - 1]
                m0 = _pchip_slope(h_before, width, (y0 - y_before) / h_before, slope)
            if i + 2 < len(frames):
                y_after = self._values[i + 2]._evaluate(env, frame)
                h_after = frames[i + 2] - frames[i + 1]
                m1 = _pchip_slope(width, h_after, slope, (y_after - y1) / h_after)
            u2, u3 = u * u, u * u * u  # cubic Hermite basis
            value = (
                (2 * u3 - 3 * u2 + 1) * y0
                + (u3 - 2 * u2 + u) * width * m0
                + (-2 * u3 + 3 * u2) * y1
                + (u3 - u2) * width * m1
            )
        if not math.isfinite(value):
            raise ScheduleError(self.setting, "interpolating between keyframes overflows a float", frame=frame)
        return value

    def __str__(self) -> str:
        if not self._keyframed:
            return str(self._values[0])
        return ", ".join(f"{frame}:({value})" for frame, value in self.keyframes)

    def __repr__(self) -> str:
        extra = f", interpolation={self.interpolation!r}" if self.interpolation != "linear" else ""
        return f"Schedule.parse({str(self)!r}, setting={self.setting!r}{extra})"


def _pchip_slope(h_before: float, h_after: float, d_before: float, d_after: float) -> float:
    """PCHIP slope at an inner keyframe, in value per frame.

    Args:
        h_before, h_after: frames to the previous and the next keyframe.
        d_before, d_after: slopes of the straight lines to them.
    """
    if d_before * d_after <= 0:  # a peak, a dip or a flat side: a flat tangent cannot overshoot
        return 0.0
    w_before, w_after = 2 * h_after + h_before, h_after + 2 * h_before
    return (w_before + w_after) / (w_before / d_before + w_after / d_after)


# --------------------------------------------------------------------------
# Frame variables


def frame_env(
    frame: int, fps: float, bpm: float | None = None, features: AudioFeatures | None = None
) -> dict[str, float]:
    """The variables schedules see at one frame.

    Args:
        frame: frame index (0-based).
        fps: frames per second of the animation.
        bpm: tempo in beats per minute; when None, ``features.bpm`` is used.
        features: audio features analysed at the same fps, or None.

    Returns:
        ``{"t": frame, "s": seconds}``, plus ``"b"`` (beats) when a tempo is
        known and the five audio features when `features` is given (0 past
        the end of the audio). Names with no value are left out, and
        :func:`check_inputs` makes sure no schedule needs them.

    Raises:
        ValueError: the features were analysed at another frame rate.
    """
    if features is not None and not math.isclose(features.fps, fps):
        raise ValueError(
            f"audio features were analysed at {features.fps:g} fps but the animation runs at {fps:g} fps"
        )
    env = {"t": float(frame), "s": frame / fps}
    if bpm is None and features is not None:
        bpm = features.bpm
    if bpm is not None:
        env["b"] = env["s"] * bpm / 60.0
    if features is not None:
        env.update(features.at(frame))
    return env


def check_inputs(schedules: Iterable[Schedule], *, have_audio: bool, have_bpm: bool) -> None:
    """Make sure every variable the schedules use will have a value.

    Call this before rendering, so that a preset using ``bass`` without an
    audio track fails at once instead of at frame 0 of a long render.

    Args:
        schedules: all schedules of the run.
        have_audio: an audio track was given (the audio features exist).
        have_bpm: a tempo is known (given, or estimated from the audio).

    Raises:
        ScheduleError: e.g. ``zoom: uses 'bass' but no --audio was given``.
    """
    for schedule in schedules:
        audio = [name for name in FEATURE_NAMES if name in schedule.variables]
        if audio and not have_audio:
            names = ", ".join(f"'{name}'" for name in audio)
            raise ScheduleError(schedule.setting, f"uses {names} but no --audio was given")
        if "b" in schedule.variables and not have_bpm:
            if have_audio:
                remedy = "no steady beat was found in the audio, so give --bpm"
            else:
                remedy = "give --bpm, or --audio to estimate it"
            raise ScheduleError(schedule.setting, f"uses 'b' (beats) but the tempo is unknown: {remedy}")
