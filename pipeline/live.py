"""Live: `dreamreel live`, a camera, a clip or an infinite zoom dreamed in real time while the output never waits.

Three threads share a session (see DESIGN.md, *Live*):

1. the **reader** takes every frame the source delivers and keeps only the
   newest (:class:`~dreamreel.pipeline.sources.NewestFrame`); a source that
   stops delivering is reopened every ``RECONNECT_S`` while the output holds
   its last frame with a message;
2. the **dream worker** dreams the newest frame whenever it is free, with
   video's carry and temporal term (:func:`~dreamreel.pipeline.video.carry`,
   :func:`~dreamreel.pipeline.video.temporal_anchor`) from its previous
   dream, or, in live zoom, the last dream fed back (:func:`~dreamreel.pipeline.zoom.feed_back`);
3. the **output loop** (the caller's thread) makes one output frame per
   source frame (or per tick of ``--fps``): the newest source frame with the
   newest dream's residual warped onto it by the flow between the two
   (:func:`~dreamreel.pipeline.video.show_residual`, what ``video
   --cadence`` shows between key frames), or in live zoom the newest dream
   moved by the motion of the frames since it started; then it hands the
   frame to every sink.

So the output's frame rate and its latency are those of the warp, not of the
dream: a slow dream only means the dream is warped across more frames. The
output loop also applies the controls (:meth:`LiveSession.apply`) at its next
frame and evaluates settings written as expressions once per frame, over the
live variables plus ``t`` (output frame), ``s`` (seconds) and ``b`` (beats,
from the tempo object where one is attached).
"""

from __future__ import annotations

import collections
import os
import re
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch

from . import flow
from .controls import ACTIONS, SETTING_BOUNDS, Change, LiveVariables
from .decode import output_size
from .dream import ComputeSettings, Dreamer, DreamSettings, frame_generator, noise_image, quantize_8bit, to_tensor, to_uint8
from .expr import ExprError
from .schedule import DEFAULT_VARIABLES, Schedule, parse_schedule
from .sinks import FrameInfo, Sink
from .sources import NewestFrame, Source
from .video import VideoSettings, carry, flows_and_mask, one_opencv_thread, show_residual, temporal_anchor
from .zoom import ZoomSettings, affine_step, feed_back, lab_stats, matrix_motion, motion_matrix

DEFAULT_PRESET = "live-camera"
DEFAULT_ZOOM_PRESET = "live-zoom"
DEFAULT_FPS = 30.0  # the output rate when neither the source nor --fps says
# A source silent this long is stalled: the output holds its last frame with a message.
STALL_S = 1.0
# Seconds between attempts to reopen a stalled source.
RECONNECT_S = 2.0
# DIS preset of the output loop's flow, computed twice per output frame: at
# 320x180 "fast" took 1.0 ms of one core and "medium" 4.8 ms (the video
# stage's, kept for the dream worker's carry), in a loop that has 33 ms a frame.
OUTPUT_FLOW_PRESET = "fast"
# Output frame rate and dream rate are counted over this many seconds.
RATE_WINDOW_S = 2.0
# Per-frame motion of live zoom kept to move a dream that started this many frames ago.
MOTION_HISTORY = 600
# Most variables one live expression may name (parse_live_setting learns them one by one).
MAX_LIVE_NAMES = 64
# Settings that move the picture: only live zoom has a picture to move.
MOTION_SETTINGS = ("zoom", "angle", "translate_x", "translate_y")
WHOLE_SETTINGS = ("iterations", "octaves", "jitter")  # rounded to whole numbers
# What a setting whose expression fails on the very first frame takes: no motion, the whole dream, the defaults.
NEUTRAL = {
    **{name: float(getattr(DreamSettings(), name)) for name in ("step", "iterations", "octaves", "jitter", "smooth")},
    "blend": VideoSettings().blend, "temporal": 0.0, "zoom": 1.0, "angle": 0.0, "translate_x": 0.0, "translate_y": 0.0,
    "mix": 1.0,
}  # fmt: skip


@dataclass(frozen=True)
class LiveSettings:
    """How a live session shows its dream. Presets fill these (``[live]``); flags override.

    Attributes:
        mix: share of the dream residual in the output, 0 (the source alone)
            to 1 (the whole dream); a number or an expression over the live
            variables (``"0.5 + 0.5*exp(-4*(b - floor(b)))"``).
        crossfade: output frames over which a preset switch fades from the
            old look to the new (0 = at once).
        fps: output frames per second; None = the source's own rate (live
            zoom: the zoom's ``fps``).
    """

    mix: str | float = 1.0
    crossfade: int = 24
    fps: float | None = None

    def __post_init__(self):
        parse_live_setting(self.mix, "mix", bounds=SETTING_BOUNDS["mix"])
        if isinstance(self.crossfade, bool) or not isinstance(self.crossfade, int) or not 0 <= self.crossfade <= 10_000:
            raise ValueError(f"--crossfade {self.crossfade!r}: expected a whole number of frames from 0 to 10000")
        if self.fps is not None and (isinstance(self.fps, bool) or not isinstance(self.fps, (int, float)) or not 1 <= self.fps <= 240):
            raise ValueError(f"--fps {self.fps!r}: expected a number from 1 to 240")


def parse_live_setting(value: float | str, setting: str, *, interpolation: str = "linear", bounds=None) -> Schedule:
    """A live setting's number or expression, where every name not a function or constant is a live variable.

    Live variables come and go while playing (``cc7`` exists once that knob
    moved, an OSC value once it was sent), so a name is not refused for being
    unknown now: it reads 0 until it has a value (:meth:`LiveSession._evaluate_one`).

    Raises:
        ExprError: malformed text, or a variable-free part out of ``bounds``.
    """
    names = list(DEFAULT_VARIABLES)
    while True:
        try:
            return parse_schedule(value, setting=setting, variables=names, interpolation=interpolation, bounds=bounds)
        except ExprError as exc:
            unknown = re.match(r"unknown name '([^']+)'", exc.problem)
            if unknown is None or unknown[1] in names or len(names) > MAX_LIVE_NAMES:
                raise
            names.append(unknown[1])


@dataclass(frozen=True)
class LiveLook:
    """One look of a live session: a preset's settings with the command line's flags on top.

    Attributes:
        name: the preset's name.
        model: the model it dreams with.
        dream, video, zoom, live: its settings.
    """

    name: str
    model: str
    dream: DreamSettings
    video: VideoSettings
    zoom: ZoomSettings
    live: LiveSettings


def load_look(name: str, overrides: dict | None = None) -> LiveLook:
    """The look of preset ``name`` (built-in or a .toml file) with ``overrides`` on top.

    Args:
        overrides: ``{"model": name or None, "dream": {...}, "video": {...},
            "zoom": {...}, "live": {...}}``, only what the user set (None
            values are ignored), applied to every preset the session switches to.

    Raises:
        ValueError: an unknown preset, or a setting out of range.
    """
    from .presets import build, load_preset  # presets imports this module for LiveSettings

    overrides = overrides or {}
    preset = load_preset(name)
    sections = {section: build(section, preset, overrides.get(section, {})) for section in ("dream", "video", "zoom", "live")}
    model = overrides.get("model") or preset.model or ComputeSettings.model
    return LiveLook(preset.name, model, **sections)


@dataclass(frozen=True)
class LiveResult:
    """What a live session did.

    Attributes:
        frames: output frames written.
        seconds: from the first output frame to the end.
        dreams: dreams finished.
        dropped: source frames that arrived but were never shown (a newer one came first).
        latency_ms: mean time from a source frame's arrival to its output frame's hand-over to the sinks.
    """

    frames: int
    seconds: float
    dreams: int
    dropped: int
    latency_ms: float


@dataclass
class _Dream:
    """A finished dream, as the worker hands it to the output loop."""

    picture: torch.Tensor  # (1, 3, H, W) 8-bit values on the dreamer's device
    generation: int  # the look it was dreamed in (counts preset switches)
    input: torch.Tensor | None = None  # (1, 3, H, W) the source frame it was dreamed from
    rgb: np.ndarray | None = None  # that frame as the source gave it
    index: int = -1  # its number
    tick: int = 0  # live zoom: the output frame whose picture it started from


class LiveSession:
    """A live session: one source (or none: live zoom), a dream worker, an output loop and sinks.

    Args:
        look: the first look (:func:`load_look`).
        compute: model file, device and precision; ``look.model`` replaces the model.
        source: where frames come from; None renders live zoom from
            ``init`` (or seeded noise) at ``size``.
        sinks: where output frames go.
        size: (width, height) of live zoom.
        max_side: downscale source frames so the longest side is at most this.
        init: live zoom's start picture, RGB uint8 (H, W, 3).
        variables: the live variables expressions read (the controls write them).
        tempo: an object with ``tap(now_s)`` and ``beats(now_s) -> float | None``
            (``time.monotonic()`` seconds): ``tap`` changes call the first, ``b`` is the second.
        look_for: makes the look of a preset name (``preset`` changes); default :func:`load_look`.
        quiet: no log line for changes that take effect (refused ones are always logged).
        log: where log lines go; default stderr.

    Example:
        >>> feed, screen = FrameFeed(fps=30), MemorySink(keep=1)  # doctest: +SKIP
        >>> session = LiveSession(load_look("live-camera"), ComputeSettings(), feed, [screen])
        >>> threading.Thread(target=session.run).start()
        >>> feed.put(frame); ...; screen.frames[-1]; session.stop()
    """

    def __init__(
        self,
        look: LiveLook,
        compute: ComputeSettings,
        source: Source | None,
        sinks: Sequence[Sink],
        *,
        size: tuple[int, int] = (320, 180),
        max_side: int | None = None,
        init: np.ndarray | None = None,
        variables: LiveVariables | None = None,
        tempo=None,
        look_for: Callable[[str], LiveLook] | None = None,
        quiet: bool = False,
        log: Callable[[str], None] | None = None,
    ):
        self.compute = compute
        self.source = source
        self.sinks = list(sinks)
        self.size = size
        self.max_side = max_side
        self.init = init
        self.variables = variables if variables is not None else LiveVariables()
        self.tempo = tempo
        self.look_for = look_for or load_look
        self.quiet = quiet
        self._log_line = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.zoom_mode = source is None
        # shared with the dream worker (under _lock)
        self._lock = threading.Lock()
        self._look = look
        self._generation = 0
        self._values: dict[str, float] = {}
        self._frozen = False
        self._objective_in_effect = look.dream.objective
        self._zoom_view: tuple[_Dream | None, int, np.ndarray] = (None, 0, np.eye(3))
        self._dream: _Dream | None = None  # the newest finished dream
        self._dreams = 0
        self._dream_times: collections.deque = collections.deque()  # when recent dreams finished
        # the dream worker's own
        self._previous: _Dream | None = None  # its last dream, which the next one carries from
        self._parsed_objectives: dict = {}  # objective text → Objective, None for a bad one
        self._base: torch.Tensor | None = None  # live zoom's anchor picture
        # the output loop's own
        self._changes: queue.SimpleQueue = queue.SimpleQueue()
        self._schedules: dict[str, Schedule] = {}
        self._problems: dict[str, str] = {}  # setting or variable → the last problem logged about it
        self._osd = True
        self._fullscreen = False
        self._stop = threading.Event()
        self._status: dict = {}
        self._newest = NewestFrame()
        self._schedules = self._look_schedules(look)

    # -- for controls (any thread) ----------------------------------------------------

    def apply(self, change: Change) -> None:
        """Apply a control at the next output frame; a bad one is logged as one line and ignored. Thread-safe."""
        self._changes.put((change, time.monotonic()))

    def status(self) -> dict:
        """The preset, objective, settings (their values now), output fps, dream rate and latency in ms. Thread-safe."""
        with self._lock:
            return dict(self._status)

    def stop(self) -> None:
        """End :meth:`run` after the frame in hand. Thread-safe."""
        self._stop.set()

    # -- the session -------------------------------------------------------------------

    def run(self, duration_s: float | None = None) -> LiveResult:
        """Run until :meth:`stop`, Ctrl-C, ``duration_s`` seconds or a sink asking to stop; then close everything.

        Every device is closed and the recording finished however it ends.
        The first Ctrl-C ends the session cleanly; a second one at once.

        Raises:
            ValueError: at start, a source, model or sink that cannot open
                (nothing is left open).
        """
        previous_handler = None
        if threading.current_thread() is threading.main_thread():
            previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
        threads = []
        opened: list[Sink] = []
        try:
            with one_opencv_thread(), self._cpu_threads():
                # 1. the source's first frame gives the size and the rate, then the model loads
                width, height, fps = self._open_source()
                self.dreamer = Dreamer(self._look.dream, replace(self.compute, model=self._look.model))
                self._dreamer_model = self._look.model
                if self.zoom_mode:
                    self._base = self._zoom_base(width, height, self._look.dream.seed, self.dreamer.device)
                # 2. the sinks, each before the next: one that cannot open closes those opened
                for sink in self.sinks:
                    sink.open((width, height), fps)
                    opened.append(sink)
                # 3. the reader and the dream worker, then the output loop here until the end
                if self.source is not None:
                    threads.append(threading.Thread(target=self._read_loop, name="dreamreel-live-reader", daemon=True))
                threads.append(threading.Thread(target=self._dream_loop, name="dreamreel-live-dream", daemon=True))
                for thread in threads:
                    thread.start()
                return self._output_loop(opened, width, height, fps, duration_s)
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(timeout=30)
            for sink in opened:
                self._close(sink)
            if self.source is not None:
                self._close(self.source)
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)

    def _cpu_threads(self):
        """Torch on all cores but one while the output loop takes the last, on a CPU; unchanged on a GPU."""
        if self.compute.device not in ("cpu", "auto") or torch.cuda.is_available():
            return nullcontext()
        return _torch_threads(max(1, (os.cpu_count() or 2) - 1))

    def _open_source(self) -> tuple[int, int, float]:
        """Open the source and wait for its first frame: (width, height, output fps)."""
        look = self._look
        if self.source is None:
            fps = look.live.fps or look.zoom.fps
            return *self.size, fps
        self.source.open()
        deadline = time.monotonic() + 10 * STALL_S
        while (frame := self.source.read()) is None:
            if time.monotonic() > deadline:
                self.source.close()
                raise ValueError(f"{self.source.name}: opened, but no frame came within {10 * STALL_S:g} s")
        width, height = output_size(frame.shape[1], frame.shape[0], self.max_side)
        self._frame_size = (width, height)
        self._newest.put(self._resized(frame), time.monotonic())
        return width, height, float(look.live.fps or self.source.fps or DEFAULT_FPS)

    def _resized(self, frame: np.ndarray) -> np.ndarray:
        width, height = self._frame_size
        if frame.shape[1] == width and frame.shape[0] == height:
            return frame
        return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)

    # -- 1. the reader -------------------------------------------------------------------

    def _read_loop(self) -> None:
        """Keep the newest source frame; reopen a source that stops delivering."""
        source = self.source
        last_frame = last_attempt = time.monotonic()
        while not self._stop.is_set():
            try:
                frame = source.read()
            except Exception as exc:  # noqa: BLE001 - a source that fails is reopened, never fatal
                self._problem("source", f"live: {source.name} failed ({_first_line(exc)}); reconnecting")
                frame = None
                time.sleep(0.1)
            now = time.monotonic()
            if frame is not None:
                self._newest.put(self._resized(frame), now)
                last_frame = now
                self._problems.pop("source", None)
                continue
            if now - last_frame > STALL_S and now - last_attempt > RECONNECT_S:
                last_attempt = now
                self._problem("source", f"live: no frames from {source.name} for {now - last_frame:.0f} s; reconnecting")
                try:
                    source.close()
                    source.open()
                except Exception as exc:  # noqa: BLE001
                    self._problem("source", f"live: {source.name} cannot reopen yet ({_first_line(exc)}); trying again")
                    time.sleep(0.2)

    # -- 2. the dream worker -------------------------------------------------------------

    def _dream_loop(self) -> None:
        """Dream whenever free: the newest frame with the carry, or live zoom's last dream fed back."""
        estimator = None
        seen = 0
        reference = None  # live zoom: the first dream's colour, which later ones are held to
        while not self._stop.is_set():
            try:
                with self._lock:
                    look, generation, values, frozen = self._look, self._generation, dict(self._values), self._frozen
                if frozen or not values:
                    time.sleep(0.02)
                    continue
                dreamer = self._dreamer_for(look)
                objective = self._objective_for(dreamer, look)
                settings = replace(
                    look.dream, step=values["step"], octaves=int(values["octaves"]), jitter=int(values["jitter"]),
                    smooth=values["smooth"],
                )  # fmt: skip
                if self.zoom_mode:
                    dream = self._dream_zoom(dreamer, objective, settings, look, generation, values, reference)
                    if dream is None:
                        continue
                    reference = reference if reference is not None else lab_stats(dream.picture)
                else:
                    got = self._newest.wait_newer(seen, timeout_s=0.2)
                    if got is None:
                        continue
                    seen = got[0] + 1
                    if estimator is None or estimator.method != look.video.flow:
                        estimator = flow.FlowEstimator(look.video.flow)
                    dream = self._dream_frame(dreamer, objective, settings, look, generation, values, got, estimator)
                self._publish(dream, dreamer.device)
            except Exception as exc:  # noqa: BLE001 - the output goes on undreamed; logged once per kind of failure
                self._problem("dream", f"live: dreaming failed ({type(exc).__name__}: {_first_line(exc)}); trying again")
                time.sleep(0.5)

    def _dream_frame(self, dreamer, objective, settings, look, generation, values, got, estimator) -> _Dream:
        """Dream source frame ``got`` = (number, rgb, arrival), carried from the worker's previous dream as video carries."""
        index, rgb, _ = got
        current = to_tensor(rgb, dreamer.device)
        previous = self._previous
        start = None
        if previous is not None and previous.generation == generation and values["blend"] > 0:
            flows = None
            if estimator.method != "none":
                flows = torch.from_numpy(np.stack([estimator(rgb, previous.rgb), estimator(previous.rgb, rgb)]))
            start, weight = carry(current, previous.picture, previous.input, flows, values["blend"])
            if flow.scene_cut(previous.rgb, rgb, inconsistent_fraction=float(1 - weight.mean())):
                start = None  # a new shot (a switched camera, the clip's loop): nothing to carry
        if start is None:  # the first dream of a look or a shot
            start, weight, n_iter = current, torch.zeros_like(current[:, :1]), look.dream.iterations
        else:
            n_iter = int(values["iterations"])
        anchor = temporal_anchor(start, weight, values["temporal"])
        dreamed = dreamer(start, iterations=n_iter, settings=settings, objective=objective, anchor=anchor,
                          generators=[frame_generator(look.dream.seed, self._dreams)])  # fmt: skip
        self._previous = _Dream(quantize_8bit(dreamed), generation, current, rgb, index)
        return self._previous

    def _zoom_base(self, width: int, height: int, seed: int, device) -> torch.Tensor:
        """Live zoom's anchor picture: ``init`` resized, or seeded noise, (1, 3, H, W) on ``device``."""
        if self.init is not None:
            return to_tensor(cv2.resize(self.init, (width, height), interpolation=cv2.INTER_AREA), device)
        return noise_image(width, height, seed).to(device)

    def _dream_zoom(self, dreamer, objective, settings, look, generation, values, reference) -> _Dream | None:
        """Dream live zoom's next picture: the dream on screen, moved to where the output is now, fed back."""
        with self._lock:
            shown, tick, moved_by = self._zoom_view
            newest = self._dream
        if shown is not newest:  # the output has not shown the last dream yet: start from that, not an older one
            time.sleep(0.005)
            return None
        if shown is None:
            start, n_iter = self._base, look.dream.iterations
        else:
            width, height = self._base.shape[-1], self._base.shape[-2]
            value = {**matrix_motion(moved_by, width, height), "blend": values["blend"]}
            start = feed_back(shown.picture, self._base, reference, look.zoom, value)
            n_iter = int(values["iterations"])
        dreamed = dreamer(start, iterations=n_iter, settings=settings, objective=objective,
                          generators=[frame_generator(look.dream.seed, self._dreams)])  # fmt: skip
        return _Dream(quantize_8bit(dreamed), generation, tick=tick)

    def _publish(self, dream: _Dream, device: torch.device) -> None:
        if device.type == "cuda":  # finished before it is shown: the output never waits for the dream's kernels
            torch.cuda.current_stream(device).synchronize()
        with self._lock:
            self._dream = dream
            self._dreams += 1
            self._dream_times.append(time.monotonic())

    def _dreamer_for(self, look: LiveLook) -> Dreamer:
        """The worker's dreamer, loaded anew when a preset asks for another model."""
        if look.model != self._dreamer_model:
            self._log(f"live: loading model {look.model} for preset {look.name}")
            self.dreamer = Dreamer(look.dream, replace(self.compute, model=look.model))
            self._dreamer_model = look.model
            self._parsed_objectives = {}
            self._previous = None
        return self.dreamer

    def _objective_for(self, dreamer: Dreamer, look: LiveLook):
        """The look's objective parsed on the worker's model; a bad one is logged once and the last good one kept."""
        parsed = self._parsed_objectives
        text = look.dream.objective
        if text not in parsed:
            try:
                parsed[text] = dreamer.parse_objective(text)
            except ValueError as exc:
                self._log(f"live: ignored objective {text!r}: {_first_line(exc)}")
                parsed[text] = None
            if parsed[text] is not None:
                with self._lock:
                    self._objective_in_effect = text
        if parsed[text] is None:
            good = self._objective_in_effect
            if good not in parsed or parsed[good] is None:
                parsed[good] = dreamer.parse_objective(good)
            return parsed[good]
        return parsed[text]

    # -- 3. the output loop --------------------------------------------------------------

    def _output_loop(self, sinks: list[Sink], width: int, height: int, fps: float, duration_s: float | None) -> LiveResult:
        """One output frame per source frame (or ``--fps`` tick) until the end; returns the run's figures."""
        device = self.dreamer.device
        stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        follow_source = self.source is not None and self._look.live.fps is None
        period = 1 / fps
        estimator = flow.FlowEstimator(self._look.video.flow, preset=OUTPUT_FLOW_PRESET)
        start = time.monotonic()
        deadline = None if duration_s is None else start + duration_s
        next_tick = start
        t = 0
        seen = 0
        dropped = 0
        latency_sum = 0.0
        held: np.ndarray | None = None
        fade = _Fade()
        motion: collections.deque = collections.deque(maxlen=MOTION_HISTORY)  # (tick, step matrix) of live zoom
        moved = {}  # id of a dream → (dream, its motion since it started)
        out_times: collections.deque = collections.deque()
        message = None
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            while not self._stop.is_set():
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                # 1. the next source frame (or tick); a silent source holds the last frame
                got = None
                if self.source is not None:
                    got = self._newest.wait_newer(seen, timeout_s=2 * period) if follow_source else None
                    if not follow_source:
                        _sleep_until(next_tick)
                        got = self._newest.newest()
                        got = got if got and got[0] >= seen else None
                    message = None
                    if got is None:
                        silent_s = time.monotonic() - self._newest.arrival_s
                        if silent_s > STALL_S:
                            message = f"no frames from {self.source.name} for {silent_s:.0f} s: holding the last frame, reconnecting"
                    else:
                        dropped += max(0, got[0] - seen)
                        seen = got[0] + 1
                else:
                    _sleep_until(next_tick)
                next_tick = max(next_tick + period, time.monotonic() - period)
                # 2. controls, then this frame's settings
                self._apply_changes(sinks)
                values = self._evaluate(t, time.monotonic() - start)
                with self._lock:
                    self._values = values
                    frozen = self._frozen
                    dream = self._dream
                    look = self._look
                # 3. the output frame: held while frozen or when no new source frame came
                info_source = got if got is not None else self._newest.newest()
                if held is not None and (frozen or (self.source is not None and got is None)):
                    frame = held
                else:
                    fade.note(dream, look.live.crossfade)
                    if self.zoom_mode:
                        motion.append((t, motion_matrix(width, height, **values)))
                        frame = self._zoom_frame(dream, fade, t, motion, moved, width, height)
                    else:
                        frame = self._source_frame(got[1], dream, fade, values["mix"], estimator, device)
                    fade.advance()
                    held = frame
                # 4. hand it to every sink; a failing sink is closed and the others go on
                arrival = info_source[2] if info_source is not None else now
                info = FrameInfo(
                    index=t, arrival_s=arrival, source_index=info_source[0] if info_source else -1,
                    dream_index=dream.index if dream is not None else -1, source=info_source[1] if info_source else None,
                    osd=self._osd, osd_lines=self._osd_lines(look), fullscreen=self._fullscreen, message=message,
                )  # fmt: skip
                for sink in list(sinks):
                    try:
                        sink.write(frame, info)
                    except Exception as exc:  # noqa: BLE001 - one output failing never stops the show
                        self._log(f"live: {sink.name} failed ({_first_line(exc)}); closed it, the other outputs go on")
                        sinks.remove(sink)
                        self._close(sink)
                    if sink.stop_requested:
                        self.stop()
                # 5. figures
                done = time.monotonic()
                latency_sum += done - arrival
                out_times.append(done)
                t += 1
                self._update_status(look, values, out_times, done - arrival, dropped, message)
        seconds = time.monotonic() - start
        return LiveResult(t, seconds, self._dreams, dropped, 1000 * latency_sum / max(t, 1))

    def _source_frame(self, rgb: np.ndarray, dream: _Dream | None, fade: _Fade, mix: float, estimator, device) -> np.ndarray:
        """The source frame with the dream's residual (and during a fade the old look's) warped onto it."""
        current = to_tensor(rgb, device)
        picture = self._shown(current, rgb, dream, mix, estimator) if dream is not None else current
        if fade.weight < 1 and fade.old is not None:
            picture = fade.weight * picture + (1 - fade.weight) * self._shown(current, rgb, fade.old, mix, estimator)
        return to_uint8(picture)[0]

    def _shown(self, current, rgb, dream: _Dream, mix: float, estimator) -> torch.Tensor:
        if dream.picture.is_cuda:  # made on the worker's stream, read on this one: not to be reused before
            for tensor in (dream.picture, dream.input):
                tensor.record_stream(torch.cuda.current_stream())
        flows = None
        if dream.rgb is not rgb and estimator.method != "none":
            flows = torch.from_numpy(np.stack([estimator(rgb, dream.rgb), estimator(dream.rgb, rgb)]))
        backward, mask = flows_and_mask(flows, current)
        return show_residual(current, dream.picture, dream.input, backward, mask, mix)

    def _zoom_frame(self, dream, fade, t, motion, moved, width, height) -> np.ndarray:
        """Live zoom's output: the newest dream moved by the motion of the frames since it started (one resampling)."""
        for kept in [key for key in moved if key not in (id(dream), id(fade.old))]:
            del moved[kept]
        pictures = []
        for each in (dream, fade.old if fade.weight < 1 else None):
            if each is None:
                continue
            if id(each) not in moved:  # a new dream: the motion of every frame since its start picture was taken
                since = np.eye(3)
                for tick, step in motion:
                    if tick > each.tick:
                        since = step @ since
                moved[id(each)] = (each, since)
            else:
                moved[id(each)] = (each, motion[-1][1] @ moved[id(each)][1])
            pictures.append(affine_step(each.picture, **_motion_args(matrix_motion(moved[id(each)][1], width, height))))
        with self._lock:
            if dream is not None:
                self._zoom_view = (dream, t, moved[id(dream)][1])
            else:
                self._zoom_view = (None, t, np.eye(3))
        if not pictures:  # before the first dream: the start picture, still
            return to_uint8(self._base)[0]
        picture = pictures[0] if len(pictures) == 1 else fade.weight * pictures[0] + (1 - fade.weight) * pictures[1]
        return to_uint8(picture)[0]

    # -- controls ------------------------------------------------------------------------

    def _apply_changes(self, sinks: list[Sink]) -> None:
        for sink in sinks:
            for change in sink.poll():
                self.apply(change)
        while True:
            try:
                change, when = self._changes.get_nowait()
            except queue.Empty:
                return
            try:
                shown = self._apply_change(change, when)
            except Exception as exc:  # noqa: BLE001 - a bad control is logged, never fatal
                self._log(f"live: ignored {change.setting} = {change.value!r} ({change.source or 'api'}): {_first_line(exc)}")
                continue
            if not self.quiet:
                self._log(f"live: {change.setting} = {shown} ({change.source or 'api'})")

    def _apply_change(self, change: Change, when: float) -> str:
        """Apply one change; returns its new value as the log line shows it. Raises for a bad one."""
        name, value = change.setting, change.value
        if name in SETTING_BOUNDS:
            if name in MOTION_SETTINGS and not self.zoom_mode:
                raise ValueError(f"{name} moves the picture of live --zoom only")
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError(f"expected a number or an expression, got {type(value).__name__}")
            schedule = self._parse(name, value)
            now = self._evaluate_one(name, schedule, self._env(0, 0.0), strict=True)
            lo, hi = SETTING_BOUNDS[name]
            if not lo <= now <= hi:  # out of range now: refused now (later it is held in range)
                raise ValueError(f"{now:g} is out of range: expected a value from {lo:g} to {hi:g}")
            self._schedules[name] = schedule
            return f"{value:g}" if isinstance(value, (int, float)) else str(value)
        if name == "preset":
            look = self.look_for(str(value))
            self._switch_look(look)
            return look.name
        if name == "objective":
            if not isinstance(value, str) or not value.strip():
                raise ValueError("expected an objective expression such as 'mid'")
            with self._lock:
                self._look = replace(self._look, dream=replace(self._look.dream, objective=value))
            return value
        if name == "tap":
            if self.tempo is None:
                raise ValueError("no tempo is attached to this session")
            self.tempo.tap(when)
            return "tap"
        assert name in ACTIONS
        attribute = {"freeze": "_frozen", "fullscreen": "_fullscreen", "osd": "_osd"}[name]
        state = not getattr(self, attribute) if value is None else bool(value)
        with self._lock:
            setattr(self, attribute, state)
        return "on" if state else "off"

    def _switch_look(self, look: LiveLook) -> None:
        """A preset switch: new settings at once, the new look's dreams fading in over ``crossfade`` frames."""
        schedules = self._look_schedules(look)
        with self._lock:
            self._look = look
            self._generation += 1
        self._schedules = schedules

    def _look_schedules(self, look: LiveLook) -> dict[str, Schedule]:
        """Every numeric live setting of ``look``, as a schedule (a number or an expression)."""
        zoom, video, dream = look.zoom, look.video, look.dream
        carried_steps = zoom.iterations_next if self.zoom_mode else video.iterations_next
        numbers = {
            "step": zoom.step if self.zoom_mode and zoom.step is not None else dream.step,
            "iterations": dream.iterations if carried_steps is None else carried_steps,
            "octaves": dream.octaves,
            "jitter": dream.jitter,
            "smooth": dream.smooth,
            "blend": zoom.blend if self.zoom_mode else video.blend,
            "temporal": video.temporal,
            "zoom": zoom.zoom,
            "angle": zoom.angle,
            "translate_x": zoom.translate_x,
            "translate_y": zoom.translate_y,
            "mix": look.live.mix,
        }
        return {
            name: self._parse(name, value, zoom.interpolation)
            for name, value in numbers.items()
            if self.zoom_mode or name not in MOTION_SETTINGS
        }

    def _parse(self, name: str, value: float | str, interpolation: str = "linear") -> Schedule:
        return parse_live_setting(value, name, interpolation=interpolation)

    def _env(self, t: int, seconds: float) -> dict[str, float]:
        env = {**self.variables.snapshot(), "t": float(t), "s": seconds}
        if self.tempo is not None and (beats := self.tempo.beats(time.monotonic())) is not None:
            env["b"] = beats
        return env

    def _evaluate(self, t: int, seconds: float) -> dict[str, float]:
        """This frame's value of every numeric setting: a broken expression keeps its last good value (logged once)."""
        env = self._env(t, seconds)
        values = {}
        for name, schedule in self._schedules.items():
            values[name] = self._evaluate_one(name, schedule, env)
        return values

    def _evaluate_one(self, name: str, schedule: Schedule, env: dict, strict: bool = False) -> float:
        """One setting's value now, held in its range; an expression that fails keeps the last good value."""
        missing = [variable for variable in schedule.variables if variable not in env]
        for variable in missing:  # a variable no one has sent yet reads 0 (silence, a knob at zero)
            self._problem(f"variable {variable}", f"live: {variable!r} has no value yet (no control or tempo has set it); it reads 0 until one comes")
        try:
            value = schedule(int(env["t"]), {**dict.fromkeys(missing, 0.0), **env})
        except ValueError as exc:
            if strict:
                raise
            kept = self._values.get(name, NEUTRAL[name])
            self._problem(name, f"live: {name}: {_first_line(exc)}; keeping {kept:g}")
            return kept
        if strict:
            return value
        lo, hi = SETTING_BOUNDS[name]
        if not lo <= value <= hi:
            self._problem(name, f"live: {name} = {value:g} is out of range; held at {min(max(value, lo), hi):g} (from {lo:g} to {hi:g})")
            value = min(max(value, lo), hi)
        else:
            self._problems.pop(name, None)
        return float(round(value)) if name in WHOLE_SETTINGS else value

    # -- status and logs ----------------------------------------------------------------

    def _update_status(self, look, values, out_times, latency_s, dropped, message) -> None:
        now = out_times[-1]
        while out_times and out_times[0] < now - RATE_WINDOW_S:
            out_times.popleft()
        with self._lock:
            while self._dream_times and self._dream_times[0] < now - RATE_WINDOW_S:
                self._dream_times.popleft()
            span = min(RATE_WINDOW_S, now - self._status.get("started", now)) or RATE_WINDOW_S
            self._status = {
                "started": self._status.get("started", now),
                "preset": look.name,
                "objective": self._objective_in_effect,
                "settings": dict(values),
                "frozen": self._frozen,
                "output_fps": len(out_times) / span,
                "dream_rate": len(self._dream_times) / span,
                "latency_ms": 1000 * latency_s,
                "dropped": dropped,
                "message": message,
            }

    def _osd_lines(self, look: LiveLook) -> tuple[str, ...]:
        s = self._status
        if not s:
            return (look.name,)
        state = "  FROZEN" if s["frozen"] else ""
        return (f"{s['output_fps']:.1f} fps   dream {s['dream_rate']:.1f}/s   latency {s['latency_ms']:.0f} ms",
                f"{look.name}: {s['objective']}{state}")  # fmt: skip

    def _log(self, line: str) -> None:
        self._log_line(line)

    def _problem(self, key: str, line: str) -> None:
        """Log ``line`` unless it is what was last logged under ``key`` (a problem on every frame is said once)."""
        if self._problems.get(key) != line.split(";")[0]:
            self._problems[key] = line.split(";")[0]
            self._log(line)

    def _close(self, device) -> None:
        try:
            device.close()
        except Exception as exc:  # noqa: BLE001 - closing the others matters more
            self._log(f"live: closing {device.name} failed ({_first_line(exc)})")

    def _on_sigint(self, signum, frame) -> None:
        if self._stop.is_set():
            raise KeyboardInterrupt
        self._log("\nlive: stopping (Ctrl-C again to stop at once)")
        self.stop("Ctrl-C")


class _Fade:
    """A crossfade between two looks' dreams, in output frames, from the first dream of the new look on."""

    def __init__(self):
        self.old: _Dream | None = None
        self.weight = 1.0  # of the new look
        self._current: _Dream | None = None
        self._step = 1.0

    def note(self, dream: _Dream | None, frames: int) -> None:
        """Start a fade when ``dream`` is the first of a new look."""
        if dream is None or dream is self._current:
            return
        if self._current is not None and dream.generation != self._current.generation and frames > 0:
            self.old, self.weight, self._step = self._current, 0.0, 1 / frames
        self._current = dream

    def advance(self) -> None:
        if self.weight < 1:
            self.weight = min(1.0, self.weight + self._step)
            if self.weight == 1:
                self.old = None


def _motion_args(motion: dict[str, float]) -> dict[str, float]:
    return {"zoom": motion["zoom"], "angle_deg": motion["angle"], "translate_x": motion["translate_x"], "translate_y": motion["translate_y"]}


def _sleep_until(when: float) -> None:
    wait = when - time.monotonic()
    if wait > 0:
        time.sleep(wait)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


class _torch_threads:
    """Torch's CPU threads set for a block, restored after."""

    def __init__(self, threads: int):
        self.threads = threads

    def __enter__(self):
        self.before = torch.get_num_threads()
        torch.set_num_threads(self.threads)

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)


