"""Keyframed, audio-reactive schedules for numeric settings.

Every numeric setting of ``dreamreel zoom`` (zoom, angle, translate_x, step,
iterations, blend) may be a schedule instead of a number, written in the
keyframe syntax of Deforum::

    "1.02"                                  the same number on every frame
    "1.01 + 0.03*bass"                      one expression, evaluated every frame
    "0:(1.02), 120:(1.05), 240:(1.0)"       keyframes, frame:(value)
    "0:(1 + 0.02*sin(t/10)), 300:(1.0)"     expressions inside keyframes

The formulas are those of :mod:`expr` (numbers, ``+ - * / **``, ``pi``, the
functions in :data:`expr.FUNCTIONS`), over these variables:

    ``t``       frame index, 0, 1, 2, ...
    ``s``       seconds since the start, t / fps
    ``b``       beats since the song's first beat, (s - first_beat_s) * bpm / 60
                (needs a tempo): whole on every beat, negative before the first
    ``rms``, ``bass``, ``mid``, ``treble``, ``onset``
                the audio features of the frame (see :mod:`audio`), where 1 is
                the track's typical level and 0 is silence

Every problem, from a malformed formula to a value outside a setting's range
at some frame, is an :class:`expr.ExprError` naming the setting, the frame
and the column of the part at fault.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Collection, Iterable, Mapping
from numbers import Real
from typing import TYPE_CHECKING

from .audio import FEATURE_NAMES
from .expr import Expression, ExprError, Number, Syntax, parse_keyframes

if TYPE_CHECKING:
    from .audio import AudioFeatures

DEFAULT_VARIABLES = ("t", "s", "b", *FEATURE_NAMES)

# A keyframe per frame for 40 s of 25 fps video, as audio-to-keyframe tools
# write them ("1000:(1.0234), " is ~16 characters), fits; a megabyte of text
# is refused before it is read. Tokenising 20k characters takes milliseconds.
MAX_SOURCE_CHARS = 20_000

INTERPOLATIONS = ("linear", "cubic")


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
        bounds: (lowest, highest) value allowed, or None.
        variables: names of all variables used.
        is_constant: the same value on every frame, whatever the audio.

    Example:
        >>> zoom = parse_schedule("0:(1.0), 100:(2.0)", setting="zoom")
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
        bounds: tuple[float, float] | None = None,
    ):
        """Raises ExprError for no keyframes, frames out of order, or a
        variable-free keyframe outside `bounds`."""
        self.setting = setting
        self.keyframes = tuple(keyframes)
        if not self.keyframes:
            raise ExprError(setting, "a schedule needs at least one keyframe")
        if interpolation not in INTERPOLATIONS:
            raise ExprError(setting, f"interpolation must be 'linear' or 'cubic', not {interpolation!r}")
        frames = [frame for frame, _ in self.keyframes]
        if any(later <= earlier for earlier, later in zip(frames, frames[1:])):
            raise ExprError(setting, f"keyframes must be in strictly increasing frame order, got {frames}")
        self.interpolation = interpolation
        self.bounds = bounds
        self._keyframed = keyframed
        self._frames = tuple(frames)
        self._values = tuple(value for _, value in self.keyframes)
        self.variables = frozenset().union(*(value.variables for value in self._values))
        constants = {value.evaluate_at({}, None) for value in self._values if value.is_constant}
        self.is_constant = not self.variables and len(constants) == 1
        # Interpolation never leaves the range of the keyframes it joins, so
        # keyframes without variables are checked once, here, before any work.
        for frame, value in self.keyframes:
            if value.is_constant:
                self._check_bounds(value.evaluate_at({}, None), frame if keyframed else None)

    def __call__(self, frame: int, env: Mapping[str, float]) -> float:
        """The setting's value at `frame`.

        Args:
            frame: frame index (0-based).
            env: variable values for this frame, from :func:`frame_env`.

        Returns:
            A finite float within the schedule's bounds.

        Raises:
            ExprError: evaluation failed, or the value is outside the bounds;
                names the setting, frame and column, or the value.
        """
        return self._check_bounds(self._interpolate(frame, env), frame)

    def _check_bounds(self, value: float, frame: int | None) -> float:
        """``value``, if within the bounds; ``frame`` None: a plain number, the value of every frame."""
        if self.bounds is not None and not self.bounds[0] <= value <= self.bounds[1]:
            lo, hi = self.bounds
            when = "" if frame is not None else " on every frame"
            raise ExprError(self.setting, f"{value:g} is out of range{when}: expected a value from {lo:g} to {hi:g}",
                            frame=frame)
        return value

    def _interpolate(self, frame: int, env: Mapping[str, float]) -> float:
        frames = self._frames
        if frame <= frames[0]:
            return self._values[0].evaluate_at(env, frame)
        if frame >= frames[-1]:
            return self._values[-1].evaluate_at(env, frame)
        i = bisect_right(frames, frame) - 1
        y0 = self._values[i].evaluate_at(env, frame)
        y1 = self._values[i + 1].evaluate_at(env, frame)
        width = frames[i + 1] - frames[i]
        u = (frame - frames[i]) / width
        if self.interpolation == "linear":
            value = y0 + (y1 - y0) * u
        else:
            slope = (y1 - y0) / width
            m0 = m1 = 0.0  # at the first and last keyframe, where holds begin
            if i > 0:
                y_before = self._values[i - 1].evaluate_at(env, frame)
                h_before = frames[i] - frames[i - 1]
                m0 = _pchip_slope(h_before, width, (y0 - y_before) / h_before, slope)
            if i + 2 < len(frames):
                y_after = self._values[i + 2].evaluate_at(env, frame)
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
            raise ExprError(self.setting, "interpolating between keyframes overflows a float", frame=frame)
        return value

    def __str__(self) -> str:
        if not self._keyframed:
            return str(self._values[0])
        return ", ".join(f"{frame}:({value})" for frame, value in self.keyframes)

    def __repr__(self) -> str:
        extra = f", interpolation={self.interpolation!r}" if self.interpolation != "linear" else ""
        extra += f", bounds={self.bounds!r}" if self.bounds is not None else ""
        return f"parse_schedule({str(self)!r}, setting={self.setting!r}{extra})"


def parse_schedule(
    text: str | int | float,
    *,
    setting: str,
    variables: Collection[str] = DEFAULT_VARIABLES,
    interpolation: str = "linear",
    bounds: tuple[float, float] | None = None,
) -> Schedule:
    """Read a setting's value from a preset or the command line.

    Args:
        text: a number (``1.02``), a formula (``"1.01 + 0.03*bass"``) or
            keyframes (``"0:(1.02), 120:(1.05)"``).
        setting: the setting's name, for messages.
        variables: the variable names formulas may use.
        interpolation: "linear" or "cubic" between keyframes.
        bounds: (lowest, highest) value allowed, or None for any finite value.

    Raises:
        ExprError: the text is malformed, uses an unknown name, has a
            variable-free part that fails or lies outside `bounds`; the
            message names the setting and the column or the value.
    """
    if isinstance(text, bool) or not isinstance(text, (str, Real)):
        raise ExprError(
            setting,
            f'expected a number or a schedule like "0:(1.02), 120:(1.05)", '
            f"got {type(text).__name__} {text!r:.40}",
        )
    if isinstance(text, str):
        syntax = Syntax(
            noun="schedule",
            max_chars=MAX_SOURCE_CHARS,
            empty_hint="give a number like 1.02 or keyframes like 0:(1.02), 120:(1.05)",
            variables=tuple(variables),
            other_variables=DEFAULT_VARIABLES,
        )
        keys, keyframed = parse_keyframes(text, setting=setting, syntax=syntax)
    else:
        try:
            value = float(text)
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            raise ExprError(setting, f"expected a finite number, got {text!r:.40}")
        keys, keyframed = [(0, Number(value, 1))], False
    return Schedule(
        setting,
        [(frame, Expression(node, setting=setting)) for frame, node in keys],
        interpolation=interpolation,
        keyframed=keyframed,
        bounds=bounds,
    )


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
        known, counted from the song's first beat (``features.first_beat_s``,
        0 s without features): whole at every beat, negative before the
        first; and the five audio features when `features` is given (0 past
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
        first_beat_s = features.first_beat_s if features is not None else 0.0
        env["b"] = (env["s"] - first_beat_s) * bpm / 60.0
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
        ExprError: e.g. ``zoom: uses 'bass' but no --audio was given``.
    """
    for schedule in schedules:
        audio = [name for name in FEATURE_NAMES if name in schedule.variables]
        if audio and not have_audio:
            names = ", ".join(f"'{name}'" for name in audio)
            raise ExprError(schedule.setting, f"uses {names} but no --audio was given")
        if "b" in schedule.variables and not have_bpm:
            if have_audio:
                remedy = "no steady beat was found in the audio, so give --bpm"
            else:
                remedy = "give --bpm, or --audio to estimate it"
            raise ExprError(schedule.setting, f"uses 'b' (beats) but the tempo is unknown: {remedy}")
