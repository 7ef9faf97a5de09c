"""What the live audio analysis (``dreamreel live --audio-in``) costs, and how late and how close to the beat it is.

Feeds a generated track (a kick on every beat, off-beat hi-hats, a bass line)
through :meth:`AudioIn.callback` in 10 ms blocks, as a sound card would, and
prints one JSON object:

* ``cpu_ms_per_audio_s``: CPU time the analysis takes per second of sound
  (the callback runs on PortAudio's thread, beside the dream);
* ``worst_block_ms``: the slowest block (a block that takes longer than
  10 ms makes the sound card drop samples);
* ``latency_ms``: how old the features are when published (without the
  device's own input latency);
* ``beat_error_ms``: once locked (after 8 s), the largest distance between a
  kick and the moment ``b`` passes a whole number, read at 30 frames/s;
* ``bpm``: the tempo found, for the track's ``--bpm``.

Run:  python -m dreamreel.benchmarks.audio_in [--seconds 60] [--bpm 124] [--sample-rate 48000]
Record ``uptime``'s load average with the figures: the CPU times are disturbed by other work.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

BLOCK_S = 0.01
FPS = 30
LOCK_S = 8.0


def track(bpm: float, seconds: float, sample_rate: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A kick (110 to 50 Hz sweep) on each beat, hi-hats on the off-beats, a bass note per bar; (samples, kick times)."""
    rng = np.random.default_rng(seed)
    samples = 0.003 * rng.standard_normal(int(seconds * sample_rate))
    t = np.arange(int(0.3 * sample_rate)) / sample_rate
    kick = 0.7 * np.sin(2 * np.pi * (50 + 60 * np.exp(-t / 0.02)) * t) * np.exp(-t / 0.1)
    hat = 0.15 * rng.standard_normal(int(0.05 * sample_rate)) * np.exp(-t[: int(0.05 * sample_rate)] / 0.015)
    beat_s = 60 / bpm
    kicks = np.arange(0.5, seconds - 0.5, beat_s)
    for k, at in enumerate(kicks):
        start = round(at * sample_rate)
        samples[start : start + kick.size] += kick
        start = round((at + beat_s / 2) * sample_rate)
        samples[start : start + hat.size] += hat
        if k % 4 == 0:  # a bass note on each bar
            note = np.arange(min(round(4 * beat_s * sample_rate), samples.size - round(at * sample_rate))) / sample_rate
            samples[round(at * sample_rate) : round(at * sample_rate) + note.size] += 0.2 * np.sin(2 * np.pi * 73.4 * note)
    return samples.astype(np.float32), kicks


def run(seconds: float, bpm: float, sample_rate: int) -> dict:
    from dreamreel.pipeline.audio_in import AudioIn
    from dreamreel.pipeline.controls import LiveVariables, Tempo

    samples, kicks = track(bpm, seconds, sample_rate)
    now = [0.0]
    tempo = Tempo()
    audio = AudioIn(sample_rate, LiveVariables(), tempo, clock=lambda: now[0])
    block = round(BLOCK_S * sample_rate)
    frames, worst, cpu_start = [], 0.0, time.process_time()
    for start in range(0, samples.size, block):
        chunk = samples[start : start + block]
        now[0] = (start + chunk.size) / sample_rate
        began = time.perf_counter()
        audio.callback(chunk[:, None], chunk.size, None, None)
        worst = max(worst, time.perf_counter() - began)
        while len(frames) / FPS <= now[0]:
            frames.append(tempo.beats(len(frames) / FPS))
    cpu_s = time.process_time() - cpu_start
    crossings = [
        (k - 1 + (np.ceil(frames[k - 1]) - frames[k - 1]) / (frames[k] - frames[k - 1])) / FPS
        for k in range(1, len(frames))
        if k / FPS >= LOCK_S and frames[k - 1] is not None and np.floor(frames[k]) > np.floor(frames[k - 1])
    ]
    errors = [np.abs(kicks - at).min() for at in crossings if at < kicks[-1] + 30 / bpm]  # b runs on after the music
    return {
        "seconds": seconds,
        "sample_rate": sample_rate,
        "bpm_given": bpm,
        "bpm": round(tempo.bpm(now[0]) or 0.0, 2),
        "cpu_ms_per_audio_s": round(1000 * cpu_s / seconds, 2),
        "worst_block_ms": round(1000 * worst, 2),
        "latency_ms": round(1000 * audio.latency_s, 1),
        "beat_error_ms": round(1000 * max(errors), 1) if errors else None,
        "beats_checked": len(errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--bpm", type=float, default=124.0)
    parser.add_argument("--sample-rate", type=int, default=48000)
    args = parser.parse_args()
    print(json.dumps(run(args.seconds, args.bpm, args.sample_rate)))


if __name__ == "__main__":
    main()
