"""Live controls: changes, variables, the beat, mapping files, and OSC and MIDI messages turned into changes."""

from __future__ import annotations

import socket
import sys
import threading
import time

import mido
import pytest
from pythonosc.osc_message import OscMessage
from pythonosc.udp_client import SimpleUDPClient

from dreamreel.cli.main import Parser, add_common, add_controls_options, controls_settings, error_line
from dreamreel.pipeline import controls as controls_module
from dreamreel.pipeline.controls import (
    ACTIONS,
    SETTING_BOUNDS,
    Change,
    ControlMap,
    ControlSettings,
    LiveVariables,
    Router,
    Tempo,
    builtin_mappings,
    check_change,
    key_change,
    live_env,
    load_mapping,
    open_controls,
    open_midi,
    parse_live_expression,
    parse_mapping,
)
from dreamreel.pipeline.schedule import parse_schedule


class Recorder:
    """A session's `apply` that keeps what reaches it; `wait` for changes sent from another thread."""

    def __init__(self):
        self.changes: list[Change] = []
        self._arrived = threading.Condition()

    def __call__(self, change: Change) -> None:
        with self._arrived:
            self.changes.append(change)
            self._arrived.notify_all()

    def wait(self, count: int, timeout_s: float = 5.0) -> list[Change]:
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.changes) >= count, timeout=timeout_s)
        return list(self.changes)


class FakeClock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def router(mapping: ControlMap = ControlMap(), **kwargs) -> tuple[Router, Recorder, list[str]]:
    apply, lines = Recorder(), []
    variables = kwargs.pop("variables", LiveVariables())
    return Router(mapping, apply, variables, log=lines.append, **kwargs), apply, lines


# --- changes and variables ------------------------------------------------------------


def test_a_change_names_a_known_setting_or_action():
    assert Change("step", 0.02, "osc /dreamreel/step").value == 0.02
    assert Change("preset", "low-ornaments").setting == "preset"
    with pytest.raises(ValueError, match="unknown live setting 'stpe'"):
        Change("stpe", 0.02)
    assert not set(SETTING_BOUNDS) & set(ACTIONS)


def test_a_change_reads_as_one_log_line():
    assert str(Change("step", 0.02, "osc /dreamreel/step")) == "step = 0.02 (osc /dreamreel/step)"
    assert str(Change("freeze", True, "midi cc 42")) == "freeze = on (midi cc 42)"
    assert str(Change("freeze", None, "key space")) == "freeze (key space)"
    assert str(Change("zoom", "1.01 + 0.04*bass")) == "zoom = 1.01 + 0.04*bass"


def test_variables_hold_finite_numbers_and_snapshots_are_copies():
    variables = LiveVariables(cc1=0.5)
    snap = variables.snapshot()
    variables.set(cc1=1.0, bass=2)
    assert snap == {"cc1": 0.5} and variables.snapshot() == {"cc1": 1.0, "bass": 2.0}
    for bad in (float("nan"), float("inf"), "0.5", True):
        with pytest.raises(ValueError, match="live variable cc2"):
            variables.set(cc2=bad)
    assert "cc2" not in variables.snapshot()


def test_variables_are_safe_to_write_from_many_threads():
    variables = LiveVariables()

    def write(k):
        for i in range(2000):
            variables.set(**{f"v{k}": i})

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert variables.snapshot() == {f"v{k}": 1999.0 for k in range(4)}


def test_values_are_checked_and_put_in_the_sessions_terms():
    names = ("t", "s", "b", "bass")
    assert check_change(Change("step", "0.02"), names).value == 0.02
    assert check_change(Change("iterations", 7.6), names).value == 8
    assert check_change(Change("freeze", 1), names).value is True
    assert check_change(Change("osd", None), names).value is None
    assert check_change(Change("zoom", " 1.01 + 0.04*bass "), names).value == "1.01 + 0.04*bass"
    for change, message in [
        (Change("step", 5), "step: 5 is out of range: expected a value from 0 to 1"),
        (Change("step", "qqq"), "unknown name 'qqq'; the live variables here are t, s, b, bass$"),
        (Change("zoom", "1 + 0.1*cc3"), "unknown name 'cc3'"),
        (Change("step", True), "expected a number or an expression"),
        (Change("freeze", 2), "expected on"),
        (Change("preset", "no-such-look"), "unknown preset 'no-such-look'"),
        (Change("objective", ""), "expected an objective"),
        (Change("tap", 3), "tap takes no value"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_change(change, names)


def test_a_live_expression_is_a_schedule_over_live_variables():
    """zoom = "1.01 + 0.04*bass" live gives what the same text gives in dreamreel zoom."""
    variables = LiveVariables(bass=1.5, cc7=0.25)
    tempo = Tempo()
    tempo.tap(10.0)
    tempo.tap(10.5)  # 120 BPM, a beat at 10.5
    env = live_env(variables, tempo, 10.75, frame=30, seconds=1.0)
    assert env["b"] == pytest.approx(1.5) and env["t"] == 30 and env["s"] == 1.0
    live = parse_live_expression("zoom", "1.01 + 0.04*bass", tuple(env))
    assert live(30, env) == pytest.approx(1.07) == parse_schedule("1.01 + 0.04*bass", setting="zoom")(30, {"bass": 1.5})
    assert parse_live_expression("mix", "cc7 + 0.5*(b - floor(b))", tuple(env))(30, env) == pytest.approx(0.5)
    # No beat yet: b reads 0 rather than failing every frame until someone taps.
    assert live_env(variables, Tempo(), 1.0, frame=0, seconds=0.0)["b"] == 0.0


# --- the beat ------------------------------------------------------------------------------


def test_tap_tempo_sets_the_tempo_and_puts_the_beat_on_the_last_tap():
    tempo = Tempo()
    tempo.tap(10.0)
    assert tempo.beats(10.0) is None  # one tap is no tempo yet
    for t in (10.5, 11.0, 11.5):
        tempo.tap(t)
    assert tempo.bpm(12.0) == pytest.approx(120.0)
    assert tempo.beats(11.5) == pytest.approx(3.0)
    assert tempo.beats(11.75) == pytest.approx(3.5)
    # After a pause one tap re-aligns the beat (here a quarter beat late) and keeps the tempo.
    tempo.tap(20.125)
    assert tempo.beats(20.125) == round(tempo.beats(20.125)) and tempo.bpm(21.0) == pytest.approx(120.0)


def midi_clock_router(**kwargs) -> tuple[Router, Tempo, FakeClock]:
    clock, tempo = FakeClock(), Tempo(**kwargs)
    route, _, _ = router(tempo=tempo, clock=clock)
    return route, tempo, clock


def test_midi_clock_at_120_bpm_gives_b_advancing_two_beats_a_second():
    route, tempo, clock = midi_clock_router()
    route.midi(mido.Message("start"))
    pulse_s = 60 / (120 * 24)
    for k in range(24 * 8):  # 8 beats, 4 s
        clock.now = 100.0 + k * pulse_s
        route.midi(mido.Message("clock"))
        assert tempo.beats(clock.now) == pytest.approx(k / 24)  # Start made the first pulse beat 0
    assert tempo.bpm(clock.now) == pytest.approx(120.0)
    # Between pulses b runs on at the tempo: 2 beats a second.
    assert tempo.beats(clock.now + pulse_s / 2) - tempo.beats(clock.now) == pytest.approx(1 / 48)
    # Stop hands the beat back to the next source (none here).
    route.midi(mido.Message("stop"))
    assert tempo.beats(clock.now) is None


def test_midi_clock_overrides_tap_tempo_while_it_runs_and_song_position_moves_it():
    route, tempo, clock = midi_clock_router()
    tempo.tap(90.0)
    tempo.tap(91.0)  # 60 BPM
    route.midi(mido.Message("songpos", pos=16))  # bar 2 (16 sixteenths = 4 beats)
    route.midi(mido.Message("continue"))
    for k in range(48):
        clock.now = 100.0 + k / 96  # 240 BPM
        route.midi(mido.Message("clock"))
    assert tempo.bpm(clock.now) == pytest.approx(240.0)
    assert tempo.beats(clock.now) == pytest.approx(4 + 47 / 24)
    # The clock goes quiet: the tapped tempo is back.
    assert tempo.bpm(clock.now + 1.0) == pytest.approx(60.0)


def test_the_tracker_is_followed_without_jumps_or_steps_back():
    tempo = Tempo()
    tempo.track(120.0, 10.0, 10.2)
    # A new estimate puts the beats 0.2 beat later: b eases over one beat, never running backwards.
    tempo.track(120.0, 11.1, 12.0)
    samples = [tempo.beats(12.0 + k * 0.01) for k in range(150)]
    assert all(b2 > b1 for b1, b2 in zip(samples, samples[1:]))
    assert samples[0] == pytest.approx(4.0)  # continuous where the estimate arrived
    assert tempo.beats(13.0) % 1 == pytest.approx(0.8)  # the new phase: a beat at 12.6, 13.1, ...


def test_lookahead_reads_the_beat_ahead_of_time():
    tempo, ahead = Tempo(), Tempo(lookahead_s=0.1)
    for t in (10.0, 10.5):
        tempo.tap(t)
        ahead.tap(t)
    assert ahead.beats(11.0) == pytest.approx(tempo.beats(11.1))
    with pytest.raises(ValueError, match="--lookahead 5"):
        Tempo(lookahead_s=5)


# --- the keyboard ------------------------------------------------------------------------


def test_keys_pick_presets_by_number_and_toggle():
    presets = ("video-live", "low-ornaments")
    assert key_change("2", presets) == Change("preset", "low-ornaments", "key 2")
    assert key_change("3", presets) is None  # no third preset
    assert key_change(" ", presets) == Change("freeze", None, "key space")
    assert key_change("F", presets).setting == "fullscreen" and key_change("o", presets).setting == "osd"
    assert key_change("t", presets, now_s=12.5) == Change("tap", None, "key t", 12.5)
    assert key_change("x", presets) is None


# --- MIDI -------------------------------------------------------------------------------------


def nano() -> ControlMap:
    return load_mapping("nanokontrol2")


def test_midi_controls_set_settings_through_their_ranges_and_curves():
    route, apply, lines = router(nano())
    route.midi(mido.Message("control_change", control=0, value=127))  # fader 1: step, exponential
    route.midi(mido.Message("control_change", control=0, value=0))
    route.midi(mido.Message("control_change", control=1, value=64))  # fader 2: iterations 1-20
    route.midi(mido.Message("control_change", control=16, value=127))  # knob 1: jitter 0-64
    assert [(c.setting, c.value, c.source) for c in apply.changes] == [
        ("step", pytest.approx(0.05), "midi cc 0"),
        ("step", pytest.approx(0.002), "midi cc 0"),
        ("iterations", 11, "midi cc 1"),
        ("jitter", 64, "midi cc 16"),
    ]
    route.midi(mido.Message("control_change", control=0, value=int(127 * 0.5)))
    assert apply.changes[-1].value == pytest.approx(0.002 * 25 ** (63 / 127))  # half way is the geometric middle
    # Every control is a variable too, mapped or not.
    route.midi(mido.Message("control_change", control=20, value=127))
    assert route.variables.snapshot()["cc20"] == 1.0 and len(apply.changes) == 5 and not lines


def test_midi_buttons_and_notes_act_on_the_press_only():
    mapping = parse_mapping(
        {"midi": {"note": {"36": {"setting": "preset", "value": "low-ornaments"}, "37": {"setting": "freeze", "channel": 2}}}},
        source="test.toml",
    )
    route, apply, _ = router(mapping)
    route.midi(mido.Message("note_on", note=36, velocity=100))
    route.midi(mido.Message("note_off", note=36))
    route.midi(mido.Message("note_on", note=37, velocity=90, channel=0))  # channel 1: not this mapping's
    route.midi(mido.Message("note_on", note=37, velocity=90, channel=1))
    assert apply.changes == [Change("preset", "low-ornaments", "midi note 36"), Change("freeze", None, "midi note 37")]
    assert route.variables.snapshot()["note37"] == pytest.approx(90 / 127)
    route.midi(mido.Message("note_off", note=37, channel=1))
    assert route.variables.snapshot()["note37"] == 0.0
    route, apply, _ = router(nano())
    route.midi(mido.Message("control_change", control=42, value=127))  # STOP: freeze
    route.midi(mido.Message("control_change", control=42, value=0))
    route.midi(mido.Message("control_change", control=60, value=127))  # MARKER SET: tap
    assert [c.setting for c in apply.changes] == ["freeze", "tap"] and apply.changes[1].time_s is not None


def test_mapped_osc_addresses_take_positions_names_and_presses():
    route, apply, _ = router(load_mapping("touchdesigner"))
    for address, args in [
        ("/td/zoom", (0.5,)),  # a slider from 0 to 1 over the range 0.97-1.05
        ("/td/preset", ("mid-creatures",)),
        ("/td/freeze", (1,)),
        ("/td/freeze", (0,)),  # the button let go
        ("/td/tap", (1.0,)),
        ("/td/tap", (0.0,)),
        ("/td/energy", (3.5,)),
        ("/elsewhere/fader", (0.2,)),  # not mapped, not ours: nothing
    ]:
        route.osc(("127.0.0.1", 5000), address, *args)
    assert [(c.setting, c.value) for c in apply.changes] == [
        ("zoom", pytest.approx(1.01)), ("preset", "mid-creatures"), ("freeze", None), ("tap", None),
    ]  # fmt: skip
    assert route.variables.snapshot() == {"energy": 3.5}


def test_a_midi_port_delivers_through_the_router(monkeypatch):
    """open_midi hands the port the router's handler: what a real port calls is what the tests call."""
    opened = {}

    class FakePort:
        def close(self):
            opened["closed"] = True

    def open_input(name, callback):
        opened.update(name=name, callback=callback)
        return FakePort()

    monkeypatch.setattr(mido, "get_input_names", lambda: ["Midi Through:Midi Through Port-0 14:0", "nanoKONTROL2:nanoKONTROL2 _ CTRL 20:0"])
    monkeypatch.setattr(mido, "open_input", open_input)
    route, apply, _ = router(nano())
    with open_midi(route, "nanokontrol") as name:
        assert name.startswith("nanoKONTROL2") and opened["callback"] == route.midi
        opened["callback"](mido.Message("control_change", control=4, value=127))
    assert apply.changes == [Change("mix", 1.0, "midi cc 4")] and opened["closed"]
    with pytest.raises(ValueError, match="--midi launchpad: no MIDI input port matches it; the ports are: 'Midi Through"):
        with open_midi(route, "launchpad"):
            pass


def test_bad_values_at_run_time_are_one_log_line_each_and_change_nothing():
    clock = FakeClock()
    route, apply, lines = router(ControlMap(osc={"/td/mix": controls_module.Control("mix", range=(0.0, 1.0))}), clock=clock)

    def refuse(change):
        raise ValueError("the session refused it")

    for address, args in [
        ("/dreamreel/step", ("abc",)),
        ("/dreamreel/step", (5.0,)),
        ("/dreamreel/preset", ("no-such-look",)),
        ("/dreamreel/freeze", ("maybe",)),
        ("/dreamreel/nothing", (1,)),
        ("/dreamreel/var/b", (1.0,)),
        ("/dreamreel/var/energy", ("loud",)),
        ("/td/mix", (1.5,)),
        ("/dreamreel/status", ("not a port",)),
    ]:
        clock.now += 1.0
        route.osc(("127.0.0.1", 5000), address, *args)
    assert apply.changes == [] and len(lines) == 9
    assert lines[0].startswith("osc /dreamreel/step: step: column 1: unknown name 'abc'") and lines[0].endswith("; ignored")
    # A fader spilling bad values: one line a second, not one per message.
    for k in range(60):
        clock.now += 1 / 30
        route.osc(("127.0.0.1", 5000), "/td/mix", 2.0 + k)
    assert len(lines) == 9 + 2
    clock.now += 1.0
    route.apply = refuse
    route.osc(("127.0.0.1", 5000), "/dreamreel/step", 0.02)
    route.midi(mido.Message("sysex", data=[1, 2, 3]))  # not a control: ignored without a word
    assert lines[-1] == "osc /dreamreel/step: the session refused it; ignored" and len(lines) == 12


def test_learn_prints_each_control_once_per_move_with_its_mapping_line(capsys):
    clock = FakeClock()
    route, _, _ = router(learn=True, clock=clock)
    for value in range(0, 127, 10):
        route.midi(mido.Message("control_change", control=16, value=value))
    route.osc(("127.0.0.1", 5000), "/td/slider1", 0.5)
    route.osc(("127.0.0.1", 5000), "/td/preset", "low-ornaments")
    clock.now += 2  # the knob rested
    route.midi(mido.Message("control_change", control=16, value=3))
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        'learn: midi cc 16 value 0 channel 1  ->  [midi.cc] 16 = { setting = "mix", range = [0.0, 1.0] }',
        'learn: osc /td/slider1 0.5  ->  [osc] "/td/slider1" = { setting = "mix", range = [0.0, 1.0] }',
        "learn: osc /td/preset 'low-ornaments'  ->  [osc] \"/td/preset\" = { setting = \"preset\" }",
        'learn: midi cc 16 value 3 channel 1  ->  [midi.cc] 16 = { setting = "mix", range = [0.0, 1.0] }',
    ]


# --- OSC over UDP -----------------------------------------------------------------------------


@pytest.fixture
def osc_session():
    """open_controls with OSC on a free localhost port, a recording apply and a fixed status."""
    apply, lines = Recorder(), []
    status = {"preset": "video-live", "objective": "mid", "settings": {"step": 0.01, "zoom": "1 + 0.02*b"},
              "fps": 29.97, "dream rate": 2.5, "latency": 0.08, "frozen": False}  # fmt: skip
    tempo = Tempo()
    settings = ControlSettings(osc_port=0)
    with open_controls(settings, apply, LiveVariables(), tempo, lambda: status, lines.append) as controls:
        client = SimpleUDPClient(*controls.osc_address)
        yield client, apply, lines, controls


def test_osc_over_udp_changes_a_setting_and_switches_a_preset(osc_session):
    client, apply, lines, controls = osc_session
    client.send_message("/dreamreel/step", 0.02)
    client.send_message("/dreamreel/preset", "low-ornaments")
    client.send_message("/dreamreel/zoom", "1.01 + 0.04*b")
    client.send_message("/dreamreel/freeze", 1)
    client.send_message("/dreamreel/tap", [])
    client.send_message("/dreamreel/tap", 0)  # the button let go: no second tap
    client.send_message("/dreamreel/osd", [])
    changes = apply.wait(6)
    time.sleep(0.1)  # room for a wrong seventh
    assert [(c.setting, c.value, c.source) for c in apply.changes] == [
        ("step", pytest.approx(0.02), "osc /dreamreel/step"),  # OSC floats are float32
        ("preset", "low-ornaments", "osc /dreamreel/preset"),
        ("zoom", "1.01 + 0.04*b", "osc /dreamreel/zoom"),
        ("freeze", True, "osc /dreamreel/freeze"),
        ("tap", None, "osc /dreamreel/tap"),
        ("osd", None, "osc /dreamreel/osd"),
    ]
    assert changes[4].time_s is not None and lines == [f"osc: listening on 127.0.0.1:{controls.osc_address[1]}"]


def test_osc_status_query_gets_the_sessions_state_as_messages(osc_session):
    client, _, _, _ = osc_session
    client.send_message("/dreamreel/status", [])
    replies = {}
    for message in client.get_messages(timeout=2.0):
        replies[message.address] = message.params[0]
        if len(replies) == 8:
            break
    assert replies == {
        "/dreamreel/status/preset": "video-live",
        "/dreamreel/status/objective": "mid",
        "/dreamreel/status/settings/step": pytest.approx(0.01),
        "/dreamreel/status/settings/zoom": "1 + 0.02*b",
        "/dreamreel/status/fps": pytest.approx(29.97),
        "/dreamreel/status/dream_rate": pytest.approx(2.5),
        "/dreamreel/status/latency": pytest.approx(0.08),
        "/dreamreel/status/frozen": 0,
    }  # the beat's tempo is left out while there is none


def test_osc_status_replies_to_the_port_asked_for(osc_session):
    client, _, _, _ = osc_session
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(2.0)
        client.send_message("/dreamreel/status", listener.getsockname()[1])
        message = OscMessage(listener.recv(4096))
    assert message.address == "/dreamreel/status/preset" and message.params == ["video-live"]


def test_an_osc_port_in_use_is_one_line_and_exit_code_2():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(ValueError) as caught:
            with open_controls(ControlSettings(osc_port=port), Recorder(), LiveVariables(), log=lambda line: None):
                pass
    line, code = error_line(caught.value)
    assert line == f"dreamreel: error: --osc-port {port}: UDP port {port} on 127.0.0.1 is already in use; choose another with --osc-port"
    assert code == 2


def test_a_missing_library_names_the_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pythonosc.osc_server", None)
    with pytest.raises(ValueError, match=r"--osc-port needs python-osc: pip install 'dreamreel\[live\]'"):
        with open_controls(ControlSettings(osc_port=0), Recorder(), LiveVariables(), log=lambda line: None):
            pass
    monkeypatch.setitem(sys.modules, "rtmidi", None)
    with pytest.raises(ValueError, match=r"--midi needs mido and python-rtmidi: pip install 'dreamreel\[live\]'"):
        with open_controls(ControlSettings(midi=""), Recorder(), LiveVariables(), log=lambda line: None):
            pass


# --- mapping files ----------------------------------------------------------------------------


def test_the_example_mappings_load_and_the_nanokontrol2_has_its_factory_numbers():
    assert builtin_mappings() == ["nanokontrol2", "touchdesigner"]
    mapping = nano()
    cc = dict(mapping.cc)
    assert set(cc) >= set(range(0, 8)) | {16, 17, 18} | set(range(32, 40)) | {48, 49, 50, 51}
    assert {cc[41].setting, cc[42].setting, cc[46].setting, cc[60].setting} == {"fullscreen", "freeze", "osd", "tap"}
    assert all(control.value == preset for (number, control), preset in zip(sorted(mapping.cc)[8 + 3 :], mapping.presets))
    td = load_mapping("touchdesigner")
    assert td.variables == ("kick", "energy") and td.settings == {"mix": "clamp(0.6 + 0.4*kick, 0, 1)"}


def test_the_mapping_files_settings_are_applied_at_the_start(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('[settings]\nstep = 0.02\nzoom = "1 + 0.02*level"\n[osc]\n"/x/level" = { variable = "level" }\n')
    apply = Recorder()
    variables = LiveVariables()
    with open_controls(ControlSettings(controls=str(path), osc_port=0), apply, variables, log=lambda line: None):
        assert apply.changes == [Change("step", 0.02, f"{path} [settings]"), Change("zoom", "1 + 0.02*level", f"{path} [settings]")]
        assert variables.snapshot() == {"level": 0.0}  # so the expression has a value before the first message


@pytest.mark.parametrize(
    "text, message",
    [
        ('[midi.cc]\n7 = { setting = "stpe", range = [0, 1] }', r"\[midi.cc\] 7: unknown setting 'stpe' \(did you mean 'step'\?\)"),
        ('[midi.cc]\n7 = { setting = "step", range = [0, 3] }', r"\[midi.cc\] 7: range = \[0, 3\] is out of bounds: step goes from 0 to 1"),
        ('[midi.cc]\n7 = { setting = "step", range = [0.1] }', r"\[midi.cc\] 7: range = \[0.1\]: expected \[value at 0, value at full\]"),
        ('[midi.cc]\n7 = { setting = "angle", range = [-2, 2], curve = "exponential" }', r"needs a range that does not reach or cross 0"),
        ('[midi.cc]\n7 = { setting = "freeze", range = [0, 1] }', r"range: freeze is not a number"),
        ('[midi.cc]\n128 = { setting = "step" }', r"\[midi.cc\] 128: expected a MIDI control change number from 0 to 127"),
        ('[midi.note]\n36 = { setting = "preset" }', r"\[midi.note\] 36: a MIDI button sends a fixed preset: add value"),
        ('[midi.note]\n36 = { setting = "preset", value = "nope" }', r"\[midi.note\] 36: value = 'nope': unknown preset 'nope'"),
        ('[midi.cc]\n7 = { setting = "step", rnage = [0, 1] }', r"\[midi.cc\] 7: unknown key 'rnage' \(did you mean 'range'\?\)"),
        ('[midi.cc]\n7 = { variable = "bass" }', r"variable = 'bass' is a built-in live variable"),
        ('[osc]\n"/dreamreel/step" = { setting = "step" }', r"/dreamreel/... addresses are built in"),
        ('[settings]\nzoom = "1.01 + 0.04*bas"', r"\[settings\] zoom = '1.01 \+ 0.04\*bas': column 13: unknown name 'bas' \(did you mean 'bass'\?\)"),
        ('[settings]\nzoom = "1.01 +"', r"\[settings\] zoom = '1.01 \+': column"),
        ('[settings]\nzoom = 7', r"\[settings\] zoom = 7: 7 is out of range: expected a value from 0.5 to 2$"),
        ('[settings]\nfreeze = true', r"\[settings\] freeze: unknown setting 'freeze'"),
        ("[midi]\ncc = 3", r"midi.cc must be a \[midi.cc\] table"),
        ('presets = ["a"]\n[midid]', r"unknown key 'midid' \(did you mean 'midi'\?\)"),
        ("[settings\n", r"not valid TOML"),
    ],
)
def test_mapping_file_errors_are_one_line_naming_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as caught:
        load_mapping(path)
    assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)
    assert error_line(caught.value)[1] == 2


def test_a_mapping_needs_the_inputs_it_uses(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('[settings]\nzoom = "1 + 0.02*bass"\n')
    for settings, message in [
        (ControlSettings(controls="nanokontrol2"), "mapping nanokontrol2: .midi. maps MIDI controls but MIDI is off: add --midi"),
        (ControlSettings(controls="touchdesigner"), r"mapping touchdesigner: \[osc\] maps OSC addresses but OSC is off: add --osc-port"),
        (ControlSettings(controls=str(path)), r"\[settings\] zoom uses 'bass' but no --audio-in was given"),
        (ControlSettings(controls="missing.toml"), "--controls missing.toml: no such file, nor a built-in mapping"),
    ]:
        with pytest.raises(ValueError, match=message):
            with open_controls(settings, Recorder(), LiveVariables()):
                pass


# --- command line -----------------------------------------------------------------------------


def test_the_controls_flags_build_the_settings():
    parser = Parser(prog="dreamreel live")
    add_controls_options(parser)
    add_common(parser)
    args = parser.parse_args(["--controls", "nanokontrol2", "--midi", "--osc-port", "9000", "--audio-in", "--lookahead", "0.08", "--quiet"])
    assert controls_settings(args) == ControlSettings(
        controls="nanokontrol2", osc_port=9000, midi="", audio_in="", lookahead=0.08, quiet=True
    )
    args = parser.parse_args(["--midi", "nano", "--learn", "--audio-in", "2"])
    settings = controls_settings(args)
    assert (settings.midi, settings.audio_in, settings.learn, settings.osc_port, settings.osc_host) == ("nano", "2", True, None, "127.0.0.1")
    with pytest.raises(ValueError, match="--learn shows incoming MIDI and OSC messages: add --midi or --osc-port"):
        controls_settings(parser.parse_args(["--learn"]))
    with pytest.raises(SystemExit) as caught:
        parser.parse_args(["--osc-port", "70000"])
    assert caught.value.code == 2


def test_osc_values_by_name_are_live_variables_up_to_a_cap():
    clock = FakeClock()
    route, _, lines = router(clock=clock)
    route.osc(("127.0.0.1", 5000), "/dreamreel/var/energy", 0.7)
    assert route.variables.snapshot() == {"energy": pytest.approx(0.7)}
    for k in range(controls_module.MAX_SOURCES + 10):  # a sender making up names forever
        route.osc(("127.0.0.1", 5000), f"/dreamreel/var/v{k}", 1.0)
    assert len(route.variables.snapshot()) == controls_module.MAX_SOURCES
    cap = controls_module.MAX_SOURCES
    assert lines == [f"osc /dreamreel/var: already {cap} variables set over OSC; no more (v{cap - 1}); ignored"]
