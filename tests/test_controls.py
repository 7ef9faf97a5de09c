"""Live control values: changes name known settings, variables are finite numbers."""

from __future__ import annotations

import threading

import pytest

from dreamreel.pipeline.controls import ACTIONS, SETTING_BOUNDS, Change, LiveVariables


def test_a_change_names_a_known_setting_or_action():
    assert Change("step", 0.02, "osc /dreamreel/step").value == 0.02
    assert Change("preset", "low-ornaments").setting == "preset"
    with pytest.raises(ValueError, match="unknown live setting 'stpe'"):
        Change("stpe", 0.02)
    assert not set(SETTING_BOUNDS) & set(ACTIONS)


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
