"""Audio in the room (``dreamreel live --audio-in``): the features of ``zoom --audio``, live, and the beat.

:class:`AudioIn` takes the sound card's blocks through :meth:`AudioIn.callback`,
the callback a ``sounddevice.InputStream`` calls, and after each block sets
the live variables ``rms``, ``bass``, ``mid``, ``treble`` and ``onset``; with a
tempo object it also tracks the beat and hands its estimates to it (tap tempo
and MIDI clock override them there, see :class:`controls.Tempo`).

The analysis is :mod:`audio`'s, made causal:

* the same window (:class:`audio.Spectrum`), but the newest one the stream has
  filled rather than one centred on a video frame, measured
  :data:`audio.TEMPO_FPS` times a second;
* the same attack/release followers, carried on from block to block;
* the same normalisation (1 = the typical level, the mean over the non-silent
  moments), over the last :data:`NORMALISE_WINDOW_S` rather than the whole
  track, so a quiet opening act does not make the headliner read 10;
* the same tempo estimate (:func:`audio.estimate_bpm`) and beat fit
  (:func:`audio.fit_beat`), over the last :data:`TRACK_WINDOW_S`.

Latency: a feature describes the middle of its window, so it is half a window
(46 ms) old when measured, plus the wait for the block (one hop, 10 ms) and
the sound card's input latency (:attr:`AudioIn.latency_s`). A bass hit shows
that much late; it cannot be predicted. The beat can: beat times are dated by
the samples they were heard in, not by when the analysis finished, and the
tempo object extrapolates them (``--lookahead`` reads ``b`` ahead to cover the
output's own latency too).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from .audio import (
    ATTACK_S,
    FEATURE_NAMES,
    MIN_SAMPLE_RATE,
    ONSET_LEAD_S,
    ONSET_MIN_TYPICAL_DB,
    ONSET_RELEASE_S,
    RELEASE_S,
    SILENCE_AMPLITUDE,
    TEMPO_FPS,
    Spectrum,
    follow,
    normalise,
    beat_envelope,
    estimate_bpm,
    fit_beat,
)

# The typical level is the mean over the last 30 s: long enough to span a few
# musical phrases (8 bars at 120 BPM is 16 s), so one loud chorus does not
# shrink the next verse to nothing, short enough to follow a set from a quiet
# opener to a loud main act within half a minute.
NORMALISE_WINDOW_S = 30.0
# The beat is fitted to the last 8 s (16 beats at 120 BPM; estimate_bpm needs
# 4 beats at its slowest tempo, 60 BPM: 4 s), 4 times a second.
TRACK_WINDOW_S = 8.0
TRACK_EVERY_S = 0.25
# The sample clock and time.monotonic drift apart (sound cards run tens of
# ppm off: 0.1-0.2 s over an hour), so the offset between them is followed,
# slowly enough (a time constant of about 100 blocks, a second) to smooth
# the jitter of callback times.
CLOCK_FOLLOW = 0.01

SOUNDDEVICE_MISSING = "--audio-in needs sounddevice: pip install 'dreamreel[live]'"
PORTAUDIO_MISSING = (
    "--audio-in needs the PortAudio library, which sounddevice could not find: "
    "apt-get install libportaudio2 (Debian, Ubuntu), or reinstall sounddevice (Windows, macOS ship it)"
)


class AudioIn:
    """Causal audio features and beat tracking, block by block.

    Attributes:
        sample_rate: of the samples fed, in Hz.
        hop: samples between two measurements (sample_rate / 100, rounded).
        rate_hz: measurements per second, sample_rate / hop.
        device_latency_s: the sound card's input latency, in seconds (from
            the stream, once open).
    """

    def __init__(
        self,
        sample_rate: int,
        variables,
        tempo=None,
        *,
        hop: int | None = None,
        device_latency_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        log: Callable[[str], None] = print,
    ):
        """
        Args:
            sample_rate: in Hz, at least :data:`audio.MIN_SAMPLE_RATE`.
            variables: a :class:`controls.LiveVariables` (anything with ``set(**values)``).
            tempo: None, or a :class:`controls.Tempo` (anything with
                ``track(bpm, beat_s, now_s)``) to hand the beat to.
            hop: samples between measurements; default sample_rate / 100.
            device_latency_s: the sound card's input latency.
            clock: the time a block arrives, in seconds (time.monotonic).
            log: where the one line about dropped samples, or a failed analysis, goes.

        Raises:
            ValueError: the sample rate is too low to hold the treble band.
        """
        if sample_rate < MIN_SAMPLE_RATE:
            raise ValueError(
                f"--audio-in: the device runs at {sample_rate} Hz; the treble band needs at least {MIN_SAMPLE_RATE} Hz"
            )
        self.sample_rate = sample_rate
        self.hop = hop or round(sample_rate / TEMPO_FPS)
        self.rate_hz = sample_rate / self.hop
        self.device_latency_s = device_latency_s
        self._variables = variables
        self._tempo = tempo
        self._clock = clock
        self._log = log
        self._spectrum = Spectrum.at(sample_rate)
        # The last window measured, then the samples not measured yet. Before
        # the first block, zeros: the first window measured is centred on the
        # stream's first sample, half of it zeros, as the file analysis pads a
        # track's start (earlier windows would read the stream's start as an
        # onset out of silence).
        self._buffer = np.zeros(self.hop + self._spectrum.n_fft // 2, np.float32)
        self._previous_db: np.ndarray | None = None
        self._samples_in = 0  # samples received, the position of the stream's sample clock
        self._clock_offset: float | None = None  # monotonic time of sample 0
        self._levels = dict.fromkeys(FEATURE_NAMES, 0.0)  # the followers' state
        size = round(NORMALISE_WINDOW_S * self.rate_hz)
        self._history = {name: np.zeros(size) for name in FEATURE_NAMES}  # a ring, in no order: only its mean counts
        self._history_loud = np.zeros(size, bool)
        self._history_count = 0
        size = round(TRACK_WINDOW_S * self.rate_hz)
        self._recent = {name: np.zeros(0) for name in ("beat", "onset", "rms")}  # in order, the newest last
        self._recent_size = size
        self._hops_since_fit = 0
        self._dropped_logged = self._failed_logged = False
        variables.set(**dict.fromkeys(FEATURE_NAMES, 0.0))

    @property
    def window_s(self) -> float:
        """The length of the window each measurement looks at, in seconds (about 90 ms)."""
        return self._spectrum.n_fft / self.sample_rate

    @property
    def latency_s(self) -> float:
        """How old the newest features are when published: half a window, one hop, the device's latency."""
        return (self._spectrum.n_fft / 2 + self.hop) / self.sample_rate + self.device_latency_s

    def callback(self, indata: np.ndarray, frames: int, time_info, status) -> None:
        """sounddevice's InputStream callback: measure the block, set the variables.

        Args:
            indata: float32 samples, shape (frames, channels); channels are averaged.
            frames: samples per channel in the block.
            time_info, status: PortAudio's times and flags; an input overflow
                (samples the card dropped because a block came too late) is
                logged once.
        """
        if status and getattr(status, "input_overflow", False) and not self._dropped_logged:
            self._log("audio in: the sound card dropped samples (the computer was busy); the analysis goes on")
            self._dropped_logged = True
        samples = np.asarray(indata, dtype=np.float32)
        try:
            self.feed(samples.mean(axis=1) if samples.ndim == 2 else samples, self._clock())
        except Exception as exc:  # an exception here would stop the stream for the rest of the show
            if not self._failed_logged:
                self._log(f"audio in: the analysis failed ({type(exc).__name__}: {exc}); the features keep their last values")
                self._failed_logged = True

    def feed(self, samples: np.ndarray, now_s: float) -> None:
        """Measure every whole hop in `samples` and publish the newest features.

        Args:
            samples: mono float32 samples, shape (n,), following the previous block.
            now_s: when the last of them arrived, in the clock's seconds.
        """
        self._samples_in += samples.size
        offset = now_s - self._samples_in / self.sample_rate
        if self._clock_offset is None:
            self._clock_offset = offset
        self._clock_offset += CLOCK_FOLLOW * (offset - self._clock_offset)
        buffer = np.concatenate([self._buffer, np.nan_to_num(samples, nan=0.0, posinf=0.0, neginf=0.0)])
        n_fft, hop = self._spectrum.n_fft, self.hop
        count = (buffer.size - n_fft) // hop
        if count <= 0:
            self._buffer = buffer
            return
        starts = hop * np.arange(1, count + 1)
        raw, self._previous_db = self._spectrum.measure(buffer[starts[:, None] + np.arange(n_fft)], self._previous_db)
        self._buffer = buffer[count * hop :]
        self._publish(raw)
        self._track(raw, now_s)

    def _publish(self, raw: dict[str, np.ndarray]) -> None:
        """Follow, normalise over the recent past, and set the variables to the newest hop's values."""
        step_s = 1.0 / self.rate_hz
        count = raw["rms"].size
        ring = (self._history_count + np.arange(count)) % self._history_loud.size
        self._history_count += count
        self._history_loud[ring] = raw["rms"] > SILENCE_AMPLITUDE
        filled = min(self._history_count, self._history_loud.size)
        values = {}
        for name in FEATURE_NAMES:
            if name == "onset":
                smoothed = follow(raw[name], 0.0, ONSET_RELEASE_S, step_s, start=self._levels[name])
                floor = ONSET_MIN_TYPICAL_DB
            else:
                smoothed = follow(raw[name], ATTACK_S, RELEASE_S, step_s, start=self._levels[name])
                floor = SILENCE_AMPLITUDE
            self._levels[name] = float(smoothed[-1])
            history = self._history[name]
            history[ring] = smoothed
            values[name] = float(normalise(history[:filled], self._history_loud[:filled], floor)[ring[-1]])
        self._variables.set(**values)

    def _track(self, raw: dict[str, np.ndarray], now_s: float) -> None:
        """Every TRACK_EVERY_S, fit the beat to the last TRACK_WINDOW_S and hand it to the tempo."""
        for name, recent in self._recent.items():
            self._recent[name] = np.concatenate([recent, raw[name]])[-self._recent_size :]
        self._hops_since_fit += raw["rms"].size
        if self._tempo is None or self._hops_since_fit < TRACK_EVERY_S * self.rate_hz:
            return
        self._hops_since_fit = 0
        if not (self._recent["rms"] > SILENCE_AMPLITUDE).any():
            return
        envelope = beat_envelope(self._recent)
        estimate = estimate_bpm(envelope, self.rate_hz)
        if estimate is None:
            return
        bpm, phase = fit_beat(envelope, self.rate_hz, estimate)
        # Envelope value k describes the window centred half a window before
        # the end of hop k; the rises gather ONSET_LEAD_S before the hits.
        last_hop_end = self._samples_in - (self._buffer.size - self._spectrum.n_fft)
        first_centre = last_hop_end - self._spectrum.n_fft / 2 - (envelope.size - 1) * self.hop
        first_beat_s = self._sample_time(first_centre) + phase / self.rate_hz + ONSET_LEAD_S
        period_s = 60.0 / bpm
        latest_beat_s = first_beat_s + period_s * math.floor((self._sample_time(last_hop_end) - first_beat_s) / period_s)
        self._tempo.track(bpm, latest_beat_s, now_s)

    def _sample_time(self, sample: float) -> float:
        """When sample number `sample` of the stream reached the sound card, in the clock's seconds."""
        return self._clock_offset + sample / self.sample_rate - self.device_latency_s


@contextmanager
def open_audio_in(device: str, variables, tempo=None, *, log: Callable[[str], None] = print) -> Iterator[AudioIn]:
    """Open an input device, analyse it while the block runs, close it after.

    Args:
        device: a device number or part of its name (``python -m
            sounddevice`` lists them), or "" for the default input.
        variables, tempo, log: as for :class:`AudioIn`.

    Yields:
        The running :class:`AudioIn`.

    Raises:
        ValueError: sounddevice or PortAudio is missing, no such device, or
            the device cannot be opened; one line naming --audio-in.
    """
    try:
        import sounddevice
    except ImportError:
        raise ValueError(SOUNDDEVICE_MISSING) from None
    except OSError:
        raise ValueError(PORTAUDIO_MISSING) from None
    name = int(device) if device.isdigit() else device or None
    try:
        info = sounddevice.query_devices(name, kind="input")
        sample_rate = int(info["default_samplerate"])
        analysis = AudioIn(sample_rate, variables, tempo, log=log)
        stream = sounddevice.InputStream(
            device=name, channels=min(2, int(info["max_input_channels"])), samplerate=sample_rate,
            blocksize=analysis.hop, dtype="float32", latency="low", callback=analysis.callback,
        )  # fmt: skip
    except (ValueError, sounddevice.PortAudioError) as exc:
        raise ValueError(f"--audio-in {device or '(default)'}: {str(exc).splitlines()[0]} (python -m sounddevice lists the devices)") from None
    analysis.device_latency_s = float(stream.latency)
    log(
        f"audio in: {info['name']} at {sample_rate} Hz; features are {1000 * analysis.latency_s:.0f} ms late "
        f"(half the {1000 * analysis.window_s:.0f} ms window, a {1000 * analysis.hop / sample_rate:.0f} ms block, "
        f"the device's {1000 * analysis.device_latency_s:.0f} ms)"
    )
    with stream:
        yield analysis
