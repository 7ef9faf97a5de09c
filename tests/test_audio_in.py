"""Audio in the room: generated sound fed block by block through the sound card's callback."""

from __future__ import annotations

import importlib.abc
import sys
import types

import numpy as np
import pytest

from dreamreel.pipeline.audio import FEATURE_NAMES, analyse
from dreamreel.pipeline.audio_in import AudioIn, open_audio_in
from dreamreel.pipeline.controls import LiveVariables, Tempo

FPS = 30  # the video frame rate beats are judged at
BLOCK = 512  # samples per callback, as a sound card might deliver them


class Feeder:
    """Feeds samples through AudioIn.callback in blocks, the clock at each block's last sample (plus 100 s)."""

    def __init__(self, sample_rate: int, *, tempo: Tempo | None = None, hop: int | None = None):
        self.now = 100.0
        self.variables = LiveVariables()
        self.audio = AudioIn(sample_rate, self.variables, tempo, hop=hop, clock=lambda: self.now)
        self.sample_rate = sample_rate
        self.fed = 0

    def feed(self, samples: np.ndarray, block: int = BLOCK):
        """Yield the time after each block, with the variables as they are then."""
        for start in range(0, samples.size, block):
            chunk = samples[start : start + block]
            self.fed += chunk.size
            self.now = 100.0 + self.fed / self.sample_rate
            self.audio.callback(chunk[:, None], chunk.size, None, None)
            yield self.now


def click_track(bpm: float, duration_s: float, sample_rate: int, first_s: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Metronome clicks (5 ms bursts of a 1.5 kHz tone) over faint hiss; returns (samples, click times in s)."""
    rng = np.random.default_rng(0)
    samples = 0.002 * rng.standard_normal(int(duration_s * sample_rate))
    t = np.arange(int(0.03 * sample_rate)) / sample_rate
    click = 0.8 * np.sin(2 * np.pi * 1500 * t) * np.exp(-t / 0.005)
    clicks = np.arange(first_s, duration_s - 0.1, 60 / bpm)
    for at in clicks:
        start = round(at * sample_rate)
        samples[start : start + click.size] += click[: samples.size - start]
    return samples.astype(np.float32), clicks


@pytest.mark.parametrize("bpm, sample_rate", [(120, 44100), (97, 22050)])
def test_a_click_track_gives_beats_at_the_clicks(bpm, sample_rate):
    """b, read frame by frame as the output loop would, turns whole within 2 frames of each click once locked."""
    tempo = Tempo()
    feeder = Feeder(sample_rate, tempo=tempo)
    samples, clicks = click_track(bpm, 16.0, sample_rate)
    frame_times, beats = [], []
    for now in feeder.feed(samples):
        while 100.0 + len(frame_times) / FPS <= now:  # every frame shown by now, with what was heard by then
            frame_times.append(100.0 + len(frame_times) / FPS)
            beats.append(tempo.beats(frame_times[-1]))
    assert tempo.bpm(feeder.now) == pytest.approx(bpm, abs=0.5)
    # Where b passes a whole number between two frames: a beat, at the interpolated moment.
    locked = [k for k in range(1, len(beats)) if frame_times[k] >= 108.0 and beats[k - 1] is not None]
    crossings = [
        frame_times[k - 1] + (np.ceil(beats[k - 1]) - beats[k - 1]) / (beats[k] - beats[k - 1]) / FPS - 100.0
        for k in locked
        if np.floor(beats[k]) > np.floor(beats[k - 1])
    ]
    expected = clicks[(clicks >= 108.0 - 100.0 + 1 / FPS) & (clicks < frame_times[-1] - 100.0)]
    assert len(crossings) == len(expected) > 10
    assert np.abs(np.array(crossings) - expected).max() < 2 / FPS


def test_bass_rises_on_a_bass_tone():
    sample_rate = 22050
    t = np.arange(int(4.0 * sample_rate)) / sample_rate
    hiss = 0.3 * np.sin(2 * np.pi * 4000 * t)
    tone = np.where(t >= 2.0, 0.5 * np.sin(2 * np.pi * 55 * t), 0.0)
    feeder = Feeder(sample_rate)
    seen = [(now - 100.0, feeder.variables.snapshot()) for now in feeder.feed((hiss + tone).astype(np.float32))]
    before = [values["bass"] for when, values in seen if 1.0 < when < 2.0]
    after = [values["bass"] for when, values in seen if 2.2 < when < 2.5]
    assert max(before) < 0.01 and min(after) > 1.0
    assert all(0.5 < values["treble"] < 1.5 for when, values in seen if when > 1.0)  # the hiss stays typical


def test_the_features_are_the_file_analysis_made_causal():
    """Each published value is the file analysis's value at the middle of the newest window."""
    sample_rate, hop = 22050, 256  # half the 2048-sample window is 4 hops: windows line up with the file's frames
    rng = np.random.default_rng(1)
    t = np.arange(hop * 500) / sample_rate  # 5.8 s, whole hops
    swell = 1 + 0.5 * np.sin(2 * np.pi * t / 1.3)
    samples = (swell * (0.3 * np.sin(2 * np.pi * 80 * t) + 0.1 * rng.standard_normal(t.size))).astype(np.float32)
    feeder = Feeder(sample_rate, hop=hop)
    live = {name: [] for name in FEATURE_NAMES}
    for _ in feeder.feed(samples, block=hop):
        for name, value in feeder.variables.snapshot().items():
            live[name].append(value)
    file = analyse(samples, sample_rate, fps=sample_rate / hop)
    last_second = slice(-round(sample_rate / hop), None)
    for name in FEATURE_NAMES:
        # Callback m (from 1) measures the window ending at sample m * hop, centred on frame m - 4.
        published = np.array(live[name][3:])
        reference = getattr(file, name)[: published.size]
        # The typical level is the mean so far rather than over the whole
        # track: the same once most of the track has been heard.
        assert np.allclose(published[last_second], reference[last_second], rtol=0.03), name


def test_the_latency_is_half_a_window_and_a_hop_plus_the_devices():
    audio = AudioIn(48000, LiveVariables(), device_latency_s=0.012)
    assert audio.hop == 480 and audio.latency_s == pytest.approx((2048 + 480) / 48000 + 0.012)
    with pytest.raises(ValueError, match="--audio-in: the device runs at 8000 Hz; the treble band needs at least 16000 Hz"):
        AudioIn(8000, LiveVariables())


def test_a_bad_block_neither_stops_the_stream_nor_spoils_the_features():
    lines = []
    variables = LiveVariables()
    audio = AudioIn(22050, variables, log=lines.append, clock=lambda: 1.0)
    audio.callback(np.full((512, 1), np.nan, np.float32), 512, None, types.SimpleNamespace(input_overflow=True))
    audio.callback(np.zeros((512, 2), np.float32), 512, None, None)
    assert all(np.isfinite(list(variables.snapshot().values())))
    audio.callback(np.zeros((512, 3, 3), np.float32), 512, None, None)  # not audio: logged once, the stream goes on
    audio.callback(np.zeros((512, 3, 3), np.float32), 512, None, None)
    assert lines[0].startswith("audio in: the sound card dropped samples") and lines[1].startswith("audio in: the analysis failed")
    assert len(lines) == 2


class FakeStream:
    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.latency = 0.015
        self.running = False

    def __enter__(self):
        self.running = True
        return self

    def __exit__(self, *exc):
        self.running = False


def fake_sounddevice(streams: list) -> types.ModuleType:
    module = types.ModuleType("sounddevice")
    module.PortAudioError = type("PortAudioError", (Exception,), {})

    def query_devices(device, kind):
        if device not in (None, 3, "USB"):
            raise ValueError(f"No input device matching {device!r}")
        return {"name": "USB Audio", "default_samplerate": 44100.0, "max_input_channels": 2}

    def input_stream(**kwargs):
        streams.append(FakeStream(**kwargs))
        return streams[-1]

    module.query_devices, module.InputStream = query_devices, input_stream
    return module


def test_open_audio_in_runs_the_stream_through_the_callback_and_closes_it(monkeypatch):
    streams, lines = [], []
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice(streams))
    with open_audio_in("3", LiveVariables(), log=lines.append) as audio:
        stream = streams[0]
        assert stream.running and stream.kwargs["callback"] == audio.callback and stream.kwargs["device"] == 3
        assert stream.kwargs["blocksize"] == audio.hop == 441 and audio.device_latency_s == 0.015
    assert not stream.running
    assert lines == ["audio in: USB Audio at 44100 Hz; features are 71 ms late "
                     "(half the 93 ms window, a 10 ms block, the device's 15 ms)"]  # fmt: skip
    with pytest.raises(ValueError, match=r"--audio-in Scarlett: No input device matching 'Scarlett' \(python -m sounddevice lists"):
        with open_audio_in("Scarlett", LiveVariables(), log=lines.append):
            pass


class NoPortAudio(importlib.abc.MetaPathFinder):
    """Makes `import sounddevice` fail as it does where the PortAudio library is missing."""

    def find_spec(self, name, path, target=None):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return None


def test_missing_sounddevice_or_portaudio_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)
    with pytest.raises(ValueError, match=r"--audio-in needs sounddevice: pip install 'dreamreel\[live\]'"):
        with open_audio_in("", LiveVariables()):
            pass
    monkeypatch.delitem(sys.modules, "sounddevice")
    monkeypatch.setattr(sys, "meta_path", [NoPortAudio(), *sys.meta_path])
    with pytest.raises(ValueError, match="--audio-in needs the PortAudio library.*apt-get install libportaudio2"):
        with open_audio_in("", LiveVariables()):
            pass
