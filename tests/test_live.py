"""live: the session's loop on a looped clip and in-memory sinks, its controls, its robustness, and its I/O.

Every test runs a real :class:`LiveSession` (threads and all) for a second
or two with the tiny random model on small frames, from a looped clip
(:class:`LoopedFile`) or frames a test hands over (:class:`FrameFeed`), into
a :class:`MemorySink`. Where what is checked depends on when a dream lands,
the test lets each dream through itself (:func:`gated_dreams`). The controls
come in as they do in a show: OSC over UDP on localhost, MIDI messages
through the handler a port calls, keys posted to the window. They check what
the output is, never how fast it is (benchmarks/live.py measures that). The
window runs under Xvfb and NDI over localhost where those exist, and are
skipped elsewhere.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import wave
from dataclasses import replace
from fractions import Fraction

import mido
import numpy as np
import pytest
from pythonosc.udp_client import SimpleUDPClient

from conftest import textured_frame
from dreamreel.cli.main import main
from dreamreel.pipeline import live as live_module
from dreamreel.pipeline.controls import Change, ControlSettings, LiveVariables
from dreamreel.pipeline.dream import ComputeSettings, DreamSettings
from dreamreel.pipeline.encode import EncodeSettings, FrameWriter
from dreamreel.pipeline.ffmpeg import ffmpeg_exe
from dreamreel.pipeline.live import LiveSession, LiveSettings, load_look, run_with_controls
from dreamreel.pipeline.sinks import FrameInfo, MemorySink, RecordSink, Sink
from dreamreel.pipeline.sources import FrameFeed, LoopedFile, Source

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = ComputeSettings(device="cpu", precision="fp32")
# The tiny model, one octave, a strong step: a visible residual in a few milliseconds.
TINY_DREAM = DreamSettings(objective="mid", octaves=1, iterations=3, step=0.04, jitter=0, seed=1)


def tiny_look(**live) -> live_module.LiveLook:
    look = load_look("live-camera")
    return replace(look, dream=TINY_DREAM, video=replace(look.video, iterations_next=2), live=LiveSettings(**{"crossfade": 0, **live}))


def looks_named(looks: dict[str, live_module.LiveLook]):
    """A session's ``look_for`` over these looks: an unknown name is a ValueError, as for presets."""

    def look_for(name: str) -> live_module.LiveLook:
        if name not in looks:
            raise ValueError(f"unknown preset {name!r}")
        return looks[name]

    return look_for


class Gate:
    """Lets the session's dreams through one at a time (:meth:`let`), or all once :meth:`open`."""

    def __init__(self):
        self._tokens = threading.Semaphore(0)
        self._open = threading.Event()

    def let(self, count: int = 1) -> None:
        for _ in range(count):
            self._tokens.release()

    def open(self) -> None:
        self._open.set()

    def wait(self) -> None:
        while not self._open.is_set() and not self._tokens.acquire(timeout=0.02):
            pass


@pytest.fixture
def gated_dreams(monkeypatch, tiny_model, use_model):
    """The tiny model, each dream waiting for the test's ``gate.let()``: the test decides when dreams land."""
    use_model(tiny_model)
    from dreamreel.pipeline import dream as dream_module

    gate = Gate()
    dream_call = dream_module.Dreamer.__call__

    def gated(self, images, **kw):
        gate.wait()
        return dream_call(self, images, **kw)

    monkeypatch.setattr(dream_module.Dreamer, "__call__", gated)
    yield gate
    gate.open()


@pytest.fixture(scope="module")
def pan_clip(tmp_path_factory, make_panning_clip):
    """48 frames, 128x96, 30000/1001 fps, the view panning 2 px right and 2 down a frame."""
    return make_panning_clip(tmp_path_factory.mktemp("live") / "pan.mp4", frames=48, size=(128, 96), shift_px=(2, 2))


def run_for(session: LiveSession, seconds: float, during=None, controls: ControlSettings | None = None):
    """Run ``session`` for ``seconds`` in a thread; ``during(session)`` runs meanwhile in this one.

    With ``controls``, as ``dreamreel live`` runs it: :func:`run_with_controls`, the controls opened around it.
    """
    result = {}

    def show():
        ran = session.run(duration_s=seconds) if controls is None else run_with_controls(session, controls, duration_s=seconds)
        result["r"] = ran

    thread = threading.Thread(target=show)
    thread.start()
    try:
        if during is not None:
            during(session)
    except BaseException:
        session.stop()
        raise
    finally:
        thread.join(timeout=60)
    assert not thread.is_alive(), "the session did not end"
    return result["r"]


def wait_until(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def feed_still(feed: FrameFeed, frame: np.ndarray, stop: threading.Event) -> threading.Thread:
    """Put ``frame`` 30 times a second until ``stop``: a camera looking at a still picture."""

    def put():
        while not stop.is_set():
            feed.put(frame.copy())
            time.sleep(1 / 30)

    thread = threading.Thread(target=put, daemon=True)
    thread.start()
    return thread


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def decoded_audio(path, rate: int = 48000) -> np.ndarray:
    """The sound of a media file as mono float samples at ``rate``."""
    raw = subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(path), "-map", "0:a", "-f", "s16le", "-ac", "1",
                          "-ar", str(rate), "-"], capture_output=True, check=True).stdout  # fmt: skip
    return np.frombuffer(raw, np.int16).astype(float) / 32768


def clicks_at(samples: np.ndarray, rate: int = 48000) -> list[float]:
    """Seconds where a click starts (a jump above half the loudest sample, 50 ms after the last one)."""
    loud = np.flatnonzero(np.abs(samples) > 0.5 * np.abs(samples).max())
    starts = [loud[0]] + [b for a, b in zip(loud, loud[1:]) if b - a > 0.05 * rate]
    return [start / rate for start in starts]


# --- the loop -------------------------------------------------------------------------


def test_a_looped_clip_drives_the_loop_in_order(pan_clip, tiny_model, use_model):
    use_model(tiny_model)
    sink = MemorySink()
    result = run_for(LiveSession(tiny_look(), CPU, LoopedFile(pan_clip), [sink], quiet=True), 3.0)
    frames = list(sink.frames)
    indices = [info.source_index for _, info in frames]
    assert result.frames == len(frames) > 10
    assert all(b >= a for a, b in zip(indices, indices[1:])), "source frames out of order"
    assert max(indices) >= 48, "the clip did not loop"
    # a source frame late by two frame times is not waited for: the output holds the last frame meanwhile
    for (a, info_a), (b, info_b) in zip(frames, frames[1:]):
        if info_b.source_index == info_a.source_index:
            np.testing.assert_array_equal(a, b)
    assert result.dropped == indices[-1] + 1 - len(set(indices))  # source frames are numbered from 0
    assert result.dreams >= 1 and any(info.dream_index >= 0 for _, info in frames)


def test_frames_between_dream_updates_show_the_dream_warped_not_repeated(gated_dreams):
    """One dream lands on frame 0; frames 1-5 of a pan come while the next is held back: each shows dream 0 moved with the picture."""
    gate = gated_dreams
    big = textured_frame(96 + 12, 128 + 12, 3)
    pan = [np.ascontiguousarray(big[2 * k : 2 * k + 96, 2 * k : 2 * k + 128]) for k in range(6)]  # 2 px right and down a frame
    feed, sink = FrameFeed(fps=30), MemorySink()

    def host(session):
        feed.put(pan[0])
        gate.let(1)
        wait_until(lambda: session.dreams == 1)
        for k in range(1, 6):
            feed.put(pan[k])
            wait_until(lambda: sink.frames and sink.frames[-1][1].source_index == k)
        session.stop()
        gate.open()

    run_for(LiveSession(tiny_look(), CPU, feed, [sink], quiet=True), 60, during=host)
    shown = {info.source_index: (out, info) for out, info in reversed(sink.frames)}  # the first output of each source frame
    assert [shown[k][1].dream_index for k in range(1, 6)] == [0] * 5
    checked = 0
    for k in range(1, 5):
        (out_a, info_a), (out_b, info_b) = shown[k], shown[k + 1]
        res_a = out_a.astype(float) - info_a.source
        res_b = out_b.astype(float) - info_b.source
        # the residual moves with the picture, 2 px left and 2 up a frame: res_b shifted back matches res_a
        a_part, b_moved, b_in_place = res_a[16:80, 16:112], res_b[14:78, 14:110], res_b[16:80, 16:112]
        both = (np.abs(a_part).max(-1) > 2) & (np.abs(b_moved).max(-1) > 2)  # where the flow check kept the dream on both
        assert both.mean() > 0.3, "little of the dream is on the output"
        size = np.abs(a_part[both]).mean()
        moved = np.abs(b_moved[both] - a_part[both]).mean()
        in_place = np.abs(b_in_place[both] - a_part[both]).mean()
        assert moved < 0.5 * size and moved < 0.8 * in_place, (k, moved, in_place, size)
        assert np.abs(out_b.astype(int) - out_a).mean() > 3, "an output frame repeats the one before"
        checked += 1
    assert checked == 4


def test_the_session_feeds_on_frames_a_host_program_hands_over(tiny_model, use_model):
    use_model(tiny_model)
    feed, sink = FrameFeed(fps=30), MemorySink(keep=4)
    frames = [textured_frame(48, 64, seed) for seed in range(3)]

    def host(session):
        for frame in frames * 10:
            feed.put(frame)
            time.sleep(1 / 30)

    result = run_for(LiveSession(tiny_look(mix=0.0), CPU, feed, [sink], quiet=True), 1.5, during=host)
    assert result.frames >= 10
    for out, info in sink.frames:  # mix 0: the source alone
        np.testing.assert_array_equal(out, info.source)


# --- controls -------------------------------------------------------------------------


def test_changes_take_effect_at_the_next_frame_with_one_line_each_and_bad_ones_are_refused(pan_clip, tiny_model, use_model):
    use_model(tiny_model)
    lines, refused = [], {}
    variables = LiveVariables(cc1=0.5)

    def control(session):
        wait_until(lambda: session.status().get("settings"))
        for change in [
            Change("step", 0.03, "test"),
            Change("mix", "clamp(cc1*2, 0, 1)", "osc /dreamreel/mix"),
            Change("objective", "mid + 0.5*high", "test"),
        ]:
            threading.Thread(target=session.apply, args=(change,)).start()  # from any thread
        for change in [
            Change("temporal", "1 +", "test"),  # malformed
            Change("octaves", 40, "test"),  # out of range
            Change("mix", "2*cc1 + 0.5", "test"),  # out of range now
            Change("mix", "0.5 + fader", "test"),  # no such variable (yet)
            Change("zoom", 1.05, "test"),  # no live zoom here
            Change("preset", "no-such-preset", "test"),
            Change("tap", 1, "test"),
        ]:
            with pytest.raises(ValueError) as caught:
                session.apply(change)
            refused[change.setting, str(change.value)] = str(caught.value)
        wait_until(lambda: session.status()["settings"]["step"] == 0.03 and session.status()["objective"] == "mid + 0.5*high")

    session = LiveSession(tiny_look(), CPU, LoopedFile(pan_clip), [MemorySink(keep=1)], variables=variables, log=lines.append)
    run_for(session, 2.0, during=control)
    status = session.status()
    assert status["settings"]["mix"] == 1.0 and status["settings"]["octaves"] == 1  # cc1 = 0.5: clamp(1.0)
    assert sorted(lines) == sorted([
        "live: step = 0.03 (test)", "live: mix = clamp(cc1*2, 0, 1) (osc /dreamreel/mix)", "live: objective = mid + 0.5*high (test)",
    ]), lines  # fmt: skip
    assert all(len(line.splitlines()) == 1 for line in refused.values()), refused
    assert refused["temporal", "1 +"].startswith("temporal: column")
    assert refused["octaves", "40"] == "octaves: 40 is out of range: expected a value from 1 to 12"
    assert refused["mix", "2*cc1 + 0.5"] == "mix: 2*cc1 + 0.5 is 1.5 now, out of range: expected a value from 0 to 1"
    assert "unknown name 'fader'; the live variables here are t, s, b, cc1" in refused["mix", "0.5 + fader"]
    assert refused["zoom", "1.05"].startswith("zoom: moves the picture of live zoom only")
    assert "unknown preset 'no-such-preset'" in refused["preset", "no-such-preset"]
    assert refused["tap", "1"] == "tap takes no value, got 1"


def test_expressions_read_live_variables_and_taps_land_at_their_own_time(pan_clip, tiny_model, use_model):
    use_model(tiny_model)
    variables, lines = LiveVariables(fader=0.0), []

    def control(session):
        session.apply(Change("mix", "clamp(0.25 + fader, 0, 1)", "test"))
        wait_until(lambda: session.status().get("settings", {}).get("mix") == 0.25)
        variables.set(fader=0.5)
        wait_until(lambda: session.status()["settings"]["mix"] == 0.75)
        # two taps half a second apart, reaching the session at once: the tempo is 120 BPM from their own times
        now = time.monotonic()
        session.apply(Change("tap", None, "key t", now - 1.0))
        session.apply(Change("tap", None, "key t", now - 0.5))
        wait_until(lambda: session.status()["bpm"] is not None)

    session = LiveSession(tiny_look(), CPU, LoopedFile(pan_clip), [MemorySink(keep=1)], variables=variables, log=lines.append)
    run_for(session, 2.0, during=control)
    status = session.status()
    assert status["bpm"] == pytest.approx(120.0)
    assert lines[-2:] == ["live: tap (key t)", "live: tap (key t)"]


def test_freeze_holds_the_picture_and_unfreeze_lets_it_move(pan_clip, tiny_model, use_model):
    use_model(tiny_model)
    sink = MemorySink()
    marks = {}

    def control(session):
        wait_until(lambda: sink.written >= 5)
        session.apply(Change("freeze", True, "key space"))
        wait_until(lambda: session.status().get("frozen"))
        marks["frozen_from"] = sink.written + 1
        time.sleep(0.5)
        marks["frozen_to"] = sink.written
        session.apply(Change("freeze", None, "key space"))  # None toggles
        wait_until(lambda: not session.status()["frozen"])
        marks["moving_from"] = sink.written + 1

    run_for(LiveSession(tiny_look(), CPU, LoopedFile(pan_clip), [sink], quiet=True), 2.0, during=control)
    frames = [out for out, _ in sink.frames]
    held = frames[marks["frozen_from"] : marks["frozen_to"]]
    assert len(held) >= 5 and all(np.array_equal(f, held[0]) for f in held)
    after = frames[marks["moving_from"] :]
    assert any(not np.array_equal(a, b) for a, b in zip(after, after[1:]))


def test_live_zoom_moves_the_dream_on_every_output_frame(tiny_model, use_model):
    use_model(tiny_model)
    from dreamreel.pipeline.dream import to_tensor
    from dreamreel.pipeline.zoom import affine_step

    look = load_look("live-zoom", {"zoom": {"zoom": 1.05, "angle": 0.0}, "live": {"fps": 20.0}})
    look = replace(look, dream=replace(TINY_DREAM, step=0.005))  # a light dream: the motion shows
    sink = MemorySink()
    run_for(LiveSession(look, CPU, None, [sink], size=(64, 64), quiet=True), 2.0)
    frames = [out for out, _ in sink.frames][5:]
    assert len(frames) >= 10
    candidates = [1.0, 1.025, 1.05, 1.075, 1.1]
    estimates = []
    for a, b in zip(frames, frames[1:]):
        errors = [float((affine_step(to_tensor(a), zoom=z, angle_deg=0, translate_x=0, translate_y=0) - to_tensor(b))
                        [..., 12:-12, 12:-12].abs().mean()) for z in candidates]  # fmt: skip
        estimates.append(candidates[int(np.argmin(errors))])
    assert estimates.count(1.05) >= 0.8 * len(estimates), estimates  # the others: a new dream landed


# --- the controls wired to a running session ------------------------------------------------


def test_osc_over_udp_changes_a_setting_and_switches_the_preset_with_a_crossfade(gated_dreams):
    """Real OSC on localhost: /dreamreel/step reaches the session's settings, /dreamreel/preset fades the new look's
    first dream in over its crossfade frames (the dreams held back, the fade's weights can be read off the frames)."""
    gate = gated_dreams
    looks = {
        name: replace(tiny_look(crossfade=8), name=name, dream=replace(TINY_DREAM, objective=objective, step=0.06))
        for name, objective in (("a", "low"), ("b", "high"))
    }
    feed, sink, stop_feed, lines = FrameFeed(fps=30), MemorySink(), threading.Event(), []
    session = LiveSession(looks["a"], CPU, feed, [sink], look_for=looks_named(looks), quiet=True, log=lines.append)

    def show(session):
        feed_still(feed, textured_frame(64, 64, 4), stop_feed)
        wait_until(lambda: any(line.startswith("osc: listening on 127.0.0.1:") for line in lines))
        client = SimpleUDPClient("127.0.0.1", int(lines[0].rsplit(":", 1)[1]))
        gate.let(1)
        wait_until(lambda: session.dreams == 1)
        client.send_message("/dreamreel/step", 0.03)
        wait_until(lambda: session.status()["settings"]["step"] == pytest.approx(0.03))  # a float32 on the wire
        client.send_message("/dreamreel/preset", "b")
        wait_until(lambda: session.status()["preset"] == "b")
        gate.let(2)  # the dream under way when the preset changed (look a), then the first of look b
        wait_until(lambda: session.dreams == 3)
        shown = sink.written
        wait_until(lambda: sink.written > shown + 20)
        marks["new"] = sink.frames[-1][1].dream_index  # look b's dream
        session.stop()
        gate.open()
        stop_feed.set()

    marks = {}
    run_for(session, 60, during=show, controls=ControlSettings(osc_port=0))
    frames = list(sink.frames)
    new_index = marks["new"]
    first = next(k for k, (_, info) in enumerate(frames) if info.dream_index == new_index)
    old = frames[first - 1][0].astype(float)  # look a's last dream on the still picture
    fading = [out.astype(float) for out, info in frames[first:] if info.dream_index == new_index]
    fading = [b for a, b in zip([None, *fading], fading) if a is None or not np.array_equal(a, b)]  # held frames out
    new = fading[-1]
    weights = [float(((out - old) * (new - old)).sum() / ((new - old) ** 2).sum()) for out in fading]
    assert weights == pytest.approx([0, 1 / 8, 2 / 8, 3 / 8, 4 / 8, 5 / 8, 6 / 8, 7 / 8, 1], abs=0.03), weights
    assert np.abs(new - old).mean() > 3  # the two looks differ


@pytest.fixture
def midi_port(monkeypatch):
    """A MIDI input port named "nanoKONTROL2" (mido's calls replaced): ``port["send"](message)`` is the port delivering one."""
    port = {}

    class Opened:
        def close(self):
            port["closed"] = True

    def open_input(name, callback):
        port.update(name=name, send=callback)
        return Opened()

    monkeypatch.setattr(mido, "get_input_names", lambda: ["nanoKONTROL2:nanoKONTROL2 _ CTRL 20:0"])
    monkeypatch.setattr(mido, "open_input", open_input)
    return port


def test_midi_through_the_ports_handler_reaches_the_session(midi_port, pan_clip, tiny_model, use_model):
    """The nanoKONTROL2 mapping on a camera-like source: fader 5 sets mix, STOP freezes; the mapping's zoom (live zoom only) is
    logged and skipped at the start, a fader mapped to angle at run time is refused with one line."""
    use_model(tiny_model)
    lines, sink = [], MemorySink()
    session = LiveSession(tiny_look(), CPU, LoopedFile(pan_clip), [sink], log=lines.append)

    def play(session):
        wait_until(lambda: session.status().get("settings"))
        midi_port["send"](mido.Message("control_change", control=4, value=0))  # fader 5: mix 0
        wait_until(lambda: session.status()["settings"]["mix"] == 0.0)
        marks = sink.written + 1
        wait_until(lambda: sink.written > marks + 3)
        assert all(np.array_equal(out, info.source) for out, info in list(sink.frames)[marks:])  # the source alone
        midi_port["send"](mido.Message("control_change", control=5, value=127))  # fader 6: angle
        midi_port["send"](mido.Message("control_change", control=42, value=127))  # STOP: freeze
        wait_until(lambda: session.status()["frozen"])
        session.stop()

    run_for(session, 60, during=play, controls=ControlSettings(controls="nanokontrol2", midi="nano"))
    assert "mapping nanokontrol2 [settings]: zoom: moves the picture of live zoom only (dreamreel live --zoom, no source); ignored" in lines
    assert "live: mix = 0 (midi cc 4)" in lines and "live: freeze = on (midi cc 42)" in lines
    assert "midi cc 5: angle: moves the picture of live zoom only (dreamreel live --zoom, no source); ignored" in lines
    assert midi_port["closed"]


def test_midi_clock_gives_the_beat_a_live_expression_reads(midi_port, tiny_model, use_model):
    use_model(tiny_model)
    feed, stop, pulses = FrameFeed(fps=30), threading.Event(), []
    session = LiveSession(tiny_look(), CPU, feed, [MemorySink(keep=1)], quiet=True, log=lambda line: None)
    seen = {}

    def clock():  # a drum machine sending MIDI clock at 120 BPM: 24 pulses a beat
        midi_port["send"](mido.Message("start"))
        start = time.monotonic()
        while not stop.is_set():
            midi_port["send"](mido.Message("clock"))
            pulses.append(time.monotonic())
            time.sleep(max(0.0, start + len(pulses) / 48 - time.monotonic()))

    def play(session):
        feed_still(feed, textured_frame(48, 64, 2), stop)
        wait_until(lambda: "send" in midi_port)
        session.apply(Change("mix", "clamp(b/16, 0, 1)", "test"))
        threading.Thread(target=clock, daemon=True).start()
        wait_until(lambda: session.status().get("beat", 0) > 3)
        seen["status"], seen["pulses"] = session.status(), len(pulses)
        stop.set()
        session.stop()

    run_for(session, 60, during=play, controls=ControlSettings(midi="nano"))
    status = seen["status"]
    assert status["settings"]["mix"] == pytest.approx(status["beat"] / 16)  # the expression read b of that frame
    assert 3 < status["beat"] <= seen["pulses"] / 24  # b counts the pulses: it never runs ahead of the next one
    assert 60 < status["bpm"] < 240


def test_audio_in_feeds_the_sessions_variables_and_its_beat(monkeypatch, tiny_model, use_model):
    """A sound card (sounddevice replaced) hears clicks at 120 BPM over a 60 Hz hum: bass reaches an expression, the beat the tempo."""
    from test_audio_in import click_track, fake_sounddevice

    streams = []
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice(streams))
    use_model(tiny_model)
    feed, stop = FrameFeed(fps=30), threading.Event()
    session = LiveSession(tiny_look(), CPU, feed, [MemorySink(keep=1)], quiet=True, log=lambda line: None)
    seen = {}

    def play(session):
        feed_still(feed, textured_frame(48, 64, 5), stop)
        wait_until(lambda: streams and streams[0].running)
        session.apply(Change("mix", "clamp(bass/4, 0, 1)", "test"))
        wait_until(lambda: session.status().get("settings", {}).get("mix") == 0.0)  # silence so far
        rate = 44100  # the fake card's
        clicks, _ = click_track(120, 10.0, rate)
        sound = clicks + 0.3 * np.sin(2 * np.pi * 60 * np.arange(clicks.size) / rate).astype(np.float32)
        callback = streams[0].kwargs["callback"]
        for start in range(0, sound.size, 441):  # 10 ms blocks, as fast as the analysis takes them
            callback(sound[start : start + 441, None], 441, None, None)
        wait_until(lambda: session.status()["bpm"] is not None and session.status()["settings"]["mix"] > 0)
        seen.update(session.status())
        stop.set()
        session.stop()

    run_for(session, 60, during=play, controls=ControlSettings(audio_in=""))
    assert seen["bpm"] == pytest.approx(120, abs=2) and 0 < seen["settings"]["mix"] <= 1


# --- robustness -----------------------------------------------------------------------


class Stalling(Source):
    """Delivers frames, then nothing for ``silent_s`` once, then frames again; counts its openings."""

    name = "stalling test source"

    def __init__(self, silent_s: float):
        self.fps, self.opened, self.count, self.silent_s = 30.0, 0, 0, silent_s
        self.silent_until = None

    def open(self):
        self.opened += 1

    def read(self):
        time.sleep(1 / 30)
        self.count += 1
        if self.count == 15:
            self.silent_until = time.monotonic() + self.silent_s
        if self.silent_until and time.monotonic() < self.silent_until:
            return None
        return textured_frame(48, 64, self.count % 7)


def test_a_source_that_stops_delivering_holds_the_last_frame_with_a_message_and_is_reopened(tiny_model, use_model, monkeypatch):
    use_model(tiny_model)
    monkeypatch.setattr(live_module, "STALL_S", 0.3)
    monkeypatch.setattr(live_module, "RECONNECT_S", 0.3)
    source, sink, lines = Stalling(silent_s=1.5), MemorySink(), []
    run_for(LiveSession(tiny_look(), CPU, source, [sink], log=lines.append), 3.5)
    stalled = [(out, info) for out, info in sink.frames if info.message]
    assert len(stalled) >= 5 and "holding the last frame" in stalled[0][1].message
    assert all(np.array_equal(out, stalled[0][0]) for out, _ in stalled)
    assert source.opened >= 2 and any("reconnecting" in line for line in lines)
    assert not list(sink.frames)[-1][1].message  # frames came back


def test_a_sink_that_fails_is_closed_with_one_line_and_the_others_go_on(pan_clip, tiny_model, use_model):
    use_model(tiny_model)

    class Failing(Sink):
        name = "failing test sink"
        writes = closed = 0

        def write(self, frame, info):
            self.writes += 1
            if self.writes == 5:
                raise OSError("the cable came out")

        def close(self):
            self.closed += 1

    failing, sink, lines = Failing(), MemorySink(), []
    result = run_for(LiveSession(tiny_look(), CPU, LoopedFile(pan_clip), [failing, sink], log=lines.append, quiet=True), 1.5)
    assert failing.writes == 5 and failing.closed == 1
    assert sink.written == result.frames > 10
    assert lines == ["live: failing test sink failed (the cable came out); closed it, the other outputs go on"]


def test_a_source_that_never_delivers_is_refused_at_start(tiny_model, use_model, monkeypatch):
    use_model(tiny_model)
    monkeypatch.setattr(live_module, "STALL_S", 0.1)

    class Silent(Source):
        name = "silent test source"
        closed = False

        def read(self):
            time.sleep(0.05)

        def close(self):
            self.closed = True

    source, sink = Silent(), MemorySink()
    with pytest.raises(ValueError, match="silent test source: opened, but no frame came"):
        LiveSession(tiny_look(), CPU, source, [sink]).run(duration_s=5)
    assert source.closed and sink.written == 0


def test_ctrl_c_ends_the_session_cleanly_and_finishes_the_recording(pan_clip, tiny_model, use_model, tmp_path):
    from dreamreel.pipeline.decode import read_frames

    use_model(tiny_model)
    out, lines, sink = tmp_path / "set.mp4", [], MemorySink(keep=1)

    def press_ctrl_c():
        sink.wait_for(10, timeout_s=60)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    session = LiveSession(tiny_look(), CPU, LoopedFile(pan_clip), [sink, RecordSink(out)], log=lines.append, quiet=True)
    result = session.run(duration_s=120)  # here, in the main thread, where Ctrl-C arrives
    assert lines == ["\nlive: stopping (Ctrl-C again to stop at once)"] and result.seconds < 60
    assert len(list(read_frames(out))) >= 10


# --- the command line -------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--record", "/no/such/folder/set.mp4"], "--record /no/such/folder/set.mp4: "),
        (["--record", "set.gif"], "--record set.gif: expected a video file"),
        ([], "no output: add --window"),
        (["--keys", "live-zoom,nope", "--record", "x.mp4"], "--keys: unknown preset 'nope'"),
        (["--zoom", "1.1", "--record", "x.mp4"], "make a live zoom: drop the source"),
        (["--mix", "0.5 + 0.5*cc1", "--record", "x.mp4"], "mix: column 11: 'cc1' has a value only with --midi"),
        (["--controls", "bad-setting.toml", "--record", "x.mp4"], "bad-setting.toml: [settings] stpe: unknown setting 'stpe' (did you"),
        (["--controls", "bad-range.toml", "--midi", "--record", "x.mp4"], "bad-range.toml: [midi.cc] 7: range = [0, 3] is out of bounds"),
        (["--controls", "touchdesigner", "--record", "x.mp4"], "[osc] maps OSC addresses but OSC is off: add --osc-port PORT"),
        (["--learn", "--record", "x.mp4"], "--learn shows incoming MIDI and OSC messages: add --midi or --osc-port"),
    ],
)
def test_cli_refuses_bad_outputs_and_controls_at_start_with_one_line_and_exit_2(argv, message, pan_clip, tmp_path, monkeypatch,
                                                                                 capsys):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad-setting.toml").write_text("[settings]\nstpe = 0.02\n")
    (tmp_path / "bad-range.toml").write_text('[midi.cc]\n7 = { setting = "step", range = [0, 3] }\n')
    assert main(["live", "--input", str(pan_clip), *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "x.mp4").exists()


def test_cli_refuses_an_osc_port_in_use_with_one_line_and_exit_2(pan_clip, tmp_path, capsys):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        assert main(["live", "--input", str(pan_clip), "--record", str(tmp_path / "x.mp4"), "--osc-port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"dreamreel: error: --osc-port {port}: UDP port {port} on 127.0.0.1 is already in use; choose another with --osc-port"


def test_a_missing_io_library_names_the_pip_install(pan_clip, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pygame", None)  # import fails as if not installed
    assert main(["live", "--input", str(pan_clip), "--window"]) == 2
    assert capsys.readouterr().err.strip() == 'dreamreel: error: --window needs the pygame package: pip install "dreamreel[live]"'


def test_learn_alone_prints_incoming_messages_without_a_source_or_an_output(capsys):
    port, codes = free_udp_port(), []
    run = threading.Thread(target=lambda: codes.append(main(["live", "--learn", "--osc-port", str(port), "--duration", "3"])))
    run.start()
    client = SimpleUDPClient("127.0.0.1", port)
    while run.is_alive():  # until the server is up and has printed it: the same control is printed once
        client.send_message("/td/slider1", 0.5)
        time.sleep(0.1)
    out, err = capsys.readouterr()
    assert codes == [0]
    assert out.splitlines() == ['learn: osc /td/slider1 0.5  ->  [osc] "/td/slider1" = { setting = "mix", range = [0.0, 1.0] }']
    assert f"osc: listening on 127.0.0.1:{port}" in err


def test_cli_records_a_looped_clip_for_the_duration_and_finishes_the_file(pan_clip, tmp_path, tiny_model, use_model, capsys):
    from dreamreel.pipeline.decode import probe_video, read_frames

    use_model(tiny_model)
    out = tmp_path / "set.mp4"
    assert main(["live", "--input", str(pan_clip), "--record", str(out), "--duration", "1.5", "--octaves", "1",
                 "--iterations", "2", "--device", "cpu", "--quiet"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "live: " in printed and " frames in " in printed
    info = probe_video(out)
    assert info.fps == pytest.approx(30000 / 1001, rel=1e-3)
    # in real time: as long as the show, whatever the output's rate was
    assert abs(len(list(read_frames(out))) - 1.5 * 30000 / 1001) <= 3


# --- the recording: real time, with the sound -------------------------------------------------

FPS = Fraction(30000, 1001)


class FakeClock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def white_frames(path) -> list[int]:
    from dreamreel.pipeline.decode import read_frames

    return [k for k, frame in enumerate(read_frames(path)) if frame.mean() > 128]


def test_the_recording_keeps_the_shows_timing_repeating_held_frames_and_dropping_rather_than_waiting(tmp_path):
    clock = FakeClock()
    sink = RecordSink(tmp_path / "r.mp4", clock=clock)
    sink.open((64, 48), float(FPS))
    black, white = np.zeros((48, 64, 3), np.uint8), np.full((48, 64, 3), 255, np.uint8)
    for k in [*range(0, 10), *range(15, 30)]:  # frames 10-14 never came: the output stalled on frame 9
        clock.now = 100.0 + k / FPS + 0.004 * (-1) ** k  # handed over with a little jitter
        sink.write(white if k in (9, 20) else black, FrameInfo(index=k, arrival_s=0.0))
    sink.write(white, FrameInfo(index=30, arrival_s=0.0))  # the same moment as frame 29, and frames ahead: left out
    for _ in range(3):
        sink.write(white, FrameInfo(index=31, arrival_s=0.0))
    sink.close()
    assert white_frames(tmp_path / "r.mp4") == [9, 10, 11, 12, 13, 14, 20, 30, 31]  # frame 9 held through 14; 30: the ahead slot
    sink = RecordSink(tmp_path / "d.mp4", clock=clock)
    sink.open((64, 48), 30.0)
    sink._queue.maxsize = 2  # an encoder far behind
    for k in range(200):
        clock.now = 200.0 + k / 30
        sink.write(black, FrameInfo(index=k, arrival_s=0.0))
    sink.close()
    assert sink.dropped > 0 and (tmp_path / "d.mp4").exists()


def test_a_recording_of_a_looped_clip_carries_the_clips_sound_looped_with_its_pictures(tmp_path):
    """A 16-frame clip whose sound clicks 0.1 s in; the recording starts on the clip's frame 5 and lasts three loops."""
    rate = 48000
    sound = np.zeros(round(16 / FPS * rate), np.int16)
    sound[round(0.1 * rate) : round(0.1 * rate) + 240] = 20000
    with wave.open(str(tmp_path / "click.wav"), "wb") as wav:
        wav.setnchannels(1), wav.setsampwidth(2), wav.setframerate(rate)
        wav.writeframes(sound.tobytes())
    with FrameWriter(tmp_path / "clip.mp4", fps=FPS, size=(64, 48), audio_source=tmp_path / "click.wav",
                     settings=EncodeSettings(crf=0, codec="libx264", speed="ultrafast")) as writer:  # fmt: skip
        for k in range(16):
            writer.write(np.full((48, 64, 3), 16 * k, np.uint8))
    clip = LoopedFile(tmp_path / "clip.mp4")
    clip.loop_frames = 16  # as once its first pass has been read
    clock = FakeClock()
    sink = RecordSink(tmp_path / "r.mp4", clip=clip, clock=clock)
    sink.open((64, 48), float(FPS))
    for k in range(48):
        clock.now = 100.0 + k / FPS
        sink.write(np.zeros((48, 64, 3), np.uint8), FrameInfo(index=k, arrival_s=0.0, source_index=5 + k))
    sink.close()
    # clip time (5 + k) / fps at recording time k / fps: the click (clip time 0.1 s) at 0.1 + (16m - 5) / fps
    expected = [0.1 + (16 * m - 5) / FPS for m in (1, 2, 3)]
    assert clicks_at(decoded_audio(tmp_path / "r.mp4")) == pytest.approx(expected, abs=0.01)


def test_a_recording_with_audio_in_carries_the_sound_in_the_room_in_step_with_the_frames(tmp_path):
    """The sound card's blocks come with their times, mostly steady; one comes 0.2 s late after samples were lost,
    one 0.1 s early (its clock ran ahead): a click at 0.5 s and one at 1.3 s land under the white frames shown then."""

    class SoundCard:  # the AudioIn interface the recording uses
        sample_rate = 48000

        def add_listener(self, listener):
            self.listener = listener

        def remove_listener(self, listener):
            self.listener = None

    rate, card, clock = 48000, SoundCard(), FakeClock()
    sink = RecordSink(tmp_path / "r.mp4", audio_in=card, clock=clock)
    sink.open((64, 48), 30.0)
    block, heard = 480, 99.9  # 10 ms blocks; the stream started before the recording
    frames = [100.0 + k / 30 for k in range(60)]
    slips = {100.8: 0.2, 101.1: -0.1}  # the card lost 0.2 s of samples, and later ran 0.1 s ahead
    while heard < 102.0:
        while frames and frames[0] <= heard:
            clock.now = frames.pop(0)
            k = round((clock.now - 100.0) * 30)
            sink.write(np.full((48, 64, 3), 255 if k in (15, 39) else 0, np.uint8), FrameInfo(index=k, arrival_s=0.0))
        samples = np.zeros((block, 2), np.float32)
        for click_s in (100.5, 101.3):
            at = round((click_s - heard) * rate)
            if 0 <= at < block:
                samples[at:, :] = 0.8
        if hasattr(card, "listener") and card.listener is not None:
            card.listener(samples, heard)
        heard += block / rate
        for at in [at for at in slips if abs(heard - at) < 0.005]:
            heard += slips.pop(at)
    sink.close()
    assert white_frames(tmp_path / "r.mp4") == [15, 39]
    assert clicks_at(decoded_audio(tmp_path / "r.mp4")) == pytest.approx([0.5, 1.3], abs=0.01)
    assert len(decoded_audio(tmp_path / "r.mp4")) / rate == pytest.approx(60 / 30, abs=0.05)


# --- real devices, where they exist ------------------------------------------------------


@pytest.fixture
def xvfb_display(monkeypatch):
    """A fresh Xvfb display (a free number it picks itself) for the test; skipped where Xvfb or pygame is missing."""
    pytest.importorskip("pygame")
    pytest.importorskip("mss")
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb)")
    server = subprocess.Popen(["Xvfb", "-displayfd", "1", "-screen", "0", "800x600x24", "-nolisten", "tcp"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    display = f":{server.stdout.readline().strip()}"
    monkeypatch.setenv("DISPLAY", display)
    yield display
    server.terminate()
    server.wait()


def test_the_window_shows_the_output_frame_read_back_from_the_screen(xvfb_display, tiny_model, use_model):
    import mss

    from dreamreel.pipeline.sinks import WindowSink

    use_model(tiny_model)
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[:, :32] = (220, 30, 30)  # left red, right blue
    frame[:, 32:] = (30, 30, 220)
    feed, window, grabbed = FrameFeed(fps=20), WindowSink(), {}

    def host(session):
        for _ in range(30):
            feed.put(frame)
            time.sleep(0.05)
        session.apply(Change("osd", False, "test"))
        for _ in range(10):
            feed.put(frame)
            time.sleep(0.05)
        with mss.MSS() as screen:  # the whole screen, through the X server
            grabbed["shot"] = np.asarray(screen.grab(screen.monitors[1]))[:, :, 2::-1]

    run_for(LiveSession(tiny_look(mix=0.0), CPU, feed, [window], quiet=True), 2.5, during=host)
    rows, cols = np.nonzero(grabbed["shot"].max(axis=2) > 0)
    shot = grabbed["shot"][rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]  # the window, on a black screen
    assert shot.shape[:2] == (480, 640)  # 64x48 scaled by 10 to at least 640 wide
    expected = np.repeat(np.repeat(frame, 10, axis=0), 10, axis=1)
    assert np.abs(shot.astype(int) - expected).mean() < 2


def test_keys_in_the_window_freeze_the_output_and_pick_a_preset(xvfb_display, tiny_model, use_model):
    import pygame

    from dreamreel.pipeline.sinks import WindowSink

    use_model(tiny_model)
    feed, sink, lines = FrameFeed(fps=20), MemorySink(), []
    marks = {}

    def host(session):
        frames = (textured_frame(48, 64, seed) for seed in range(10_000))
        while sink.written < 5:
            feed.put(next(frames))
            time.sleep(0.05)
        pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_SPACE))  # as the X server delivers a key
        while not session.status()["frozen"]:
            feed.put(next(frames))
            time.sleep(0.05)
        marks["frozen"] = sink.written + 1
        for _ in range(10):
            feed.put(next(frames))
            time.sleep(0.05)
        marks["two"] = sink.written
        pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_2))
        while session.status()["preset"] != "live-zoom":
            feed.put(next(frames))
            time.sleep(0.05)
        session.stop()

    run_for(LiveSession(tiny_look(), CPU, feed, [WindowSink(), sink], log=lines.append), 60, during=host,
            controls=ControlSettings(keys=("live-camera", "live-zoom")))  # fmt: skip
    held = [out for out, _ in list(sink.frames)[marks["frozen"] : marks["two"]]]
    assert len(held) >= 5 and all(np.array_equal(out, held[0]) for out in held)
    assert "live: freeze = on (key space)" in lines and "live: preset = live-zoom (key 2)" in lines


def test_a_window_then_torchvision_in_one_process_does_not_crash(xvfb_display):
    """SDL showing the window through OpenGL would load Mesa's LLVM, and importing torchvision (triton's LLVM) then crashed."""
    code = (
        "import numpy as np\n"
        "from dreamreel.pipeline.sinks import FrameInfo, WindowSink\n"
        "window = WindowSink()\n"
        "window.open((64, 48), 30.0)\n"
        "window.write(np.zeros((48, 64, 3), np.uint8), FrameInfo(index=0, arrival_s=0.0))\n"
        "import torchvision\n"
        "window.close()\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "SDL_FRAMEBUFFER_ACCELERATION"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_ndi_out_is_received_by_ndi_in(tiny_model, use_model):
    pytest.importorskip("NDIlib")
    from dreamreel.pipeline.sinks import NDISink
    from dreamreel.pipeline.sources import NDISource

    use_model(tiny_model)
    frame = np.full((48, 64, 3), (40, 200, 90), np.uint8)
    feed, received = FrameFeed(fps=20), {}

    def host(session):
        stop = threading.Event()
        threading.Thread(target=lambda: [feed.put(frame) or time.sleep(0.05) for _ in iter(lambda: stop.is_set(), True)]).start()
        try:
            source = NDISource("dreamreel-test-out")
            source.open()
            deadline = time.monotonic() + 10
            while "frame" not in received and time.monotonic() < deadline:
                got = source.read()
                if got is not None:
                    received["frame"] = got
            source.close()
        finally:
            stop.set()
            session.stop()

    run_for(LiveSession(tiny_look(mix=0.0), CPU, feed, [NDISink("dreamreel-test-out")], quiet=True), 30, during=host)
    assert received["frame"].shape == (48, 64, 3)
    assert np.abs(received["frame"].astype(int) - frame).mean() < 6  # NDI's own YUV round trip


def test_virtual_camera_where_v4l2loopback_exists(tiny_model, use_model):
    pytest.importorskip("pyvirtualcam")
    if not os.path.isdir("/sys/module/v4l2loopback"):
        pytest.skip("no v4l2loopback kernel module: no virtual camera on this machine")
    from dreamreel.pipeline.sinks import VirtualCameraSink

    use_model(tiny_model)
    feed = FrameFeed(fps=20)
    camera = VirtualCameraSink()

    def host(session):
        for _ in range(20):
            feed.put(textured_frame(48, 64, 1))
            time.sleep(0.05)

    result = run_for(LiveSession(tiny_look(), CPU, feed, [camera], quiet=True), 1.0, during=host)
    assert result.frames > 5
