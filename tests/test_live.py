"""live: the session's loop on a looped clip and in-memory sinks, its controls, its robustness, and its I/O.

Every test runs a real :class:`LiveSession` (threads and all) for a second
or two with the tiny random model on 64x64 frames, from a looped clip
(:class:`LoopedFile`) or frames a test hands over (:class:`FrameFeed`), into
a :class:`MemorySink`. They check what the output is, never how fast it is
(benchmarks/live.py measures that). The window runs under Xvfb and NDI over
localhost where those exist, and are skipped elsewhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from conftest import make_tiny_model, textured_frame
from dreamreel.cli.main import main
from dreamreel.pipeline import live as live_module
from dreamreel.pipeline.controls import Change, LiveVariables
from dreamreel.pipeline.dream import ComputeSettings, DreamSettings
from dreamreel.pipeline.live import LiveSession, LiveSettings, load_look, parse_live_setting
from dreamreel.pipeline.sinks import FrameInfo, MemorySink, RecordSink, Sink
from dreamreel.pipeline.sources import FrameFeed, LoopedFile, Source

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = ComputeSettings(device="cpu", precision="fp32")
# The tiny model, one octave, a strong step: a visible residual in a few milliseconds.
TINY_DREAM = DreamSettings(objective="mid", octaves=1, iterations=3, step=0.04, jitter=0, seed=1)


def tiny_look(**live) -> live_module.LiveLook:
    look = load_look("live-camera")
    return replace(look, dream=TINY_DREAM, video=replace(look.video, iterations_next=2), live=LiveSettings(**{"crossfade": 0, **live}))


@pytest.fixture
def slow_dreams(monkeypatch, tiny_model, use_model):
    """The tiny model, each dream taking at least 0.1 s: several output frames fall between dreams."""
    use_model(tiny_model)
    from dreamreel.pipeline import dream as dream_module

    dream_call = dream_module.Dreamer.__call__
    pause = {"s": 0.1}

    def paced(self, images, **kw):
        time.sleep(pause["s"])
        return dream_call(self, images, **kw)

    monkeypatch.setattr(dream_module.Dreamer, "__call__", paced)
    return pause


@pytest.fixture(scope="module")
def pan_clip(tmp_path_factory, make_panning_clip):
    """48 frames, 128x96, 30000/1001 fps, the view panning 2 px right and 2 down a frame."""
    return make_panning_clip(tmp_path_factory.mktemp("live") / "pan.mp4", frames=48, size=(128, 96), shift_px=(2, 2))


def run_for(session: LiveSession, seconds: float, during=None):
    """Run ``session`` for ``seconds`` in a thread; ``during(session)`` runs meanwhile in this one."""
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("r", session.run(duration_s=seconds)))
    thread.start()
    if during is not None:
        during(session)
    thread.join(timeout=60)
    assert not thread.is_alive(), "the session did not end"
    return result["r"]


def wait_until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# --- the loop -------------------------------------------------------------------------


def test_a_looped_clip_drives_the_loop_in_order_and_the_dream_is_warped_between_updates(pan_clip, slow_dreams):
    sink = MemorySink()
    result = run_for(LiveSession(tiny_look(), CPU, LoopedFile(pan_clip), [sink], quiet=True), 3.0)
    frames = list(sink.frames)
    indices = [info.source_index for _, info in frames]
    assert result.frames == len(frames) > 20
    assert all(b >= a for a, b in zip(indices, indices[1:])), "source frames out of order"
    # a source frame late by two frame times is not waited for: the output holds the last frame meanwhile
    for (a, info_a), (b, info_b) in zip(frames, frames[1:]):
        if info_b.source_index == info_a.source_index:
            np.testing.assert_array_equal(a, b)
    assert result.dropped == indices[-1] + 1 - len(set(indices))  # source frames are numbered from 0
    assert result.dreams >= 3
    # Between two dream updates each output frame shows the same dream, warped onto its own source frame:
    # the residual moves with the picture (2 px left and 2 up a frame), it is not repeated in place.
    pairs = [
        (a, b) for a, b in zip(frames, frames[1:])
        if a[1].dream_index == b[1].dream_index >= 0 and b[1].source_index == a[1].source_index + 1
        and b[1].source_index // 48 == b[1].dream_index // 48  # a dream of this pass through the loop, not the last
        and b[1].source_index - b[1].dream_index <= 8  # the pan has not carried much of the dream out of the frame
    ]  # fmt: skip
    assert len(pairs) >= 2
    checked = 0
    for (out_a, info_a), (out_b, info_b) in pairs:
        res_a = out_a.astype(float) - info_a.source
        res_b = out_b.astype(float) - info_b.source
        a_part, b_moved, b_in_place = res_a[16:64, 16:96], res_b[14:62, 14:94], res_b[16:64, 16:96]
        # where both frames show the dream (the consistency masks differ a little from frame to frame)
        both = (np.abs(a_part).max(-1) > 2) & (np.abs(b_moved).max(-1) > 2)
        if both.mean() < 0.1:  # the flow check left little of an old dream here: nothing to compare
            continue
        checked += 1
        size = np.abs(a_part[both]).mean()
        moved = np.abs(b_moved[both] - a_part[both]).mean()
        in_place = np.abs(b_in_place[both] - a_part[both]).mean()
        assert moved < 0.5 * size and moved < 0.8 * in_place, (moved, in_place, size)
        assert np.abs(out_b.astype(int) - out_a).mean() > 3, "an output frame repeats the one before"
    assert checked >= 1, "no dream on the output"


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


def test_changes_take_effect_at_the_next_frame_with_one_line_each_and_bad_ones_are_ignored(pan_clip, tiny_model, use_model):
    use_model(tiny_model)
    lines = []
    variables = LiveVariables(cc1=0.5)

    def control(session):
        wait_until(lambda: session.status().get("settings"))
        for change in [
            Change("step", 0.03, "test"),
            Change("mix", "clamp(cc1*2, 0, 1)", "osc /dreamreel/mix"),
            Change("temporal", "1 +", "test"),  # malformed
            Change("octaves", 40, "test"),  # out of range
            Change("zoom", 1.05, "test"),  # no live zoom here
            Change("preset", "no-such-preset", "test"),
            Change("objective", "mid + 0.5*high", "test"),
        ]:
            threading.Thread(target=session.apply, args=(change,)).start()  # from any thread
        wait_until(lambda: session.status()["settings"]["step"] == 0.03 and session.status()["objective"] == "mid + 0.5*high")

    session = LiveSession(tiny_look(), CPU, LoopedFile(pan_clip), [MemorySink(keep=1)], variables=variables, log=lines.append)
    run_for(session, 2.0, during=control)
    status = session.status()
    assert status["settings"]["mix"] == 1.0 and status["settings"]["octaves"] == 1  # cc1 = 0.5: clamp(1.0)
    taken = [line for line in lines if not line.startswith("live: ignored")]
    ignored = [line for line in lines if line.startswith("live: ignored")]
    assert sorted(taken) == sorted([
        "live: step = 0.03 (test)", "live: mix = clamp(cc1*2, 0, 1) (osc /dreamreel/mix)", "live: objective = mid + 0.5*high (test)",
    ]), lines  # fmt: skip
    assert len(ignored) == 4 and all(len(line.splitlines()) == 1 for line in ignored), ignored
    assert any("octaves = 40" in line and "out of range" in line for line in ignored)
    assert any("zoom = 1.05" in line and "live --zoom only" in line for line in ignored)
    assert any("unknown preset 'no-such-preset'" in line for line in ignored)


def test_expressions_read_live_variables_and_the_beat_of_the_tempo(pan_clip, tiny_model, use_model):
    use_model(tiny_model)

    class Tempo:
        taps: list[float] = []

        def tap(self, now_s):
            self.taps.append(now_s)

        def beats(self, now_s):
            return 6.25

    variables, tempo = LiveVariables(), Tempo()

    def control(session):
        session.apply(Change("mix", "clamp(b - floor(b) + fader, 0, 1)", "test"))
        wait_until(lambda: session.status().get("settings", {}).get("mix") == 0.25)  # 'fader' reads 0 until set
        variables.set(fader=0.5)
        wait_until(lambda: session.status()["settings"]["mix"] == 0.75)
        before = time.monotonic()
        session.apply(Change("tap", None, "key t"))
        wait_until(lambda: tempo.taps)
        assert before <= tempo.taps[0] <= time.monotonic()

    lines = []
    session = LiveSession(tiny_look(), CPU, LoopedFile(pan_clip), [MemorySink(keep=1)], variables=variables, tempo=tempo, log=lines.append)
    run_for(session, 2.0, during=control)
    assert sum("'fader' has no value yet" in line for line in lines) == 1, lines


def test_parse_live_setting_takes_names_no_one_has_sent_yet():
    assert parse_live_setting("0.5 + 0.5*cc1 + osc.fader", "mix").variables == {"cc1", "osc.fader"}
    with pytest.raises(ValueError, match="column"):
        parse_live_setting("0.5 +", "mix")


def test_a_preset_switch_fades_over_the_crossfade_frames_instead_of_cutting(tiny_model, use_model):
    """On a still picture only the dream changes: the switch's largest frame-to-frame step is smaller with a crossfade."""
    use_model(tiny_model)
    still = textured_frame(64, 64, 4)

    def largest_step_after_the_switch(crossfade: int) -> float:
        looks = {
            name: replace(tiny_look(crossfade=crossfade), name=name, dream=replace(TINY_DREAM, objective=objective, step=0.06))
            for name, objective in (("a", "low"), ("b", "high"))
        }
        feed, sink, marks = FrameFeed(fps=30), MemorySink(), {}

        def host(session):
            for t in range(75):
                feed.put(still.copy())
                if t == 35:
                    marks["switch"] = sink.written
                    session.apply(Change("preset", "b", "test"))
                time.sleep(1 / 30)
            session.stop()

        run_for(LiveSession(looks["a"], CPU, feed, [sink], look_for=looks.__getitem__, quiet=True), 30, during=host)
        outputs = [out.astype(float) for out, _ in sink.frames][marks["switch"] :]
        return max(np.abs(b - a).mean() for a, b in zip(outputs, outputs[1:]))

    cut, faded = largest_step_after_the_switch(0), largest_step_after_the_switch(12)
    assert faded < 0.5 * cut, (faded, cut)


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


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--record", "/no/such/folder/set.mp4"], "--record /no/such/folder/set.mp4: "),
        (["--record", "set.gif"], "--record set.gif: expected a video file"),
        ([], "no output: add --window"),
        (["--keys", "live-zoom,nope", "--record", "x.mp4"], "unknown preset 'nope'"),
        (["--zoom", "1.1", "--record", "x.mp4"], "make a live zoom: drop the source"),
    ],
)
def test_cli_refuses_bad_outputs_with_one_line_and_exit_2(argv, message, pan_clip, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["live", "--input", str(pan_clip), *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_a_missing_io_library_names_the_pip_install(pan_clip, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pygame", None)  # import fails as if not installed
    assert main(["live", "--input", str(pan_clip), "--window"]) == 2
    assert capsys.readouterr().err.strip() == 'dreamreel: error: --window needs the pygame package: pip install "dreamreel[live]"'


def test_cli_records_a_looped_clip_for_the_duration_and_finishes_the_file(pan_clip, tmp_path, tiny_model, use_model, capsys):
    from dreamreel.pipeline.decode import probe_video, read_frames

    use_model(tiny_model)
    out = tmp_path / "set.mp4"
    assert main(["live", "--input", str(pan_clip), "--record", str(out), "--duration", "1.5", "--octaves", "1",
                 "--iterations", "2", "--device", "cpu", "--quiet"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    frames = int(printed.split("live: ")[1].split(" frames")[0])
    assert frames > 10 and len(list(read_frames(out))) == frames
    assert probe_video(out).fps == pytest.approx(30000 / 1001, rel=1e-3)


def test_the_recording_drops_frames_rather_than_hold_the_output_back(tmp_path):
    sink = RecordSink(tmp_path / "r.mp4")
    sink.open((64, 48), 30.0)
    sink._queue.maxsize = 2  # an encoder far behind
    frame = np.zeros((48, 64, 3), np.uint8)
    for t in range(200):
        sink.write(frame, FrameInfo(index=t, arrival_s=0.0))
    sink.close()
    assert sink.dropped > 0 and (tmp_path / "r.mp4").exists()


# --- real devices, where they exist ------------------------------------------------------


@pytest.fixture
def xvfb_display():
    """A fresh Xvfb display for the test; skipped where Xvfb or pygame is missing."""
    pytest.importorskip("pygame")
    pytest.importorskip("mss")
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb)")
    number = 90 + os.getpid() % 100
    server = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "800x600x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(0.5)
    old = os.environ.get("DISPLAY")
    os.environ["DISPLAY"] = f":{number}"
    yield f":{number}"
    server.terminate()
    server.wait()
    if old is None:
        os.environ.pop("DISPLAY")
    else:
        os.environ["DISPLAY"] = old


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
