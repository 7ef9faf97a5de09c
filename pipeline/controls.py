"""Live control: what the performer's hands and the room change while `dreamreel live` plays.

Every control (OSC, MIDI, the window's keys, the sound in the room) produces
one of two things, and the live session reads both:

* a :class:`Change`: set a setting, switch the preset or the objective,
  freeze, toggle full screen or the on-screen display, tap the tempo. The
  session checks it, applies it at its next frame and logs one line;
* a value in :class:`LiveVariables`: named numbers (``cc1``, an OSC value by
  name, the live audio features, the beat ``b``) that settings written as
  expressions read, as schedules read ``t`` and ``bass`` in ``dreamreel zoom``.

The beat comes from a :class:`Tempo`: tap tempo, MIDI clock, or the audio
beat tracker of :mod:`audio_in`, in that order of precedence.

:func:`open_controls` starts what the flags ask for (an OSC server, a MIDI
input, a sound card) around a block, with the mappings of a TOML file
(:func:`load_mapping`); :class:`Router` turns each incoming message into
changes and variables, the same way whether it came from a port or a test.
"""

from __future__ import annotations

import difflib
import errno
import math
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .audio import FEATURE_NAMES
from .expr import ExprError
from .schedule import parse_schedule

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# The numeric settings a control may change while playing, each with the
# range its dataclass accepts (dream.check_settings, VideoSettings,
# ZoomSettings); ``mix`` is the live output's share of the dream (0 = the
# source alone, 1 = the whole dream).
SETTING_BOUNDS: dict[str, tuple[float, float]] = {
    "step": (0.0, 1.0),
    "iterations": (0, 1000),
    "octaves": (1, 12),
    "jitter": (0, 1024),
    "smooth": (0.0, 20.0),
    "blend": (0.0, 1.0),
    "temporal": (0.0, 1.0),
    "zoom": (0.5, 2.0),
    "angle": (-180.0, 180.0),
    "translate_x": (-1000.0, 1000.0),
    "translate_y": (-1000.0, 1000.0),
    "mix": (0.0, 1.0),
}
# Those of them that are whole numbers: a fader's position is rounded.
INTEGER_SETTINGS = ("iterations", "octaves", "jitter")
# Changes that are not numbers: a preset or objective by name, and actions.
ACTIONS = ("preset", "objective", "freeze", "fullscreen", "osd", "tap")
TOGGLES = ("freeze", "fullscreen", "osd")

# The live variables every session has: the frame, the seconds since the
# start and the beat (from the session and the Tempo), the audio features
# (with --audio-in), and each MIDI control's position from 0 to 1 (with
# --midi): cc0-cc127 for control changes, note0-note127 for a note's velocity
# while it is held (0 once released).
BASE_VARIABLES = ("t", "s", "b")
MIDI_VARIABLES = tuple(f"cc{n}" for n in range(128)) + tuple(f"note{n}" for n in range(128))

# Keys of the live window.
KEYS = {"space": "freeze", "f": "fullscreen", "o": "osd", "t": "tap"}
PRESET_KEYS = "1234567890"  # the first ten presets of the list

# Tap tempo: taps further apart than this start a new count (20 BPM and
# slower is not a tempo anyone taps); the tempo is the mean interval of the
# last TAP_COUNT taps (two bars of 4/4).
TAP_RESET_S = 2.0
TAP_COUNT = 8
# MIDI clock: 24 pulses per quarter note (the MIDI 1.0 spec); the tempo is the
# mean interval over the last beat's pulses. The clock has stopped when no
# pulse came for half a second (a pulse every 83 ms at 30 BPM).
CLOCK_PPQN = 24
CLOCK_TIMEOUT_S = 0.5
# --learn prints a control again once it has rested this long, not for every
# step of a fader's move.
LEARN_REST_S = 1.0
# A value ignored is logged at most once a second per source (an address, a
# MIDI control). Sources and OSC-made variables are capped at MAX_SOURCES: a
# sender making up new names forever must not grow the memory of an hour's show.
IGNORED_EVERY_S = 1.0
MAX_SOURCES = 256
# Lookahead beyond this is a typo: a live output more than a second late is broken.
MAX_LOOKAHEAD_S = 1.0

OSC_PREFIX = "/dreamreel/"
OSC_MISSING = "--osc-port needs python-osc: pip install 'dreamreel[live]'"
MIDI_MISSING = "--midi needs mido and python-rtmidi: pip install 'dreamreel[live]'"
MAX_MAPPING_BYTES = 256 * 1024  # a mapping file is a few kilobytes; refuse anything huge


@dataclass(frozen=True)
class Change:
    """One control action, for the live session to apply at its next frame.

    Attributes:
        setting: a key of :data:`SETTING_BOUNDS` or one of :data:`ACTIONS`.
        value: a number, or an expression text over :class:`LiveVariables`
            (``"1.01 + 0.04*bass"``), for a numeric setting; the name for
            ``preset`` and ``objective``; True/False for ``freeze``,
            ``fullscreen`` and ``osd`` (None toggles); None for ``tap``.
        source: who sent it, for the log line (``"osc /dreamreel/step"``,
            ``"midi cc 7"``, ``"key 3"``).
        time_s: when it happened (time.monotonic() seconds), for ``tap``:
            the session passes it to :meth:`Tempo.tap` so the beat falls on
            the tap, not on the next frame.
    """

    setting: str
    value: float | str | bool | None = None
    source: str = ""
    time_s: float | None = None

    def __post_init__(self):
        if self.setting not in SETTING_BOUNDS and self.setting not in ACTIONS:
            known = ", ".join([*SETTING_BOUNDS, *ACTIONS])
            raise ValueError(f"unknown live setting {self.setting!r}; known: {known}")

    def __str__(self) -> str:
        """The log line: ``step = 0.02 (osc /dreamreel/step)``, ``freeze (key space)``."""
        if self.value is None:
            text = self.setting
        elif isinstance(self.value, bool):
            text = f"{self.setting} = {'on' if self.value else 'off'}"
        else:
            text = f"{self.setting} = {self.value:g}" if isinstance(self.value, float) else f"{self.setting} = {self.value}"
        return f"{text} ({self.source})" if self.source else text


class LiveVariables:
    """Named numbers that live expressions read; written by control threads, read by the output loop.

    Names follow the expression language's rules (a letter first, then
    letters, digits, ``_`` and ``.``). Thread-safe: a writer never blocks the
    reader for longer than a dict copy.
    """

    def __init__(self, **values: float):
        self._lock = threading.Lock()
        self._values: dict[str, float] = {}
        self.set(**values)

    def set(self, **values: float) -> None:
        """Set or replace values; a value that is not a finite number raises ValueError naming it."""
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"live variable {name}: expected a finite number, got {value!r}")
        with self._lock:
            self._values.update({name: float(value) for name, value in values.items()})

    def snapshot(self) -> dict[str, float]:
        """A copy of every value now."""
        with self._lock:
            return dict(self._values)


def live_env(variables: LiveVariables, tempo: Tempo | None, now_s: float, *, frame: int, seconds: float) -> dict[str, float]:
    """The variables a live expression sees at one output frame.

    Args:
        variables: the controls' and the audio's values.
        tempo: where ``b`` comes from; None or no beat yet: ``b`` is 0.
        now_s: the frame's time.monotonic() seconds.
        frame, seconds: ``t`` (output frames since the start) and ``s``.

    Returns:
        A dict for :class:`schedule.Schedule` calls, as :func:`schedule.frame_env` gives for files.
    """
    beats = tempo.beats(now_s) if tempo is not None else None
    return {**variables.snapshot(), "t": float(frame), "s": float(seconds), "b": beats if beats is not None else 0.0}


# --------------------------------------------------------------------------
# Checking values


def check_change(change: Change, variables: Sequence[str]) -> Change:
    """A change with its value checked and put in the session's terms.

    Numbers are checked against :data:`SETTING_BOUNDS` (and rounded for
    :data:`INTEGER_SETTINGS`), expressions parsed as schedules over
    `variables`, preset names looked up, and toggles read as True/False/None.

    Args:
        change: as a control made it.
        variables: the live variables expressions may use now.

    Returns:
        The change, its value normalised (a float, an int, a str, a bool or None).

    Raises:
        ValueError: what is wrong with the value, without the source (the
            caller names it).
    """
    setting, value = change.setting, change.value
    if setting in SETTING_BOUNDS:
        if isinstance(value, str):
            value = value.strip()
            try:
                value = float(value)
            except ValueError:
                parse_live_expression(setting, value, variables)
                return _replace(change, value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{setting}: expected a number or an expression over live variables, got {value!r}")
        lo, hi = SETTING_BOUNDS[setting]
        if not lo <= value <= hi:
            raise ValueError(f"{setting}: {value:g} is out of range: expected a value from {lo:g} to {hi:g}")
        return _replace(change, round(value) if setting in INTEGER_SETTINGS else float(value))
    if setting == "preset":
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"preset: expected a preset name, got {value!r}")
        from .presets import load_preset  # the dream stack: only once a preset is named

        load_preset(value.strip())
        return _replace(change, value.strip())
    if setting == "objective":
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"objective: expected an objective such as 'mid' or 'low + 0.5*high', got {value!r}")
        return _replace(change, value.strip())
    if setting in TOGGLES:
        if value is not None and not isinstance(value, bool):
            if isinstance(value, (int, float)) and value in (0, 1):
                value = bool(value)
            else:
                raise ValueError(f"{setting}: expected on (1, true), off (0, false) or nothing to toggle, got {value!r}")
        return _replace(change, value)
    if value is not None:  # tap
        raise ValueError(f"tap takes no value, got {value!r}")
    return change


def _replace(change: Change, value) -> Change:
    return Change(change.setting, value, change.source, change.time_s)


def parse_live_expression(setting: str, text: str, variables: Sequence[str]):
    """A setting written as an expression over live variables, as a :class:`schedule.Schedule`.

    The same language as ``dreamreel zoom``'s schedules, keyframes included;
    values outside the setting's bounds are errors when the session evaluates
    them (and when written as plain numbers, at once).

    Raises:
        ExprError: the text is malformed or uses a name that is not among
            `variables`; unknown names are listed compactly (the 256 MIDI
            variables as cc0-cc127 and note0-note127).
    """
    try:
        return parse_schedule(text, setting=setting, variables=variables, bounds=SETTING_BOUNDS[setting])
    except ExprError as exc:
        unknown = re.match(r"unknown name '([^']*)';", exc.problem)
        if unknown is None:
            raise
        named = [name for name in variables if name not in MIDI_VARIABLES]
        midi = ", cc0-cc127, note0-note127" if "cc0" in variables else ""
        problem = f"unknown name '{unknown[1]}'; the live variables here are {', '.join(named)}{midi}"
        raise ExprError(setting, problem, column=exc.column) from None


# --------------------------------------------------------------------------
# The beat


@dataclass
class _Grid:
    """Beats as a straight line in time, with a correction eased in over one beat.

    b(t) = beat + rate * (t - time_s) + correction * min(1, (t - time_s) / ease_s)
    """

    time_s: float
    beat: float
    rate: float  # beats per second
    correction: float = 0.0
    ease_s: float = 1.0

    def at(self, t: float) -> float:
        eased = min(1.0, max(0.0, (t - self.time_s) / self.ease_s))
        return self.beat + self.rate * (t - self.time_s) + self.correction * eased


class Tempo:
    """The beat ``b`` (beats as a float, whole on each beat) and the tempo, from three sources.

    * MIDI clock (:meth:`midi_clock`), while it runs: 24 pulses a beat,
      Start puts the next pulse on beat 0;
    * tap tempo (:meth:`tap`): from the second tap of a count, the tempo is
      the mean interval of the last taps and the last tap is a beat; a tap
      alone after a pause re-aligns the beat to it and keeps the tempo;
      it holds until tapped again;
    * the audio beat tracker (:meth:`track`, from :mod:`audio_in`): followed
      without jumps, a phase correction eased in over one beat, so ``b``
      never runs backwards.

    The first running source in that order gives the beat. ``b`` is read
    `lookahead_s` ahead of the time asked, so a pulse on ``b`` reaches the
    screen on the beat when the output is that late (``--lookahead``).

    Thread-safe: the MIDI, OSC and audio threads write, the output loop reads.
    """

    def __init__(self, *, lookahead_s: float = 0.0):
        if not (math.isfinite(lookahead_s) and 0 <= lookahead_s <= MAX_LOOKAHEAD_S):
            raise ValueError(f"--lookahead {lookahead_s}: expected seconds from 0 to {MAX_LOOKAHEAD_S:g}")
        self.lookahead_s = lookahead_s
        self._lock = threading.Lock()
        self._tapped: _Grid | None = None
        self._tracked: _Grid | None = None
        self._taps: list[float] = []
        self._clock_state = "none"  # "none" (never heard), "running", "stopped"
        self._clock_pulse = 0  # pulses since Start: the last pulse is beat pulse / 24
        self._clock_times: list[float] = []  # the last pulses' times

    def tap(self, now_s: float) -> None:
        """A tap on the beat at `now_s` (time.monotonic() seconds)."""
        with self._lock:
            if self._taps and now_s - self._taps[-1] > TAP_RESET_S:
                self._taps = []
            self._taps = [*self._taps, now_s][-TAP_COUNT:]
            current = self._grid(now_s)
            beat = float(round(current.at(now_s))) if current is not None else float(len(self._taps) - 1)
            if len(self._taps) >= 2:
                rate = (len(self._taps) - 1) / (self._taps[-1] - self._taps[0])
            elif current is not None:
                rate = current.rate
            else:
                return
            self._tapped = _Grid(now_s, beat, rate)

    def track(self, bpm: float, beat_s: float, now_s: float) -> None:
        """The audio tracker's estimate: beats at ``beat_s + k * 60 / bpm``, made at `now_s`."""
        rate = bpm / 60.0
        with self._lock:
            if self._tracked is None:
                self._tracked = _Grid(beat_s, 0.0, rate)
                return
            beat = self._tracked.at(now_s)
            error = ((now_s - beat_s) * rate - beat + 0.5) % 1.0 - 0.5  # in beats, from -0.5 to 0.5
            self._tracked = _Grid(now_s, beat, rate, correction=error, ease_s=1.0 / rate)

    def midi_clock(self, kind: str, now_s: float, position: int = 0) -> None:
        """A MIDI realtime message.

        Args:
            kind: "clock" (a pulse), "start", "stop", "continue" or
                "songpos" (mido's message types).
            now_s: when it arrived.
            position: for "songpos", the position in sixteenth notes.
        """
        with self._lock:
            if kind == "clock":
                if self._clock_times and now_s - self._clock_times[-1] > CLOCK_TIMEOUT_S:
                    self._clock_times = []  # the tempo of before the pause is stale
                self._clock_times = [*self._clock_times, now_s][-(CLOCK_PPQN + 1) :]
                if self._clock_state == "none":
                    self._clock_state = "running"
                    self._clock_pulse = 0
                elif self._clock_state == "running":
                    self._clock_pulse += 1
            elif kind == "start":
                self._clock_state, self._clock_pulse = "running", -1  # the next pulse is beat 0
            elif kind == "continue":
                self._clock_state = "running"
            elif kind == "stop":
                self._clock_state = "stopped"
            elif kind == "songpos":
                self._clock_pulse = 6 * position - 1  # a sixteenth is 6 pulses; the next pulse is there

    def beats(self, now_s: float) -> float | None:
        """``b`` at `now_s` + lookahead, or None while no source has given a beat."""
        t = now_s + self.lookahead_s
        with self._lock:
            grid = self._grid(t)
            return grid.at(t) if grid is not None else None

    def bpm(self, now_s: float) -> float | None:
        """The tempo in beats per minute, or None while unknown."""
        with self._lock:
            grid = self._grid(now_s + self.lookahead_s)
            return 60.0 * grid.rate if grid is not None and grid.rate > 0 else None

    def _grid(self, t: float) -> _Grid | None:
        """The beat of the first running source (lock held)."""
        times = self._clock_times
        if self._clock_state == "running" and times and t - times[-1] <= CLOCK_TIMEOUT_S + self.lookahead_s:
            rate = (len(times) - 1) / (times[-1] - times[0]) / CLOCK_PPQN if len(times) >= 2 else 0.0
            pulse_beat = max(self._clock_pulse, 0) / CLOCK_PPQN
            # Between pulses the beat runs on at the tempo, up to the next
            # pulse's beat: if that pulse is late, b waits rather than overshoots.
            beat = min(pulse_beat + rate * (t - times[-1]), pulse_beat + 1 / CLOCK_PPQN)
            return _Grid(t, beat, rate)
        return self._tapped or self._tracked


# --------------------------------------------------------------------------
# The mapping file


CURVES = ("linear", "exponential")
CONTROL_KEYS = ("setting", "variable", "range", "curve", "value", "channel")


@dataclass(frozen=True)
class Control:
    """What one mapped MIDI control or OSC address does.

    Attributes:
        setting: the live setting or action it changes (a key of
            :data:`SETTING_BOUNDS` or one of :data:`ACTIONS`), or None.
        variable: or the live variable it writes, or None.
        range: (value at 0, value at 1) for a position: a MIDI control's
            0-127, or an OSC value from 0 to 1. For MIDI it defaults to the
            setting's bounds (0 to 1 for a variable); an OSC value without a
            range is used as it is.
        curve: "linear", or "exponential" (equal steps of travel multiply
            the value by equal ratios: fine control near a small end, as for
            step or zoom).
        value: what a press sends (a button, a note, an OSC message), instead
            of a position: a number, an expression, a preset or objective
            name, or on/off for a toggle (none: the toggle flips).
        channel: the MIDI channel (1-16) it listens to; None: any.
    """

    setting: str | None = None
    variable: str | None = None
    range: tuple[float, float] | None = None
    curve: str = "linear"
    value: float | str | bool | None = None
    channel: int | None = None

    def position(self, x: float) -> float:
        """The value at position x (0 to 1) of the range."""
        lo, hi = self.range if self.range is not None else SETTING_BOUNDS.get(self.setting, (0.0, 1.0))
        if self.curve == "exponential":
            return lo * (hi / lo) ** x
        return lo + (hi - lo) * x

    @property
    def pressed_only(self) -> bool:
        """Whether it acts on a press only (a fixed value, or an action) rather than on a position."""
        return self.value is not None or self.setting in ACTIONS


@dataclass(frozen=True)
class ControlMap:
    """A loaded mapping file (:func:`load_mapping`).

    Attributes:
        source: the file, for messages.
        description: one line about it.
        presets: the presets keys 1-9 and 0 pick, in order; empty: the built-in ones.
        settings: setting -> a number or an expression, applied at the start.
        cc, note: (number, Control) pairs for MIDI control changes and notes.
        osc: OSC address -> Control.
    """

    source: str = ""
    description: str = ""
    presets: tuple[str, ...] = ()
    settings: dict[str, float | str] = field(default_factory=dict)
    cc: tuple[tuple[int, Control], ...] = ()
    note: tuple[tuple[int, Control], ...] = ()
    osc: dict[str, Control] = field(default_factory=dict)

    @property
    def variables(self) -> tuple[str, ...]:
        """The live variables its mappings write."""
        controls = [c for _, c in self.cc] + [c for _, c in self.note] + list(self.osc.values())
        return tuple(dict.fromkeys(c.variable for c in controls if c.variable))


def builtin_mappings() -> list[str]:
    """Names of the mapping files shipped with dreamreel (presets/controls/), sorted."""
    folder = resources.files("dreamreel.presets").joinpath("controls")
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_mapping(name_or_path: str | Path) -> ControlMap:
    """Read and check a mapping file, or a built-in one by name (the format is in docs/live-controls.md).

    Raises:
        ValueError: one line naming the file, the key and what is wrong: an
            unknown setting or key, a bad range, curve or value, an
            expression that does not parse.
    """
    path = Path(name_or_path)
    if not path.is_file():
        names = builtin_mappings()
        if str(name_or_path) not in names:
            raise ValueError(f"--controls {name_or_path}: no such file, nor a built-in mapping ({', '.join(names)})")
        text = resources.files("dreamreel.presets").joinpath("controls", f"{name_or_path}.toml").read_text(encoding="utf-8")
        return parse_mapping(tomllib.loads(text), source=f"mapping {name_or_path}")
    if path.stat().st_size > MAX_MAPPING_BYTES:
        raise ValueError(f"--controls {path}: {path.stat().st_size} bytes is too large for a mapping file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--controls {path}: cannot read it ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc})") from None
    return parse_mapping(data, source=str(path))


def parse_mapping(data: dict, *, source: str) -> ControlMap:
    """Check a mapping file's TOML tables (see :func:`load_mapping`)."""
    _known_keys(data, ("description", "presets", "settings", "midi", "osc"), source, "")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ValueError(f"{source}: description = {description!r}: expected a string")
    presets = data.get("presets", [])
    if not (isinstance(presets, list) and all(isinstance(p, str) and p for p in presets)):
        raise ValueError(f"{source}: presets = {presets!r}: expected a list of preset names")
    if len(presets) > len(PRESET_KEYS):
        raise ValueError(f"{source}: presets: {len(presets)} names, but only keys 1-9 and 0 pick presets: give at most 10")
    file_variables = []
    midi = _table(data, "midi", source)
    _known_keys(midi, ("cc", "note"), source, "[midi] ")
    tables = {"midi.cc": _table(midi, "cc", source, "midi."), "midi.note": _table(midi, "note", source, "midi.")}
    tables["osc"] = _table(data, "osc", source)
    parsed: dict[str, list] = {}
    for name, table in tables.items():
        parsed[name] = []
        for key, entry in table.items():
            where = f"{source}: [{name}] {_toml_key(key)}"
            control = _control(entry, where)
            if name != "osc" and control.setting in ("preset", "objective") and control.value is None:
                raise ValueError(f"{where}: a MIDI button sends a fixed {control.setting}: add value = \"NAME\"")
            parsed[name].append((_control_key(name, key, where), control))
            if control.variable:
                file_variables.append(control.variable)
    settings = _table(data, "settings", source)
    names = (*BASE_VARIABLES, *FEATURE_NAMES, *MIDI_VARIABLES, *file_variables)
    for setting, value in settings.items():
        where = f"{source}: [settings] {setting}"
        if setting not in SETTING_BOUNDS:
            raise ValueError(f"{where}: {_unknown_setting(setting, SETTING_BOUNDS)}")
        try:
            check_change(Change(setting, value), names)
        except ValueError as exc:
            raise ValueError(f"{where} = {value!r}: {_reason(exc, setting)}") from None
    return ControlMap(
        source=source, description=description, presets=tuple(presets), settings=dict(settings),
        cc=tuple(parsed["midi.cc"]), note=tuple(parsed["midi.note"]), osc=dict(parsed["osc"]),
    )  # fmt: skip


def _table(data: dict, key: str, source: str, prefix: str = "") -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ValueError(f"{source}: {prefix}{key} must be a [{prefix}{key}] table")
    return value


def _known_keys(table: dict, known: Sequence[str], source: str, where: str) -> None:
    for key in table:
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else f"; known: {', '.join(known)}"
            raise ValueError(f"{source}: {where}unknown key {key!r}{hint}")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else f'"{key}"'


def _control_key(table: str, key: str, where: str) -> int | str:
    """A MIDI number (0-127) or an OSC address outside /dreamreel/."""
    if table == "osc":
        if not key.startswith("/") or any(c in key for c in " #*,?[]{}"):
            raise ValueError(f"{where}: expected an OSC address such as \"/td/zoom\"")
        if key.startswith(OSC_PREFIX):
            raise ValueError(f"{where}: {OSC_PREFIX}... addresses are built in (they need no mapping); map your own addresses")
        return key
    if not (key.isdigit() and 0 <= int(key) <= 127):
        kind = "control change" if table == "midi.cc" else "note"
        raise ValueError(f"{where}: expected a MIDI {kind} number from 0 to 127")
    return int(key)


def _control(entry, where: str) -> Control:
    """Check one mapping entry: ``{ setting = "step", range = [0.005, 0.05] }`` and the like."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a table such as {{ setting = \"step\", range = [0.005, 0.05] }}")
    for key in entry:
        if key not in CONTROL_KEYS:
            near = difflib.get_close_matches(key, CONTROL_KEYS, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else f"; known: {', '.join(CONTROL_KEYS)}"
            raise ValueError(f"{where}: unknown key {key!r}{hint}")
    setting, variable = entry.get("setting"), entry.get("variable")
    if (setting is None) == (variable is None):
        raise ValueError(f"{where}: give either setting = \"NAME\" or variable = \"NAME\"")
    if setting is not None and (not isinstance(setting, str) or (setting not in SETTING_BOUNDS and setting not in ACTIONS)):
        raise ValueError(f"{where}: {_unknown_setting(setting, [*SETTING_BOUNDS, *ACTIONS])}")
    if variable is not None and not (isinstance(variable, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", variable)):
        raise ValueError(f"{where}: variable = {variable!r}: expected a name of letters, digits and _ (not starting with a digit)")
    if variable in (*BASE_VARIABLES, *FEATURE_NAMES, *MIDI_VARIABLES):
        raise ValueError(f"{where}: variable = {variable!r} is a built-in live variable; choose another name")
    numeric = variable is not None or setting in SETTING_BOUNDS
    control = Control(setting=setting, variable=variable, curve=entry.get("curve", "linear"), channel=entry.get("channel"))
    if control.channel is not None and not (isinstance(control.channel, int) and 1 <= control.channel <= 16):
        raise ValueError(f"{where}: channel = {control.channel!r}: expected a MIDI channel from 1 to 16")
    if control.curve not in CURVES:
        raise ValueError(f"{where}: curve = {control.curve!r}: expected one of {', '.join(CURVES)}")
    if "range" in entry:
        lo_hi = entry["range"]
        ok = isinstance(lo_hi, list) and len(lo_hi) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in lo_hi
        )
        if not ok or lo_hi[0] == lo_hi[1]:
            raise ValueError(f"{where}: range = {lo_hi!r}: expected [value at 0, value at full], two different numbers")
        if not numeric:
            raise ValueError(f"{where}: range: {setting} is not a number; a press sends it (value = ...)")
        if setting is not None:
            lo, hi = SETTING_BOUNDS[setting]
            if not all(lo <= v <= hi for v in lo_hi):
                raise ValueError(f"{where}: range = {lo_hi!r} is out of bounds: {setting} goes from {lo:g} to {hi:g}")
        control = _with(control, range=(float(lo_hi[0]), float(lo_hi[1])))
    if control.curve == "exponential":
        lo, hi = control.range if control.range is not None else SETTING_BOUNDS.get(setting, (0.0, 1.0))
        if lo * hi <= 0:
            raise ValueError(f"{where}: curve = \"exponential\" needs a range that does not reach or cross 0, got [{lo:g}, {hi:g}]")
    if "value" in entry:
        if control.range is not None:
            raise ValueError(f"{where}: give a range (for a fader or knob) or a value (for a button), not both")
        if variable is not None:
            raise ValueError(f"{where}: value: a variable takes the control's position; give a range instead")
        try:
            checked = check_change(Change(setting, entry["value"]), (*BASE_VARIABLES, *FEATURE_NAMES, *MIDI_VARIABLES))
        except ValueError as exc:
            raise ValueError(f"{where}: value = {entry['value']!r}: {_reason(exc, setting)}") from None
        control = _with(control, value=checked.value)
    return control


def _with(control: Control, **changes) -> Control:
    return Control(**{**control.__dict__, **changes})


def _unknown_setting(name, known: Sequence[str]) -> str:
    near = difflib.get_close_matches(str(name), known, n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else f"; known: {', '.join(known)}"
    return f"unknown setting {name!r}{hint}"


def _reason(error: ValueError, setting: str) -> str:
    """A check's message without the ``setting: `` it may start with (the file's key names it)."""
    message = str(error).splitlines()[0]
    return message.removeprefix(f"{setting}: ")


# --------------------------------------------------------------------------
# The keyboard


def key_change(key: str, presets: Sequence[str], now_s: float | None = None) -> Change | None:
    """What a key of the live window does.

    ``1``-``9`` and ``0``: the first ten `presets`; space: freeze; ``f``: full
    screen; ``o``: on-screen display; ``t``: tap tempo. Quitting (Escape,
    ``q``) is the window's own.

    Args:
        key: the key's name: a character, or "space".
        presets: preset names in key order.
        now_s: when it was pressed, for a tap (default: now).

    Returns:
        The change, or None for a key that does nothing.
    """
    name = "space" if key == " " else key.lower()
    if name in PRESET_KEYS and len(name) == 1:
        index = PRESET_KEYS.index(name)
        return Change("preset", presets[index], f"key {name}") if index < len(presets) else None
    setting = KEYS.get(name)
    if setting is None:
        return None
    if setting != "tap":
        return Change(setting, None, f"key {name}")
    return Change("tap", None, f"key {name}", time.monotonic() if now_s is None else now_s)


# --------------------------------------------------------------------------
# Incoming messages


class Router:
    """Turns OSC and MIDI messages into changes and live variables.

    The OSC server and the MIDI port call :meth:`osc` and :meth:`midi` from
    their own threads; tests call them directly. A bad value is logged as one
    line and ignored; nothing raises out of them.
    """

    def __init__(
        self,
        mapping: ControlMap,
        apply: Callable[[Change], None],
        variables: LiveVariables,
        tempo: Tempo | None = None,
        status: Callable[[], dict] | None = None,
        log: Callable[[str], None] = print,
        *,
        learn: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.mapping = mapping
        self.apply = apply
        self.variables = variables
        self.tempo = tempo
        self.status = status
        self.log = log
        self.learn = learn
        self.clock = clock
        # Replies go out of the OSC server's socket, so they come from the port
        # the sender sent to; set by serve_osc.
        self.send: Callable[[bytes, tuple[str, int]], None] | None = None
        self._learned: dict[tuple, float] = {}  # control -> when --learn last saw it
        self._ignored: dict[str, float] = {}  # source -> when a value of it was last logged as ignored
        self._osc_variables: set[str] = set()  # the variables /dreamreel/var/NAME made
        self._cc = {}
        for number, control in mapping.cc:
            self._cc.setdefault(number, []).append(control)
        self._note = {}
        for number, control in mapping.note:
            self._note.setdefault(number, []).append(control)

    # --- OSC ---

    def osc(self, client_address: tuple[str, int], address: str, *args) -> None:
        """One OSC message (python-osc's default handler, with the reply address)."""
        try:
            self._osc(client_address, address, args)
        except Exception as exc:  # a handler error must never end the show
            self._ignore(f"osc {address}", f"{type(exc).__name__}: {exc}")

    def _osc(self, client_address: tuple[str, int], address: str, args: tuple) -> None:
        source = f"osc {address}"
        if self.learn:
            self._learn(("osc", address), f"{source} {' '.join(map(repr, args))}", self._osc_suggestion(address, args))
        control = self.mapping.osc.get(address)
        if control is not None:
            self._control(control, args[0] if args else None, source, position=control.range is not None)
            return
        if not address.startswith(OSC_PREFIX):
            return  # another program's address: only --learn shows it
        name = address[len(OSC_PREFIX) :]
        if name == "status":
            self._reply_status(client_address, args)
        elif name.startswith("var/"):
            self._set_variable(name[len("var/") :], args, source)
        elif name == "tap":
            if not (args and _is_release(args[0])):  # a button sends 1 when pressed, 0 when let go
                self._send(Change("tap", None, source, self.clock()))
        elif name in SETTING_BOUNDS or name in ACTIONS:
            self._send(Change(name, args[0] if args else None, source))
        else:
            known = ", ".join(f"{OSC_PREFIX}{n}" for n in (*SETTING_BOUNDS, *ACTIONS, "status", "var/NAME"))
            self._ignore(source, f"unknown address; known: {known}")

    def _set_variable(self, name: str, args: tuple, source: str) -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or name in (*BASE_VARIABLES, *FEATURE_NAMES, *MIDI_VARIABLES):
            self._ignore(source, f"{name!r} cannot be a variable's name (letters, digits and _, not a built-in name)")
            return
        value = args[0] if len(args) == 1 else None
        if name not in self._osc_variables and len(self._osc_variables) >= MAX_SOURCES:
            self._ignore(f"osc {OSC_PREFIX}var", f"already {MAX_SOURCES} variables set over OSC; no more ({name})")
            return
        try:
            self.variables.set(**{name: value})
            self._osc_variables.add(name)
        except ValueError:
            self._ignore(source, f"expected one number, got {' '.join(map(repr, args)) or 'nothing'}")

    def _reply_status(self, client_address: tuple[str, int], args: tuple) -> None:
        """Send each status field as /dreamreel/status/FIELD VALUE, to the sender or to its port ARG."""
        if args:
            port = args[0]
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                self._ignore(f"osc {OSC_PREFIX}status", f"expected a port number to reply to, got {port!r}")
                return
            client_address = (client_address[0], port)
        if self.send is None:
            return
        from pythonosc.osc_message_builder import OscMessageBuilder

        fields = dict(self.status() if self.status is not None else {})
        if self.tempo is not None and "bpm" not in fields:
            fields["bpm"] = self.tempo.bpm(self.clock())
        for path, value in _flatten(fields):
            builder = OscMessageBuilder(address=f"{OSC_PREFIX}status/{path}")
            builder.add_arg(int(value) if isinstance(value, bool) else value)
            self.send(builder.build().dgram, client_address)

    def _osc_suggestion(self, address: str, args: tuple) -> str:
        if address.startswith(OSC_PREFIX):
            return "built in: needs no mapping"
        arg = args[0] if args else None
        if isinstance(arg, str):
            entry = '{ setting = "preset" }'
        elif arg is None:
            entry = '{ setting = "tap" }'
        else:
            entry = '{ setting = "mix", range = [0.0, 1.0] }'
        return f"[osc] {_toml_key(address)} = {entry}"

    # --- MIDI ---

    def midi(self, message) -> None:
        """One MIDI message (a ``mido.Message``): the callback of the MIDI port."""
        try:
            self._midi(message)
        except Exception as exc:
            self._ignore(f"midi {message.type}", f"{type(exc).__name__}: {exc}")

    def _midi(self, message) -> None:
        kind = message.type
        if kind in ("clock", "start", "stop", "continue", "songpos"):
            if self.learn:
                self._learn(("midi", kind), f"midi {kind}", "MIDI clock: drives the beat b while it runs")
            if self.tempo is not None:
                self.tempo.midi_clock(kind, self.clock(), getattr(message, "pos", 0))
            return
        if kind == "control_change":
            number, x, table, controls = message.control, message.value / 127, "cc", self._cc.get(message.control, ())
            pressed = message.value >= 64
        elif kind in ("note_on", "note_off"):
            velocity = message.velocity if kind == "note_on" else 0
            number, x, table, controls = message.note, velocity / 127, "note", self._note.get(message.note, ())
            pressed = velocity > 0
        else:
            if self.learn:
                self._learn(("midi", kind), f"midi {message}", "not mapped: dreamreel reads control changes, notes and clock")
            return
        channel = message.channel + 1
        self.variables.set(**{f"{table}{number}": x})
        source = f"midi {table} {number}"
        if self.learn:
            default = '{ setting = "mix", range = [0.0, 1.0] }' if table == "cc" else '{ setting = "freeze" }'
            detail = f"value {message.value}" if table == "cc" else f"velocity {round(127 * x)}"
            self._learn(("midi", table, number, channel), f"{source} {detail} channel {channel}", f"[midi.{table}] {number} = {default}")
        for control in controls:
            if control.channel is not None and control.channel != channel:
                continue
            if control.pressed_only:
                if pressed:
                    self._control(control, None, source, position=False)
            else:
                self._control(control, x, source, position=True)

    # --- shared ---

    def _control(self, control: Control, value, source: str, *, position: bool) -> None:
        """Send what a mapped control does with `value` (a position from 0 to 1 when `position`)."""
        if control.pressed_only and _is_release(value):
            return
        if position:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                self._ignore(source, f"expected a position from 0 to 1, got {value!r}")
                return
            value = control.position(value)
        if control.variable is not None:
            try:
                self.variables.set(**{control.variable: value})
            except ValueError:
                self._ignore(source, f"expected a number for {control.variable}, got {value!r}")
            return
        if control.value is not None:
            value = control.value
        elif control.setting in ("tap", *TOGGLES):
            value = None  # a press taps, or flips the toggle
        now = self.clock() if control.setting == "tap" else None
        self._send(Change(control.setting, value, source, now))

    def _send(self, change: Change) -> None:
        names = (*self.variables.snapshot(), *BASE_VARIABLES)
        try:
            change = check_change(change, names)
        except ValueError as exc:
            self._ignore(change.source, str(exc))
            return
        try:
            self.apply(change)
        except ValueError as exc:
            self._ignore(change.source, str(exc))

    def _ignore(self, source: str, problem: str) -> None:
        """Log one line for a value ignored; at most one a second for each source, so a
        wrongly mapped fader cannot flood the log for the rest of the show."""
        now = self.clock()
        if now - self._ignored.get(source, -math.inf) >= IGNORED_EVERY_S:
            if len(self._ignored) > MAX_SOURCES:  # addresses a stranger made up, never repeated
                self._ignored.clear()
            self._ignored[source] = now
            self.log(f"{source}: {problem}; ignored")

    def _learn(self, key, what: str, suggestion: str) -> None:
        """Print a message for --learn: once for a fader's whole move, again after it rested LEARN_REST_S."""
        now = self.clock()
        last = self._learned.get(key)
        self._learned[key] = now
        if last is None or now - last > LEARN_REST_S:
            print(f"learn: {what}  ->  {suggestion}", flush=True)


def _is_release(value) -> bool:
    """Whether an OSC or MIDI value is a button being let go (0 or false; not a name)."""
    return value is not None and not isinstance(value, str) and value in (0, False)


def _flatten(fields: dict, prefix: str = "") -> Iterator[tuple[str, float | int | str | bool]]:
    """(path, value) for each value of a nested status dict, paths made of OSC-safe names; None left out."""
    for key, value in fields.items():
        path = prefix + re.sub(r"[^A-Za-z0-9_.-]", "_", str(key))
        if isinstance(value, dict):
            yield from _flatten(value, path + "/")
        elif isinstance(value, (bool, int, float, str)):
            yield path, value
        elif value is not None:
            yield path, str(value)


# --------------------------------------------------------------------------
# Opening the inputs


@dataclass(frozen=True)
class ControlSettings:
    """The controls of a live session (the "controls" flags of ``dreamreel live``).

    Attributes:
        controls: a mapping file (TOML), or None.
        osc_port: UDP port to listen for OSC on, or None for no OSC (0: any free port).
        osc_host: address to listen on; 127.0.0.1 lets only this computer in,
            0.0.0.0 the network.
        midi: a MIDI input port (part of its name), "" for the first one, None for no MIDI.
        learn: print each incoming message and the mapping line for it.
        audio_in: a sound card input (number or part of its name), "" for the default, None for none.
        lookahead: read the beat ``b`` this many seconds ahead, to cover the
            output's latency.
        quiet: no log line for each change.
    """

    controls: str | None = None
    osc_port: int | None = None
    osc_host: str = "127.0.0.1"
    midi: str | None = None
    learn: bool = False
    audio_in: str | None = None
    lookahead: float = 0.0
    quiet: bool = False

    def __post_init__(self):
        if self.osc_port is not None and not 0 <= self.osc_port <= 65535:
            raise ValueError(f"--osc-port {self.osc_port}: expected a port number from 1 to 65535 (0: any free one)")
        if not (math.isfinite(self.lookahead) and 0 <= self.lookahead <= MAX_LOOKAHEAD_S):
            raise ValueError(f"--lookahead {self.lookahead}: expected seconds from 0 to {MAX_LOOKAHEAD_S:g}")
        if self.learn and self.osc_port is None and self.midi is None:
            raise ValueError("--learn shows incoming MIDI and OSC messages: add --midi or --osc-port")


@dataclass
class Controls:
    """What :func:`open_controls` started.

    Attributes:
        mapping: the mapping file's contents (empty without one).
        osc_address: (host, port) the OSC server listens on, or None.
        midi_port: the MIDI input's name, or None.
        audio: the running :class:`audio_in.AudioIn`, or None; its
            ``latency_s`` is the audio features' latency.
        presets: the presets keys 1-9 and 0 pick.
    """

    mapping: ControlMap
    osc_address: tuple[str, int] | None = None
    midi_port: str | None = None
    audio: object | None = None
    presets: tuple[str, ...] = ()

    def key(self, key: str) -> Change | None:
        """What a key of the window does (:func:`key_change` over this session's presets)."""
        return key_change(key, self.presets)


def available_variables(settings: ControlSettings, mapping: ControlMap) -> tuple[str, ...]:
    """The live variables expressions may use with these inputs."""
    names = [*BASE_VARIABLES, *mapping.variables]
    if settings.audio_in is not None:
        names += FEATURE_NAMES
    if settings.midi is not None:
        names += MIDI_VARIABLES
    return tuple(names)


def check_inputs(settings: ControlSettings, mapping: ControlMap) -> None:
    """Make sure what the mapping file uses is switched on: MIDI for [midi], OSC for [osc], audio for its features.

    Raises:
        ValueError: e.g. ``FILE: [settings] zoom uses 'bass' but no --audio-in was given``.
    """
    source = mapping.source
    if (mapping.cc or mapping.note) and settings.midi is None:
        raise ValueError(f"{source}: [midi] maps MIDI controls but MIDI is off: add --midi (or --midi PORT)")
    if mapping.osc and settings.osc_port is None:
        raise ValueError(f"{source}: [osc] maps OSC addresses but OSC is off: add --osc-port PORT")
    available = available_variables(settings, mapping)
    for setting, value in mapping.settings.items():
        if not isinstance(value, str):
            continue
        for name in sorted(parse_live_expression(setting, value, (*available, *FEATURE_NAMES, *MIDI_VARIABLES)).variables):
            if name not in available:
                flag = "--audio-in" if name in FEATURE_NAMES else "--midi"
                raise ValueError(f"{source}: [settings] {setting} uses '{name}' but no {flag} was given")


@contextmanager
def open_controls(
    settings: ControlSettings,
    apply: Callable[[Change], None],
    variables: LiveVariables,
    tempo: Tempo | None = None,
    status: Callable[[], dict] | None = None,
    log: Callable[[str], None] = print,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Controls]:
    """Start the OSC server, the MIDI input and the sound card the settings ask for; stop them after.

    Every input is open before the block starts, so a missing library, a
    port in use or a bad mapping file fails at once, with nothing left open.
    Then the mapping file's [settings] are applied, in order.

    Example::

        tempo = Tempo(lookahead_s=settings.lookahead)
        with open_controls(settings, session.apply, variables, tempo, session.status, log) as controls:
            session.run(keys=controls.key)

    Args:
        settings: the flags.
        apply: the session's: takes a checked :class:`Change` (thread-safe).
        variables: the session's live variables; MIDI positions, OSC values
            and audio features are written there.
        tempo: the session's beat, fed by tap, MIDI clock and the audio tracker.
        status: the session's state for ``/dreamreel/status`` replies.
        log: one line at a time (values ignored, what was opened).
        clock: time.monotonic, or a test's.

    Raises:
        ValueError: one line: a bad mapping file, a missing library, a port
            in use or not found, no sound card.
    """
    mapping = load_mapping(settings.controls) if settings.controls else ControlMap()
    check_inputs(settings, mapping)
    if settings.midi is not None:
        variables.set(**dict.fromkeys(MIDI_VARIABLES, 0.0))
    variables.set(**dict.fromkeys(mapping.variables, 0.0))
    router = Router(mapping, apply, variables, tempo, status, log, learn=settings.learn, clock=clock)
    presets = mapping.presets
    if not presets:
        from .presets import builtin_names

        presets = tuple(builtin_names()[: len(PRESET_KEYS)])
    controls = Controls(mapping=mapping, presets=presets)
    with ExitStack() as stack:
        if settings.osc_port is not None:
            controls.osc_address = stack.enter_context(serve_osc(router, settings.osc_host, settings.osc_port))
            log(f"osc: listening on {controls.osc_address[0]}:{controls.osc_address[1]}")
        if settings.midi is not None:
            controls.midi_port = stack.enter_context(open_midi(router, settings.midi))
            log(f"midi: listening to {controls.midi_port}")
        if settings.audio_in is not None:
            from .audio_in import open_audio_in

            controls.audio = stack.enter_context(open_audio_in(settings.audio_in, variables, tempo, log=log))
        for setting, value in mapping.settings.items():
            apply(check_change(Change(setting, value, f"{mapping.source} [settings]"), available_variables(settings, mapping)))
        yield controls


@contextmanager
def serve_osc(router: Router, host: str, port: int) -> Iterator[tuple[str, int]]:
    """Listen for OSC on UDP host:port in a thread while the block runs.

    Yields:
        (host, port) it listens on (port 0 picks a free one).

    Raises:
        ValueError: python-osc missing, the port in use, the host not one of this computer's.
    """
    try:
        from pythonosc.dispatcher import Dispatcher
        from pythonosc.osc_server import BlockingOSCUDPServer
    except ImportError:
        raise ValueError(OSC_MISSING) from None
    # strict_timing=False: a bundle time-tagged for later is applied now, not
    # slept on in the server's only thread.
    dispatcher = Dispatcher(strict_timing=False)
    dispatcher.set_default_handler(router.osc, needs_reply_address=True)
    try:
        server = BlockingOSCUDPServer((host, port), dispatcher)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ValueError(f"--osc-port {port}: UDP port {port} on {host} is already in use; choose another with --osc-port") from None
        raise ValueError(f"--osc-host {host} --osc-port {port}: cannot listen there ({exc.strerror or exc})") from None
    router.send = lambda data, address: server.socket.sendto(data, address)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="dreamreel-osc", daemon=True)
    thread.start()
    try:
        yield server.server_address[:2]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        router.send = None


@contextmanager
def open_midi(router: Router, port: str) -> Iterator[str]:
    """Listen to a MIDI input port while the block runs.

    Args:
        router: gets every message, from the MIDI library's thread.
        port: part of the port's name (case ignored), or "" for the first port.

    Yields:
        The full name of the port opened.

    Raises:
        ValueError: mido or python-rtmidi missing, no MIDI system, no such
            port (the ports there are listed), or the port cannot be opened.
    """
    try:
        import mido
        import rtmidi
    except ImportError:
        raise ValueError(MIDI_MISSING) from None
    try:
        names = mido.get_input_names()
    except rtmidi.RtMidiError as exc:
        raise ValueError(f"--midi: no MIDI system to open ({str(exc).splitlines()[0]})") from None
    matches = [name for name in names if port.lower() in name.lower()]
    if not matches:
        have = ", ".join(repr(name) for name in names) or "none (is the controller plugged in?)"
        raise ValueError(f"--midi {port}: no MIDI input port {'matches it' if port else 'here'}; the ports are: {have}")
    try:
        opened = mido.open_input(matches[0], callback=router.midi)
    except (OSError, rtmidi.RtMidiError) as exc:
        raise ValueError(f"--midi {matches[0]}: cannot open it ({str(exc).splitlines()[0]}); is another program holding it?") from None
    try:
        yield matches[0]
    finally:
        opened.close()
