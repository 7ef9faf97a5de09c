"""Schedules: keyframes, interpolation, bounds, frame variables, and hostile input.

The formula language itself is tested in test_expr.py.
"""

import math
from collections.abc import Mapping

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dreamreel.pipeline.audio import FEATURE_NAMES, AudioFeatures
from dreamreel.pipeline.expr import MAX_NESTING, ExprError
from dreamreel.pipeline.schedule import DEFAULT_VARIABLES, check_inputs, frame_env, parse_schedule


def value(text, env=None, frame=0, **kwargs):
    return parse_schedule(text, setting="zoom", **kwargs)(frame, env or {})


# --------------------------------------------------------------------------
# Keyframes


def test_plain_numbers_and_formulas_are_schedules():
    assert value(1.02) == 1.02
    assert value(3) == 3.0
    assert value(np.float32(0.5)) == 0.5
    assert value("1.02 + 0.01*sin(t/10)", {"t": 0.0}) == pytest.approx(1.02)
    assert str(parse_schedule(1.5, setting="zoom")) == "1.5"
    assert str(parse_schedule(-2, setting="zoom")) == "-2"


def test_linear_keyframes_interpolate_and_hold():
    zoom = parse_schedule("0:(1.02), 120:(1.05), 240:(1.0)", setting="zoom")
    assert zoom(0, {}) == pytest.approx(1.02)
    assert zoom(60, {}) == pytest.approx(1.035)
    assert zoom(120, {}) == pytest.approx(1.05)
    assert zoom(180, {}) == pytest.approx(1.025)
    assert zoom(240, {}) == zoom(10_000, {}) == pytest.approx(1.0)
    late = parse_schedule("10:(2), 20:(4)", setting="zoom")
    assert late(0, {}) == late(-5, {}) == 2.0  # before the first key: hold its value
    assert late(15, {}) == 3.0


def test_cubic_keyframes_pass_through_keys_hold_and_never_overshoot():
    frames, values = [0, 10, 25, 30, 60], [0.0, 1.0, 0.2, 5.0, 5.0]
    text = ", ".join(f"{f}:({v})" for f, v in zip(frames, values))
    cubic = parse_schedule(text, setting="zoom", interpolation="cubic")
    for f, v in zip(frames, values):
        assert cubic(f, {}) == pytest.approx(v)
    assert cubic(-10, {}) == 0.0 and cubic(100, {}) == 5.0
    for (f0, v0), (f1, v1) in zip(zip(frames, values), zip(frames[1:], values[1:])):
        inside = [cubic(f, {}) for f in np.linspace(f0, f1, 23)]
        assert min(v0, v1) - 1e-12 <= min(inside) and max(inside) <= max(v0, v1) + 1e-12
    # Smooth, unlike linear: eases out of the first key (slope 0 at a hold).
    linear = parse_schedule(text, setting="zoom")
    assert cubic(1, {}) < linear(1, {})
    # Monotone data stays monotone.
    rising = parse_schedule("0:(0), 10:(1), 12:(5), 40:(6)", setting="zoom", interpolation="cubic")
    samples = [rising(f, {}) for f in np.linspace(0, 40, 200)]
    assert all(a <= b + 1e-12 for a, b in zip(samples, samples[1:]))


def test_keyframe_formulas_are_evaluated_at_the_current_frame():
    zoom = parse_schedule("0:(1 + 0.03*bass), 100:(1.0)", setting="zoom")
    assert zoom.variables == {"bass"} and not zoom.is_constant
    # At frame 50, the first key's formula sees this frame's bass, then fades half way.
    assert zoom(50, {"bass": 2.0}) == pytest.approx(1.03)
    assert zoom(50, {"bass": 0.0}) == pytest.approx(1.0)
    assert zoom(0, {"bass": 1.0}) == pytest.approx(1.03)


def test_constant_detection():
    assert parse_schedule("1.02", setting="zoom").is_constant
    assert parse_schedule("2*pi + 1", setting="zoom").is_constant
    assert parse_schedule("0:(1), 50:(1.0)", setting="zoom").is_constant
    assert not parse_schedule("0:(1), 50:(2)", setting="zoom").is_constant
    assert not parse_schedule("1 + 0*t", setting="zoom").is_constant


def test_str_gives_back_the_schedule():
    text = "0:(1.02), 120:(1 + 0.03*bass), 240:(1)"
    assert str(parse_schedule(text, setting="zoom")) == text
    assert str(parse_schedule("0:(1),", setting="zoom")) == "0:(1)"  # trailing comma allowed
    assert "cubic" in repr(parse_schedule("0:(1), 9:(2)", setting="zoom", interpolation="cubic"))


# --------------------------------------------------------------------------
# Frame variables and inputs


def features(n_frames=10, bpm=None):
    ramp = np.linspace(0, 2, n_frames, dtype=np.float32)
    return AudioFeatures(fps=25.0, duration_s=n_frames / 25, bpm=bpm, **{name: ramp for name in FEATURE_NAMES})


def test_frame_env_builds_time_beats_and_audio():
    env = frame_env(50, 25.0, bpm=120.0)
    assert env == {"t": 50.0, "s": 2.0, "b": 4.0}
    assert "b" not in frame_env(50, 25.0)
    audio = features(bpm=90.0)
    env = frame_env(9, 25.0, features=audio)
    assert env["bass"] == pytest.approx(2.0) and env["b"] == pytest.approx(9 / 25 * 90 / 60)
    assert frame_env(100, 25.0, features=audio)["onset"] == 0.0  # past the end: silence
    with pytest.raises(ValueError, match="25 fps"):
        frame_env(0, 30.0, features=audio)
    zoom = parse_schedule("1 + 0.5*bass", setting="zoom")
    assert [zoom(f, frame_env(f, 25.0, features=audio)) for f in (0, 9)] == pytest.approx([1.0, 2.0])


def test_check_inputs_names_the_missing_input():
    uses_bass = parse_schedule("1.01 + 0.03*bass", setting="zoom")
    uses_beats = parse_schedule("sin(b*pi)", setting="angle")
    check_inputs([uses_bass, uses_beats], have_audio=True, have_bpm=True)
    with pytest.raises(ExprError, match=r"^zoom: uses 'bass' but no --audio was given$"):
        check_inputs([uses_bass], have_audio=False, have_bpm=True)
    with pytest.raises(ExprError, match=r"angle: uses 'b' .*--bpm"):
        check_inputs([uses_beats], have_audio=True, have_bpm=False)


def test_restricted_variables():
    with pytest.raises(ExprError, match=r"'bass' is not available for steps \(it can use t, s\)"):
        parse_schedule("bass", setting="steps", variables=("t", "s"))


# --------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    "text, column, message",
    [
        ("0:(1.02", 8, r"expected '\)' to close the '\(' at column 3 but found the end"),
        ("0:(1.0), 0:(2.0)", 10, "frame 0 has two keyframes"),
        ("120:(1), 60:(2)", 10, "keyframe 60 comes after keyframe 120"),
        ("abc", 1, "unknown name 'abc'"),
        ("1 + bas", 5, r"unknown name 'bas' \(did you mean 'bass'\?\)"),
        ("1 +", 4, "expected a number, a name or '\\(' but found the end"),
        ("1.02 + )", 8, "expected a number, a name or '\\(' but found '\\)'"),
        ("__import__('os')", 1, "unknown name '__import__'"),
        ("().__class__", 2, "found '\\)'"),
        ("open('x')", 1, "unknown name 'open'"),
        ("9**9**9", 1, "9\\*\\*9\\*\\*9 is too large for a float"),
        ("t + 9**9**9", 5, "too large"),
        ("(" * 10000, MAX_NESTING + 1, "nested more than 32 levels"),
        ("-" * 10000 + "1", MAX_NESTING + 1, "nested more than 32 levels"),
        ("2" + "**2" * 1000, 1 + 3 * MAX_NESTING, "nested more than 32 levels"),
        ("", 1, "empty"),
        ("2t", 2, "to multiply, write '\\*'"),
        ("2^3", 2, "write powers as a\\*\\*b"),
        ("1.5:(2)", 1, "frame numbers are whole numbers"),
        ("-1:(2)", 3, "keyframes start with a whole frame number"),
        ("0:1.02", 3, "expected '\\(' after '0:'"),
        ("0:(1) 10:(2)", 7, "expected ','"),
        ("99999999999:(1)", 1, "beyond the last frame"),
        ("sin", 1, "sin is a function; call it like sin\\(x\\)"),
        ("clamp(1, 2)", 1, "clamp\\(x, lo, hi\\) was given 2 arguments"),
        ("t(2)", 1, "'t' is not a function"),
        ("log(0)", 1, "log\\(0\\) is undefined: log needs x > 0"),
        ("1 + sqrt(-1)", 5, "sqrt needs x >= 0"),
        ("1/(2-2)", 4, "divides by zero"),
        ("(-8)**(1/3)", 2, "a\\*\\*b needs a > 0 when b is fractional"),
        ("exp(1000)", 1, "too large"),
        ("1e400", 1, "too large"),
        ("1e308*10", 1, "too large"),
    ],
)
def test_malformed_schedules_name_setting_and_column(text, column, message):
    # The nesting cases stop at the column where the limit is crossed: the
    # rest of the 10000 characters is never read.
    with pytest.raises(ExprError, match=message) as caught:
        parse_schedule(text, setting="zoom")
    error = caught.value
    assert str(error).startswith(f"zoom: column {column}: "), str(error)
    assert (error.setting, error.column) == ("zoom", column)


def test_huge_input_is_refused_unread():
    with pytest.raises(ExprError, match="^zoom: the schedule is 1048576 characters long") as caught:
        parse_schedule("1+" * (1 << 19), setting="zoom")
    assert caught.value.column is None  # refused before the first token


def test_long_flat_formulas_and_keyframe_lists_are_fine():
    # Flat sums do not nest, so they neither hit the depth limit nor recurse deeply.
    assert value("+".join(["1"] * 5000)) == 5000.0
    keys = ", ".join(f"{f}:({1 + f / 1000})" for f in range(1000))
    assert value(keys, frame=500) == pytest.approx(1.5)


@pytest.mark.parametrize("bad", [True, None, [1.0], {"a": 1}, float("nan"), float("inf"), 10**400])
def test_non_numbers_are_refused(bad):
    with pytest.raises(ExprError, match="^zoom: expected a"):
        parse_schedule(bad, setting="zoom")


def test_bounds_are_checked_when_parsed_where_possible_and_on_every_frame():
    bounded = {"setting": "iterations", "bounds": (0, 1000)}
    # Keyframes without variables fail at once, naming their frame and value.
    with pytest.raises(ExprError, match=r"^iterations: 1e\+09 is out of range on every frame: expected a value from 0 to 1000$"):
        parse_schedule("1e9", **bounded)
    with pytest.raises(ExprError, match=r"^iterations: frame 50: -1 is out of range"):
        parse_schedule("0:(3), 50:(-1)", **bounded)
    # Between keyframes inside the bounds, interpolation stays inside them.
    steps = parse_schedule("0:(0), 10:(1000), 20:(0)", interpolation="cubic", **bounded)
    assert all(0 <= steps(frame, {}) <= 1000 for frame in range(21))
    # Formulas are checked on each frame they are evaluated at.
    loud = parse_schedule("3 + 2000*bass", **bounded)
    assert loud(0, {"bass": 0.1}) == pytest.approx(203)
    with pytest.raises(ExprError, match=r"^iterations: frame 7: 2003 is out of range"):
        loud(7, {"bass": 1.0})
    assert "bounds=(0, 1000)" in repr(loud)


def test_unknown_interpolation():
    with pytest.raises(ExprError, match="interpolation must be 'linear' or 'cubic'"):
        parse_schedule("1", setting="zoom", interpolation="spline")


def test_evaluation_errors_name_setting_frame_and_values():
    divide = parse_schedule("1/(t - 10)", setting="zoom")
    expected = r"^zoom: frame 10: column 4: 1/\(t - 10\) divides by zero .*\(with t=10\)"
    with pytest.raises(ExprError, match=expected):
        divide(10, frame_env(10, 25.0))
    power = parse_schedule("t**t**t", setting="zoom")
    with pytest.raises(ExprError, match=r"^zoom: frame 9: column 1: .*too large for a float"):
        power(9, frame_env(9, 25.0))
    needs_audio = parse_schedule("0:(1 + bass)", setting="zoom")
    with pytest.raises(ExprError, match=r"^zoom: frame 3: column 8: no value for 'bass'"):
        needs_audio(3, frame_env(3, 25.0))
    with pytest.raises(ExprError, match=r"'bass' is nan"):
        needs_audio(0, {"bass": float("nan")})


class CountingEnv(Mapping):
    """Frame variables that count how often a formula reads them."""

    def __init__(self, values):
        self.values, self.reads = values, 0

    def __getitem__(self, name):
        self.reads += 1
        return self.values[name]

    def __iter__(self):
        return iter(self.values)

    def __len__(self):
        return len(self.values)


@pytest.mark.parametrize("interpolation", ["linear", "cubic"])
def test_a_frame_evaluates_at_most_four_keyframes_however_many_there_are(interpolation):
    # The cost of a frame is bounded: a bisection finds the keyframes around
    # it, and only those (two, and their neighbours for cubic) are evaluated.
    keys = ", ".join(f"{f}:(1+0.01*bass)" for f in range(0, 10_000, 20))
    zoom = parse_schedule(keys, setting="zoom", interpolation=interpolation)
    for frame in (0, 5, 5_005, 9_980, 20_000):
        env = CountingEnv({"t": float(frame), "bass": 1.0})
        assert zoom(frame, env) == pytest.approx(1.01)
        assert 1 <= env.reads <= 4
    # Keyframes without variables are evaluated once, when parsed.
    constant = parse_schedule("0:(1.01 + 0.02*pi), 100:(sqrt(2))", setting="zoom", interpolation=interpolation)
    env = CountingEnv({"t": 50.0})
    constant(50, env)
    assert env.reads == 0


# --------------------------------------------------------------------------
# Fuzzing: nothing but ExprError, ever

_ENV = {name: 0.7 for name in DEFAULT_VARIABLES} | {"t": 3.0}


def _evaluate_or_schedule_error(schedule, frame, env):
    try:
        result = schedule(frame, env)
    except ExprError:
        return
    assert isinstance(result, float) and math.isfinite(result)


_SCHEDULE_ALPHABET = "0123456789.eE+-*/(),: \tbtsapiqrlogmnxc_'"


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=40), st.text(alphabet=_SCHEDULE_ALPHABET, max_size=40)),
       st.integers(min_value=-5, max_value=500),
       st.sampled_from(["linear", "cubic"]))
def test_any_text_parses_or_raises_schedule_error(text, frame, interpolation):
    try:
        schedule = parse_schedule(text, setting="zoom", interpolation=interpolation)
    except ExprError:
        return
    _evaluate_or_schedule_error(schedule, frame, _ENV)


_leaf = st.one_of(
    st.floats(min_value=0, max_value=1e6, allow_nan=False).map(repr),
    st.integers(min_value=0, max_value=10**6).map(str),
    st.sampled_from([*DEFAULT_VARIABLES, "pi"]),
)


def _combine(children):
    operators = st.sampled_from(["+", "-", "*", "/", "**"])
    functions = st.sampled_from(["sin", "cos", "sqrt", "log", "exp", "abs", "floor"])
    return st.one_of(
        st.tuples(children, operators, children).map("".join),
        children.map(lambda c: f"({c})"),
        children.map(lambda c: f"-{c}"),
        st.tuples(functions, children).map(lambda p: f"{p[0]}({p[1]})"),
        st.tuples(children, children).map(lambda p: f"max({p[0]}, {p[1]})"),
    )


_formulas = st.recursive(_leaf, _combine, max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(_formulas, st.dictionaries(st.sampled_from(DEFAULT_VARIABLES), st.floats(-1e3, 1e3)),
       st.integers(min_value=0, max_value=10_000))
def test_generated_formulas_evaluate_to_finite_floats_or_schedule_error(formula, overrides, frame):
    try:
        schedule = parse_schedule(f"0:({formula}), 100:({formula}*2)", setting="zoom", interpolation="cubic")
    except ExprError as error:
        # A formula built from the grammar can only fail on limits or constant math.
        assert any(reason in error.problem for reason in ("nested", "too large", "undefined", "zero")), error
        return
    _evaluate_or_schedule_error(schedule, frame, _ENV | overrides)
    # Printing reads back as the same formulas.
    assert parse_schedule(str(schedule), setting="zoom").keyframes == schedule.keyframes
