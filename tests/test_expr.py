"""The expression language shared by schedules and objectives: arithmetic,
names, targets, limits and errors."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dreamreel.pipeline.expr import (
    FUNCTIONS,
    MAX_NESTING,
    ExprError,
    Expression,
    Number,
    Product,
    Sum,
    Syntax,
    Target,
    Variable,
    parse_formula,
    parse_keyframes,
)

VARIABLES = ("t", "s", "b", "rms", "bass", "mid", "treble", "onset")


def expression(text, variables=VARIABLES):
    return Expression(parse_formula(text, setting="zoom", syntax=Syntax(variables=variables)), setting="zoom")


def value(text, env=None):
    return expression(text).evaluate(env or {})


def resolve(name, suffix):
    """A toy target resolver: layers 'a' and 'blocks.4', with any suffix but ')'."""
    if name.text not in ("a", "blocks.4", "class"):
        raise ExprError("objective", f"unknown layer '{name.text}'", column=name.column)
    if suffix is not None and suffix.kind not in ("number", "name", "string"):
        raise ExprError("objective", f"bad suffix {suffix.describe()}", column=suffix.column)
    return (name.text, name.column, suffix and (suffix.kind, suffix.text, suffix.column))


TARGETS = Syntax(noun="objective", max_chars=500, resolve_target=resolve)


def tree(text, syntax=TARGETS):
    return parse_formula(text, setting="objective", syntax=syntax)


# --------------------------------------------------------------------------
# Arithmetic


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1.02", 1.02),
        ("3", 3.0),
        (".5", 0.5),
        ("1e-3", 0.001),
        ("2.5E2", 250.0),
        ("2+3*4**2", 50.0),
        ("-2**2", -4.0),
        ("(-2)**2", 4.0),
        ("2**3**2", 512.0),
        ("2**-1", 0.5),
        ("-2*-3", 6.0),
        ("+1 - -1", 2.0),
        ("10 - 4 - 3", 3.0),
        ("12 / 3 / 2", 2.0),
        ("(1 + 2) * 3", 9.0),
        ("  1 +\n\t2 ", 3.0),
        ("pi", math.pi),
        ("sin(pi/2) + cos(0) + tan(0)", 2.0),
        ("abs(-2) + floor(2.7) + ceil(2.2)", 7.0),
        ("sqrt(16) + exp(0) + log(1)", 5.0),
        ("min(3, 1, 2) + max(3, 1, 2)", 4.0),
        ("clamp(5, 0, 1) + clamp(-5, 0, 1) + clamp(0.5, 0, 1)", 1.5),
    ],
)
def test_expressions_follow_python_arithmetic(text, expected):
    assert value(text) == pytest.approx(expected)


def test_every_function_is_documented_and_callable():
    for name, function in FUNCTIONS.items():
        args = ", ".join(["0.5"] * function.min_args)
        if name == "clamp":
            args = "0.5, 0, 1"
        assert math.isfinite(value(f"{name}({args})")), name
        assert function.usage.startswith(f"{name}(")


def test_variables_come_from_the_environment():
    env = {"t": 10.0, "s": 0.4, "b": 0.8, "rms": 1.0, "bass": 2.0, "mid": 0.5, "treble": 0.25, "onset": 3.0}
    assert value("t + s + b", env) == pytest.approx(11.2)
    assert value("rms*bass*mid*treble*onset", env) == pytest.approx(0.75)
    assert value("1.01 + 0.03*bass", env) == pytest.approx(1.07)


def test_expression_class_reports_variables_and_evaluates():
    formula = expression("1 + 0.02*sin(t/10) + 0.1*bass")
    assert formula.variables == {"t", "bass"}
    assert not formula.is_constant
    assert formula.evaluate({"t": 0.0, "bass": 1.0}) == pytest.approx(1.1)
    assert expression("2*pi").is_constant


def test_printing_reads_back_as_the_same_formula():
    for text in ["2+3*4**2", "-2**2", "(-2)**2", "2**3**2", "(2**3)**2", "2**-t", "(1+2)+3", "t-(s-b)",
                 "-(2*t)", "2*-t", "1 - -t", "t/(s*b)", "max(t, 1, -2)", "0.1 + 1e-07*t", "-t**2"]:
        formula = expression(text)
        assert expression(str(formula)) == formula, (text, str(formula))
    assert str(expression("1.01+0.03*bass")) == "1.01 + 0.03*bass"



# --------------------------------------------------------------------------
# Targets: the leaves objectives resolve


def test_targets_are_resolved_while_parsing_with_their_columns():
    root = tree("0.5*blocks.4:97 + a - class:'tabby cat'")
    assert isinstance(root, Sum)
    weighted, (op_a, plain), (op_class, named) = root.first, *root.rest
    assert isinstance(weighted, Product) and weighted.first == Number(0.5)
    channel = weighted.rest[0][1]
    assert channel == Target("blocks.4:97", None) and channel.value == ("blocks.4", 5, ("number", "97", 14))
    assert (op_a, plain.value) == ("+", ("a", 19, None))
    assert op_class == "-" and named.value == ("class", 23, ("string", "'tabby cat'", 29))
    assert str(root) == "0.5*blocks.4:97 + a - class:'tabby cat'"


@pytest.mark.parametrize(
    "text, column, message",
    [
        ("a + conv9", 5, "unknown layer 'conv9'"),
        ("a:)", 3, "bad suffix '\\)'"),
        ("a:", 3, "bad suffix the end"),
        ("conv9(2)", 1, "unknown layer 'conv9'"),  # a call of an unknown name is an unknown target
        ("a(2)", 1, "'a' is not a function; to multiply, write a\\*\\(...\\)"),
        ("class:'tabby", 7, "the quote is never closed"),
        ("a +", 4, "expected a number, a name or"),
    ],
)
def test_target_errors_name_the_column(text, column, message):
    with pytest.raises(ExprError, match=message) as caught:
        tree(text)
    assert caught.value.column == column


def test_strings_and_targets_exist_only_where_the_caller_resolves_them():
    with pytest.raises(ExprError, match=r"column 1: unexpected character .*\(schedules have no strings\)"):
        parse_formula("'a'", setting="zoom", syntax=Syntax(noun="schedule"))
    with pytest.raises(ExprError, match="column 1: unknown name 'blocks.4'"):
        parse_formula("blocks.4", setting="zoom", syntax=Syntax())
    # Variables and constants win over targets; functions are called as functions.
    syntax = Syntax(variables=("t",), resolve_target=resolve)
    assert isinstance(tree("t", syntax), Variable)
    assert Expression(tree("sqrt(4)*pi", syntax), setting="x").evaluate({}) == pytest.approx(2 * math.pi)


# --------------------------------------------------------------------------
# Limits and errors, the same for every kind of text


@pytest.mark.parametrize("syntax", [Syntax(), TARGETS], ids=["formula", "targets"])
@pytest.mark.parametrize("nest", [lambda inner, k: "-" * k + inner, lambda inner, k: "(" * k + inner + ")" * k,
                                  lambda inner, k: "abs(" * k + inner + ")" * k], ids=["signs", "parentheses", "calls"])
def test_one_nesting_limit_for_every_kind_of_text(syntax, nest):
    leaf = "a" if syntax.resolve_target else "1"
    parse_formula(nest(leaf, MAX_NESTING - 1), setting="x", syntax=syntax)
    with pytest.raises(ExprError, match=f"nested more than {MAX_NESTING} levels") as caught:
        parse_formula(nest(leaf, 90), setting="x", syntax=syntax)
    assert caught.value.column is not None and caught.value.column <= MAX_NESTING * len("abs(") + 1


def test_length_limit_and_empty_text_are_named_by_the_noun():
    with pytest.raises(ExprError, match="^objective: the objective is 501 characters long; the limit is 500$"):
        tree("a" * 501)
    with pytest.raises(ExprError, match="^objective: column 1: the objective is empty; say what$"):
        tree("", Syntax(noun="objective", empty_hint="say what"))


def test_error_message_reads_setting_frame_column_problem():
    error = ExprError("zoom", "divides by zero", column=4, frame=10)
    assert isinstance(error, ValueError)
    assert str(error) == "zoom: frame 10: column 4: divides by zero"
    assert str(ExprError("zoom", "no column")) == "zoom: no column"


@pytest.mark.parametrize(
    "text, column, message",
    [
        # (test_schedule.py has the full table of messages, read through keyframes)
        ("1 +", 4, "expected a number, a name or '\\(' but found the end"),
        ("1/(t-t)", 4, "divides by zero"),  # found at evaluation: the column of the zero
        ("1:(2)", 2, "expected an operator"),  # keyframes only where parse_keyframes reads them
    ],
)
def test_formula_errors_name_the_column(text, column, message):
    with pytest.raises(ExprError, match=message) as caught:
        expression(text).evaluate({"t": 1.0})
    assert caught.value.column == column


def test_keyframes_are_read_by_parse_keyframes():
    keys, keyframed = parse_keyframes("0:(1), 10:(t)", setting="zoom", syntax=Syntax(variables=("t",)))
    assert keyframed and [frame for frame, _ in keys] == [0, 10] and keys[1][1] == Variable("t")
    assert parse_keyframes("1 + 1", setting="zoom") == ([(0, Sum(Number(1.0), (("+", Number(1.0)),)))], False)


# --------------------------------------------------------------------------
# Fuzzing: nothing but ExprError, ever

_TARGET_ALPHABET = "ablocks.4:'\" 0123456789+-*/()**,^;_ eE"


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=60), st.text(alphabet=_TARGET_ALPHABET, max_size=80)))
def test_any_text_with_targets_parses_or_raises_expr_error(text):
    try:
        root = tree(text)
    except ExprError:
        return
    assert str(root)
