"""The one expression language of dreamreel: schedules and objectives.

Schedules (``--zoom "0:(1.02), 120:(1 + 0.03*bass)"``, see :mod:`schedule`)
and objectives (``--objective "mid + 0.5*blocks.5:97"``, see
:mod:`objectives`) are read by the same tokenizer and parser into the same
small tree of frozen dataclasses, with the same arithmetic, limits and errors.

Expressions have numbers (``3``, ``0.5``, ``.5``, ``1e-3``), ``+ - * / **``
and parentheses with Python's precedence (``**`` binds tighter than a leading
minus, so ``-2**2 == -4``, and is right-associative, so ``2**3**2 == 2**9``),
the constant ``pi``, the functions in :data:`FUNCTIONS`, the variables the
caller allows (a schedule's ``t``, ``bass``, ...), and, where the caller
resolves them, *targets* (an objective's ``blocks.4``, ``blocks.4:97``,
``class:tabby``, ``class:"tabby cat"``, ``guide:mid``). The grammar::

    keyframes  := keyframe ("," keyframe)* [","]         schedules only
    keyframe   := FRAME ":" "(" expression ")"           FRAME: digits only
    expression := term (("+" | "-") term)*
    term       := unary (("*" | "/") unary)*
    unary      := ("-" | "+") unary | power
    power      := atom ["**" unary]
    atom       := NUMBER | NAME | NAME "(" expression ("," expression)* ")"
                | "(" expression ")" | target
    target     := NAME [":" (NUMBER | NAME | STRING)]    where the caller resolves targets

Names may contain dots (``blocks.4``, ``features.denseblock4``); strings
(``'...'`` or ``"..."``) exist only where targets do.

Presets and flags are text from strangers, so nothing is ever handed to
``eval``. Python's own ``ast.parse`` walked against a whitelist was the other
candidate; it does not fit: ``0:(1.02), 120:(1.05)``, ``blocks.4:97`` and
``class:tabby`` (a keyword) are not Python expressions, and CPython's parser
recurses on nesting (``"-" * 10000 + "1"`` raises MemoryError) before a whitelist
could look at the tree. So the parser is the hand-written recursive descent
below, and it is bounded: the caller's limit on the text's length, one
nesting limit (:data:`MAX_NESTING`) for parentheses, signs, powers and calls,
and float arithmetic whose every result must be finite, which bounds
exponents and magnitudes alike. Parts that use no variable are evaluated once
when parsed, so ``9**9**9`` or ``log(0)`` is reported when a preset is loaded
rather than hours into a render. Every problem is an :class:`ExprError` that
names the setting and the column.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

# Parentheses, signs, powers and function calls may nest this deep. Real
# formulas use three or four levels; the limit keeps the parser's recursion
# (about five Python frames per level), and the evaluation of the tree, far
# below Python's limit of 1000.
MAX_NESTING = 32

# Frame numbers above a billion (a year of video at 30 fps) are typos; the cap
# also keeps int() away from Python's 4300-digit limit on str-to-int parsing.
MAX_FRAME = 10**9

CONSTANTS = {"pi": math.pi}


class ExprError(ValueError):
    """Text that cannot be parsed, or a formula that cannot be evaluated at a frame.

    The message reads ``SETTING: [frame F: ][column C: ]PROBLEM``, for example
    ``zoom: column 9: expected a number, a name or '(' but found ')'``. The
    parts are attributes too, for callers that add a preset file or TOML key.

    Attributes:
        setting: what the text is, as messages name it: a setting (``"zoom"``)
            or a flag with its text (``"--objective 'mid +'"``).
        problem: what is wrong, and how to fix it.
        column: where, counting characters of the text from 1; None when the
            problem is not at one place.
        frame: the frame being evaluated, or None.
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
    """A function formulas may call.

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
    """Raised inside evaluation; Expression turns it into an ExprError."""

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
class Target:
    """A leaf the caller resolved while parsing: an objective's layer, channel, class or guide.

    Attributes:
        text: as written, e.g. ``"blocks.4:97"``.
        value: what the caller's resolver returned for it (an Objective).
    """

    text: str
    value: Any = field(compare=False)
    column: int = field(default=0, compare=False)

    children = ()
    precedence = _ATOM

    def eval(self, env: Mapping[str, float]) -> float:
        raise _EvaluationProblem(self, f"{self.text} is not a number")

    def __str__(self) -> str:
        return self.text


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
class _Chain:
    """``first op node op node ...``: flat, so long sums and products do not nest deeply."""

    first: Node
    rest: tuple[tuple[str, Node], ...]

    @property
    def column(self) -> int:
        return self.first.column

    @property
    def children(self) -> tuple[Node, ...]:
        return (self.first, *(node for _, node in self.rest))


@dataclass(frozen=True, slots=True)
class Sum(_Chain):
    """``first (+|-) node (+|-) node ...``."""

    precedence = _SUM

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
class Product(_Chain):
    """``first (*|/) node (*|/) node ...``."""

    precedence = _PRODUCT

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


Node = Union[Number, Constant, Variable, Target, Negate, Power, Sum, Product, Call]


def walk(root: Node) -> Iterator[Node]:
    """Every node of a tree, `root` included (iteratively: no recursion)."""
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node.children)


def _variables_of(node: Node) -> frozenset[str]:
    return frozenset(n.name for n in walk(node) if isinstance(n, Variable))


# --------------------------------------------------------------------------
# What a text may hold


@dataclass(frozen=True, slots=True)
class Token:
    """One token of the text.

    Attributes:
        kind: "number", "name", "string", "op" or "end".
        text: as written (a string with its quotes).
        column: where it starts, from 1.
    """

    kind: str
    text: str
    column: int

    def describe(self) -> str:
        return "the end" if self.kind == "end" else repr(self.text)


@dataclass(frozen=True)
class Syntax:
    """What one kind of text may hold, and how messages speak of it.

    Attributes:
        noun: what the text is called in messages ("schedule", "objective").
        max_chars: the longest text read; longer ones are refused unread.
        empty_hint: what to write instead of nothing, e.g. "give a number like 1.02".
        operand: what may start an operand, for "expected ... but found" messages.
        variables: names with a value at each evaluation (``t``, ``bass``).
        other_variables: variables of related settings; using one of them
            says it is not available here, rather than that it is unknown.
        resolve_target: turns a target, ``NAME`` or ``NAME:SUFFIX``, into a
            value while parsing; called with the name's token and the
            suffix's (None without ``:``); raises ExprError for a bad one.
            None: no targets and no strings (names are variables, constants
            and functions only).
    """

    noun: str = "formula"
    max_chars: int = 20_000
    empty_hint: str = "give a number or a formula"
    operand: str = "a number, a name or '('"
    variables: tuple[str, ...] = ()
    other_variables: tuple[str, ...] = ()
    resolve_target: Callable[[Token, Token | None], Any] | None = None


# ASCII digits only: \d would also accept digits of other scripts.
_NUMBER = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_STRING = re.compile(r"\"[^\"]*\"|'[^']*'")
_OPERATORS = ("**", "+", "-", "*", "/", "(", ")", ",", ":")  # "**" before "*"
_WHITESPACE = " \t\r\n"
# Characters people reach for from other languages, and what to write instead.
_CHARACTER_HINTS = {
    "^": "write powers as a**b",
    "%": "there is no % operator",
    "[": "group with parentheses",
    "]": "group with parentheses",
    "{": "group with parentheses",
    "}": "group with parentheses",
}


class _Parser:
    """Recursive descent over the grammar in the module docstring.

    Tokens are read lazily, so the first problem reported is the leftmost one.
    """

    def __init__(self, text: str, setting: str, syntax: Syntax, *, keyframes: bool = False):
        if len(text) > syntax.max_chars:
            raise ExprError(
                setting, f"the {syntax.noun} is {len(text)} characters long; the limit is {syntax.max_chars}"
            )
        self.text = text
        self.setting = setting
        self.syntax = syntax
        self.keyframes_allowed = keyframes
        self.position = 0
        self.depth = 0
        self.lookahead: Token | None = None
        self.token = self._read_token()
        if self.token.kind == "end":
            raise self.error(f"the {syntax.noun} is empty; {syntax.empty_hint}")

    # -- tokens --------------------------------------------------------------

    def _read_token(self) -> Token:
        text, position = self.text, self.position
        while position < len(text) and text[position] in _WHITESPACE:
            position += 1
        column = position + 1
        if position == len(text):
            self.position = position
            return Token("end", "", column)
        char = text[position]
        strings = self.syntax.resolve_target is not None
        if match := _NUMBER.match(text, position):
            kind, token_text = "number", match[0]
        elif match := _NAME.match(text, position):
            kind, token_text = "name", match[0]
        elif strings and (match := _STRING.match(text, position)):
            kind, token_text = "string", match[0]
        else:
            token_text = next((op for op in _OPERATORS if text.startswith(op, position)), "")
            kind = "op"
            if not token_text:
                raise ExprError(self.setting, self._unexpected(char, strings), column=column)
        self.position = position + len(token_text)
        return Token(kind, token_text, column)

    def _unexpected(self, char: str, strings: bool) -> str:
        hint = _CHARACTER_HINTS.get(char)
        if char in "'\"":
            hint = "the quote is never closed" if strings else f"{self.syntax.noun}s have no strings"
        elif char == ";" and self.keyframes_allowed:
            hint = "separate keyframes with commas"
        return f"unexpected character {char!r}" + (f" ({hint})" if hint else "")

    def advance(self) -> Token:
        """Move to the next token; returns the one moved past."""
        current = self.token
        self.token = self.lookahead or self._read_token()
        self.lookahead = None
        return current

    def peek(self) -> Token:
        """The token after the current one, without moving."""
        if self.lookahead is None:
            self.lookahead = self._read_token()
        return self.lookahead

    def at(self, op: str) -> bool:
        return self.token.kind == "op" and self.token.text == op

    def error(self, problem: str, token: Token | None = None) -> ExprError:
        return ExprError(self.setting, problem, column=(token or self.token).column)

    def close(self, opening: Token, what: str) -> None:
        """Consume the ')' matching `opening`."""
        if not self.at(")"):
            found = self.token.describe()
            raise self.error(f"expected {what} to close the '(' at column {opening.column} but found {found}")
        self.advance()

    # -- keyframes -----------------------------------------------------------

    def keyframes(self) -> tuple[list[tuple[int, Node]], bool]:
        """Parse the whole text: ([(frame, node), ...], whether it had keyframes)."""
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

    # -- expressions ---------------------------------------------------------

    def whole_expression(self) -> Node:
        """An expression that must run to the end of the text."""
        node = self.expression()
        if self.token.kind != "end":
            found = self.token.describe()
            if self.at(":") and self.keyframes_allowed:
                hint = "; keyframes start with a whole frame number, like 120:(1.05)"
            elif self.at(")"):
                hint = " without a matching '('"
            elif self.token.kind != "op" or self.at("("):
                hint = "; to multiply, write '*' (2*t, not 2t)"
            else:
                hint = ""
            raise self.error(f"expected an operator (+ - * / **) or the end but found {found}{hint}")
        return node

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
        raise self.error(f"expected {self.syntax.operand} but found {token.describe()}")

    def name(self, token: Token) -> Node:
        name = token.text
        if name in CONSTANTS:
            return Constant(name, CONSTANTS[name], token.column)
        if name in self.syntax.variables:
            return Variable(name, token.column)
        if self.syntax.resolve_target is not None:
            return self.target(token)
        if name in FUNCTIONS:
            raise self.error(f"{name} is a function; call it like {FUNCTIONS[name].usage}", token)
        raise self.unknown(token)

    def target(self, token: Token) -> Target:
        suffix = None
        if self.at(":"):
            self.advance()
            suffix = self.advance()
        value = self.syntax.resolve_target(token, suffix)
        text = token.text + (f":{suffix.text}" if suffix is not None else "")
        return Target(text, value, token.column)

    def call(self, token: Token) -> Node:
        name = token.text
        function = FUNCTIONS.get(name)
        if function is None:
            if name not in self.syntax.variables and name not in CONSTANTS:
                if self.syntax.resolve_target is None:
                    raise self.unknown(token)
                self.syntax.resolve_target(token, None)  # an unknown target says so, as anywhere else
            raise self.error(f"'{name}' is not a function; to multiply, write {name}*(...)", token)
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

    def unknown(self, token: Token) -> ExprError:
        name, variables = token.text, self.syntax.variables
        if name in self.syntax.other_variables:
            available = ", ".join(variables) or "no variables"
            return self.error(f"'{name}' is not available for {self.setting} (it can use {available})", token)
        known = [*variables, *CONSTANTS, *FUNCTIONS]
        if close := difflib.get_close_matches(name, known, n=1):
            return self.error(f"unknown name '{name}' (did you mean '{close[0]}'?)", token)
        return self.error(
            f"unknown name '{name}'; the variables are {', '.join(variables) or 'none'}, "
            f"the constants {', '.join(CONSTANTS)}, and the functions {', '.join(FUNCTIONS)}",
            token,
        )


def parse_formula(text: str, *, setting: str, syntax: Syntax = Syntax()) -> Node:
    """Read one expression (no keyframes) into a syntax tree.

    Args:
        text: the expression.
        setting: names the text in messages ("zoom", "--objective 'mid'").
        syntax: the variables, targets and limits allowed.

    Raises:
        ExprError: the text is too long, empty or malformed, nests too deep,
            or names something unknown; the message gives the column.
    """
    return _Parser(text, setting, syntax).whole_expression()


def parse_keyframes(text: str, *, setting: str, syntax: Syntax = Syntax()) -> tuple[list[tuple[int, Node]], bool]:
    """Read keyframes ``"0:(1.02), 120:(1 + t)"`` or one expression.

    Returns:
        ([(frame, tree), ...] with frames strictly increasing, whether the
        text had keyframes); one expression is one keyframe at frame 0.

    Raises:
        ExprError: as :func:`parse_formula`, and for frames out of order.
    """
    return _Parser(text, setting, syntax, keyframes=True).keyframes()


# --------------------------------------------------------------------------
# Evaluation


class Expression:
    """A parsed formula, ready to evaluate for each frame.

    Attributes:
        setting: the setting it belongs to, for messages ("zoom").
        variables: names of the variables it uses, e.g. frozenset({"t", "bass"}).

    Example:
        >>> tree = parse_formula("1.01 + 0.03*bass", setting="zoom", syntax=Syntax(variables=("bass",)))
        >>> Expression(tree, setting="zoom").evaluate({"bass": 2.0})
        1.07
    """

    __slots__ = ("setting", "variables", "_root", "_constant")

    def __init__(self, root: Node, *, setting: str):
        """Wrap a syntax tree, evaluating its variable-free parts once.

        Raises:
            ExprError: a variable-free part fails (``9**9**9``, ``log(0)``).
        """
        self.setting = setting
        self._root = root
        self.variables = _variables_of(root)
        self._constant: float | None = None
        self._check_constant_parts(root)
        self._constant = None if self.variables else self.evaluate_at({}, None)

    @property
    def is_constant(self) -> bool:
        """Whether it uses no variables, so has the same value on every frame."""
        return self._constant is not None

    def evaluate(self, env: Mapping[str, float]) -> float:
        """The value for one frame.

        Args:
            env: a value for each variable the expression uses (see
                :func:`schedule.frame_env`); others are ignored.

        Returns:
            A finite float.

        Raises:
            ExprError: a variable is missing, or the arithmetic fails
                (division by zero, overflow, a function outside its domain);
                the message names the frame when ``env`` has ``t``.
        """
        t = env.get("t")
        return self.evaluate_at(env, int(t) if t is not None and math.isfinite(t) else None)

    def evaluate_at(self, env: Mapping[str, float], frame: int | None) -> float:
        """:meth:`evaluate`, with the frame its errors name given explicitly."""
        if self._constant is not None:
            return self._constant
        try:
            return self._root.eval(env)
        except _EvaluationProblem as failure:
            involved = sorted(_variables_of(failure.node))
            values = ", ".join(f"{name}={env[name]:g}" for name in involved if name in env)
            problem = failure.problem + (f" (with {values})" if values else "")
            column = failure.node.column or None  # 0: a node built in code, not parsed
            raise ExprError(self.setting, problem, column=column, frame=frame) from None

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
        return f"<Expression {self.setting}: {self}>"

    def __eq__(self, other: object) -> bool:
        """Same formula (spacing and redundant parentheses aside)."""
        return isinstance(other, Expression) and self._root == other._root

    def __hash__(self) -> int:
        return hash(self._root)
