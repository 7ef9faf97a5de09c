"""Live control: what the performer's hands and the room change while `dreamreel live` plays.

Every control (OSC, MIDI, the window's keys, the sound in the room) produces
one of two things, and the live session reads both:

* a :class:`Change`: set a setting, switch the preset or the objective,
  freeze, toggle full screen or the on-screen display, tap the tempo. The
  session checks it, applies it at its next frame and logs one line;
* a value in :class:`LiveVariables`: named numbers (``cc1``, an OSC value by
  name, the live audio features, the beat ``b``) that settings written as
  expressions read, as schedules read ``t`` and ``bass`` in ``dreamreel zoom``.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

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
# Changes that are not numbers: a preset or objective by name, and actions.
ACTIONS = ("preset", "objective", "freeze", "fullscreen", "osd", "tap")


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
    """

    setting: str
    value: float | str | bool | None = None
    source: str = ""

    def __post_init__(self):
        if self.setting not in SETTING_BOUNDS and self.setting not in ACTIONS:
            known = ", ".join([*SETTING_BOUNDS, *ACTIONS])
            raise ValueError(f"unknown live setting {self.setting!r}; known: {known}")


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
