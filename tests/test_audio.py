"""Audio features on a generated beat track: bands, onsets, tempo, decoding."""

import dataclasses
import math
import wave

import numpy as np
import pytest

from dreamreel.pipeline.audio import (
    FEATURE_NAMES,
    TEMPO_FPS,
    AudioFeatures,
    analyse,
    audio_features,
    beat_grid,
    estimate_bpm,
    load_audio,
)
from dreamreel.pipeline.ffmpeg import run_ffmpeg
from dreamreel.pipeline.presets import load_preset
from dreamreel.pipeline.schedule import DEFAULT_VARIABLES, frame_env, parse_schedule

SAMPLE_RATE = 22050
BPM = 120
BEAT_S = 60 / BPM
DURATION_S = 8.0
HI_HAT_UNTIL_S = 4.0  # hi-hats in the first half only; the second half is kick alone


def beat_track(seed: int = 0) -> np.ndarray:
    """8 s at 22050 Hz: a 120 BPM kick (decaying 60 Hz sine bursts on every beat)
    plus quiet hi-hats (decaying noise bursts) on the off-beats of the first 4 s.

    Returns float32 samples, shape (176400,).
    """
    rng = np.random.default_rng(seed)
    samples = np.zeros(int(DURATION_S * SAMPLE_RATE))
    kick_t = np.arange(int(0.4 * SAMPLE_RATE)) / SAMPLE_RATE
    kick = 0.8 * np.sin(2 * np.pi * 60 * kick_t) * np.exp(-kick_t / 0.08)
    hat_t = np.arange(int(0.05 * SAMPLE_RATE)) / SAMPLE_RATE
    for beat in range(int(DURATION_S / BEAT_S)):
        start = round(beat * BEAT_S * SAMPLE_RATE)
        samples[start : start + kick.size] += kick
        if (beat + 0.5) * BEAT_S < HI_HAT_UNTIL_S:
            start = round((beat + 0.5) * BEAT_S * SAMPLE_RATE)
            hat = 0.1 * rng.standard_normal(hat_t.size) * np.exp(-hat_t / 0.015)
            samples[start : start + hat.size] += hat
    return samples.astype(np.float32)


def kick_track(bpm: float, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """A kick on every beat, a quieter noise snare on every off-beat, and hiss
    40 dB down throughout; float32, shape (duration_s * 22050,)."""
    samples = 0.01 * rng.standard_normal(int(duration_s * SAMPLE_RATE))
    kick_t = np.arange(int(0.3 * SAMPLE_RATE)) / SAMPLE_RATE
    kick = 0.8 * np.sin(2 * np.pi * 60 * kick_t) * np.exp(-kick_t / 0.08)
    snare_t = np.arange(int(0.05 * SAMPLE_RATE)) / SAMPLE_RATE
    for beat in np.arange(0, duration_s - 1.0, 60 / bpm):  # a second's room for the last kick and snare
        start = round(beat * SAMPLE_RATE)
        samples[start : start + kick.size] += kick
        start = round((beat + 30 / bpm) * SAMPLE_RATE)
        snare = 0.3 * rng.standard_normal(snare_t.size) * np.exp(-snare_t / 0.03)
        samples[start : start + snare.size] += snare
    return samples.astype(np.float32)


def kicks_from(first_beat_s: float, bpm: float, duration_s: float, rng: np.random.Generator, *, hats: float) -> np.ndarray:
    """Hiss 50 dB down throughout; from `first_beat_s` on, a kick (a 110 to 50 Hz
    sine sweep) on every beat and a noise hi-hat of amplitude `hats` on every
    off-beat; float32, shape (duration_s * 22050,)."""
    samples = 0.003 * rng.standard_normal(int(duration_s * SAMPLE_RATE))
    kick_t = np.arange(int(0.3 * SAMPLE_RATE)) / SAMPLE_RATE
    kick = 0.8 * np.sin(2 * np.pi * (50 + 60 * np.exp(-kick_t / 0.02)) * kick_t) * np.exp(-kick_t / 0.1)
    hat_t = np.arange(int(0.06 * SAMPLE_RATE)) / SAMPLE_RATE
    for beat in np.arange(first_beat_s, duration_s - 0.4, 60 / bpm):
        start = round(beat * SAMPLE_RATE)
        samples[start : start + kick.size] += kick
        start = round((beat + 30 / bpm) * SAMPLE_RATE)
        hat = hats * rng.standard_normal(hat_t.size) * np.exp(-hat_t / 0.02)
        samples[start : start + hat.size] += hat
    return samples.astype(np.float32)


def write_wav(path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """16-bit mono PCM with the stdlib wave module."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


@pytest.fixture(scope="module")
def track() -> np.ndarray:
    return beat_track()


@pytest.fixture(scope="module")
def track_wav(tmp_path_factory, track):
    path = tmp_path_factory.mktemp("audio") / "beat.wav"
    write_wav(path, track)
    return path


@pytest.fixture(scope="module")
def features_25(track) -> AudioFeatures:
    return analyse(track, SAMPLE_RATE, fps=25)


def local_peaks(values: np.ndarray, above: float) -> np.ndarray:
    """Indices of local maxima higher than `above`."""
    inner = (values[1:-1] >= values[:-2]) & (values[1:-1] > values[2:]) & (values[1:-1] > above)
    return np.flatnonzero(inner) + 1


# --------------------------------------------------------------------------
# analyse


def test_shapes_and_names(features_25):
    assert features_25.n_frames == math.ceil(DURATION_S * 25) == 200
    assert features_25.duration_s == pytest.approx(DURATION_S)
    for name in FEATURE_NAMES:
        array = getattr(features_25, name)
        assert array.dtype == np.float32 and array.shape == (200,)
        assert np.isfinite(array).all() and (array >= 0).all()
    # The schedule language's audio variables are exactly these features.
    assert set(DEFAULT_VARIABLES) - {"t", "s", "b"} == set(FEATURE_NAMES)
    short = analyse(np.zeros(1000, np.float32), SAMPLE_RATE, fps=30)
    assert short.n_frames == math.ceil(1000 / SAMPLE_RATE * 30) == 2


@pytest.mark.parametrize("fps", [24, 25, 30])
def test_bass_peaks_land_on_beats(track, fps):
    bass = analyse(track, SAMPLE_RATE, fps=fps).bass
    peaks = local_peaks(bass, above=0.5 * bass.max())
    beat_frames = np.arange(int(DURATION_S / BEAT_S)) * BEAT_S * fps
    assert len(peaks) == len(beat_frames)
    assert np.abs(peaks - beat_frames).max() <= 1.0


def test_bands_separate_kick_from_hi_hat(features_25):
    second_half = slice(int((HI_HAT_UNTIL_S + 0.5) * 25), None)  # after the last hi-hat has faded
    treble, bass = features_25.treble, features_25.bass
    # The kick alone barely moves the treble, while it swings the bass.
    assert np.ptp(treble[second_half]) < 0.1 * np.ptp(bass[second_half])
    assert treble[: int(HI_HAT_UNTIL_S * 25)].mean() > 10 * treble[second_half].mean()
    # Hi-hats fall between the beats: treble peaks sit half a beat after bass peaks.
    hats = local_peaks(treble, above=0.5 * treble.max())
    assert len(hats) == int(HI_HAT_UNTIL_S / BEAT_S)
    assert np.abs(hats - (np.arange(len(hats)) + 0.5) * BEAT_S * 25).max() <= 1.0


def test_onsets_are_spiky_and_mark_every_hit(features_25):
    onset = features_25.onset
    hits = np.arange(0, DURATION_S, BEAT_S / 2) * 25  # kicks on beats, hi-hats between (first half)
    kicks_only = np.arange(HI_HAT_UNTIL_S, DURATION_S, BEAT_S) * 25
    peaks = local_peaks(onset, above=0.2 * onset.max())
    assert all(np.abs(hits - peak).min() <= 1.0 for peak in peaks)
    late_peaks = peaks[peaks > HI_HAT_UNTIL_S * 25]
    assert len(late_peaks) == len(kicks_only) - 1  # the kick at 4.0 s lies on the boundary
    assert np.abs(late_peaks - kicks_only[1:]).max() <= 1.0
    assert np.median(onset) < 0.5 * onset.mean()  # mostly quiet between spikes


def test_typical_level_is_one_whatever_the_recording_level():
    # Hiss 40 dB down keeps every frame above the silence threshold, so the
    # typical level is the plain mean.
    samples = kick_track(120, 6.0, np.random.default_rng(0))
    loud = analyse(samples, SAMPLE_RATE, fps=25)
    for name in FEATURE_NAMES:
        assert getattr(loud, name).mean() == pytest.approx(1.0, abs=1e-4), name
    for gain in (0.5, 0.2):
        quiet = analyse(samples * gain, SAMPLE_RATE, fps=25)
        for name in ("rms", "bass", "mid", "treble"):
            np.testing.assert_allclose(getattr(quiet, name), getattr(loud, name), rtol=1e-3, atol=1e-4,
                                       err_msg=name)
        # Onsets compare levels in dB, equal at any gain but for the bits of
        # hiss that sink under the -80 dBFS floor.
        np.testing.assert_allclose(quiet.onset, loud.onset, atol=0.05)


def test_silence_is_zero_and_does_not_count_toward_the_typical_level(track, features_25):
    intro = np.zeros(2 * SAMPLE_RATE, np.float32)
    padded = analyse(np.concatenate([intro, track]), SAMPLE_RATE, fps=25)
    silent = slice(0, 45)  # 2 s = 50 frames, minus the window reaching into the music
    for name in FEATURE_NAMES:
        assert np.abs(getattr(padded, name)[silent]).max() < 1e-6, name
        music = getattr(padded, name)[60:]
        assert music.mean() == pytest.approx(getattr(features_25, name)[10:].mean(), rel=0.05), name
    all_silent = analyse(np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE, fps=25)
    assert all(not getattr(all_silent, name).any() for name in FEATURE_NAMES)


def test_envelope_follower_attacks_fast_and_releases_slowly():
    impulse = np.zeros(SAMPLE_RATE * 2, np.float32)
    impulse[SAMPLE_RATE : SAMPLE_RATE + 200] = 1.0  # a 9 ms click at 1 s
    for release_s, decay_frames in ((0.05, 6), (0.3, 30)):
        rms = analyse(impulse, SAMPLE_RATE, fps=100, release_s=release_s).rms
        peak = int(np.argmax(rms))
        assert abs(peak - 100) <= 5  # 10 ms frames; the window is ~93 ms wide
        assert rms[peak + decay_frames] > 0.05 * rms[peak]
        assert rms[peak + 3 * decay_frames] < rms[peak + decay_frames]


def test_at_returns_a_frames_features_and_silence_after_the_end(features_25):
    values = features_25.at(12)
    assert list(values) == list(FEATURE_NAMES)
    assert values["bass"] == pytest.approx(float(features_25.bass[12]))
    assert features_25.at(10_000) == dict.fromkeys(FEATURE_NAMES, 0.0)
    with pytest.raises(ValueError, match="0 or more"):
        features_25.at(-1)


@pytest.mark.parametrize(
    "samples, sample_rate, fps, message",
    [
        (np.zeros((2, 100), np.float32), SAMPLE_RATE, 25, "mono"),
        (np.zeros(0, np.float32), SAMPLE_RATE, 25, "no samples"),
        (np.full(100, np.nan, np.float32), SAMPLE_RATE, 25, "NaN"),
        (np.zeros(100, np.float32), 8000, 25, "at least 16000 Hz"),
        (np.zeros(100, np.float32), SAMPLE_RATE, 0, "fps must be a positive number"),
    ],
)
def test_analyse_rejects_bad_input(samples, sample_rate, fps, message):
    with pytest.raises(ValueError, match=message):
        analyse(samples, sample_rate, fps=fps)


# --------------------------------------------------------------------------
# Tempo


def test_estimate_bpm_finds_the_beat_track_tempo(track):
    onset = analyse(track, SAMPLE_RATE, fps=TEMPO_FPS).onset
    assert estimate_bpm(onset, TEMPO_FPS) == pytest.approx(BPM, abs=2)


@pytest.mark.parametrize("bpm", [64, 90, 128, 150, 174])
def test_estimate_bpm_across_tempi(bpm):
    samples = kick_track(bpm, 12.0, np.random.default_rng(bpm))
    onset = analyse(samples, SAMPLE_RATE, fps=TEMPO_FPS).onset
    # 174 must not come out as 87: ties between a tempo and its half go to the faster.
    assert estimate_bpm(onset, TEMPO_FPS) == pytest.approx(bpm, abs=2)


def test_estimate_bpm_without_a_beat():
    assert estimate_bpm(np.ones(50), 25) is None  # too short: under four beats at 60 BPM
    assert estimate_bpm(np.zeros(1000), 25) is None  # flat
    with pytest.raises(ValueError, match="lo < hi"):
        estimate_bpm(np.ones(1000), 25, lo=180, hi=60)


# --------------------------------------------------------------------------
# Beats: tempo and phase


@pytest.mark.parametrize(
    "first_beat_s, bpm, hats",
    [
        (0.37, 128.0, 0.8),  # off-beat hi-hats louder than the kicks' rise: the beat is the kick
        (4.0, 100.0, 0.2),  # a 4-second quiet intro (hiss only)
    ],
)
def test_zoom_beat_pulse_lunges_on_the_beats(tmp_path, first_beat_s, bpm, hats):
    fps, duration_s = 24, 14.0
    path = tmp_path / "song.wav"
    write_wav(path, kicks_from(first_beat_s, bpm, duration_s, np.random.default_rng(1), hats=hats))
    features = audio_features(path, fps=fps)
    assert features.bpm == pytest.approx(bpm, rel=0.005)
    assert features.first_beat_s == pytest.approx(first_beat_s, abs=1 / fps)
    zoom = parse_schedule(load_preset("zoom-beat-pulse").sections["zoom"]["zoom"], setting="zoom")
    values = np.array([zoom(t, frame_env(t, fps, features=features)) for t in range(features.n_frames)])
    beats = np.arange(first_beat_s, duration_s - 0.4, 60 / bpm) * fps  # true beats, in frames
    peaks = local_peaks(np.concatenate([[0.0], values]), above=1.02) - 1  # frame 0 may be a peak too
    music = peaks[(peaks >= beats[0] - 1) & (peaks <= beats[-1] + 1)]  # the grid goes on before and after
    # One lunge per beat, each within a frame of it.
    assert len(music) == len(beats)
    assert np.abs(music - beats).max() <= 1.0


def test_beat_grid_keeps_a_given_tempo_and_finds_its_phase():
    samples = kicks_from(0.37, 120.0, 10.0, np.random.default_rng(2), hats=0.3)
    bpm, first_beat_s = beat_grid(samples, SAMPLE_RATE, 120.0, refine_tempo=False)
    assert bpm == 120.0
    assert first_beat_s == pytest.approx(0.37, abs=0.02)
    # A track that starts on a beat: that beat is the first, though no rise comes before it.
    bpm, first_beat_s = beat_grid(kicks_from(0.0, 120.0, 10.0, np.random.default_rng(3), hats=0.3), SAMPLE_RATE, 120.0)
    assert first_beat_s == pytest.approx(0.0, abs=0.02)


def test_beat_grid_of_silence_starts_at_zero():
    assert beat_grid(np.zeros(5 * SAMPLE_RATE, np.float32), SAMPLE_RATE, 120.0) == (120.0, 0.0)
    with pytest.raises(ValueError, match="bpm must be a positive number"):
        beat_grid(np.zeros(100, np.float32), SAMPLE_RATE, 0.0)


def test_b_counts_beats_from_the_first_beat(features_25):
    features = dataclasses.replace(features_25, bpm=120.0, first_beat_s=0.4)
    assert frame_env(10, 25.0, features=features)["b"] == pytest.approx(0.0)  # 0.4 s
    assert frame_env(35, 25.0, features=features)["b"] == pytest.approx(2.0)  # 1.4 s: two beats later
    assert frame_env(0, 25.0, features=features)["b"] == pytest.approx(-0.8)  # before the first beat
    assert frame_env(10, 25.0, bpm=120.0)["b"] == pytest.approx(0.8)  # a tempo alone counts from 0 s


# --------------------------------------------------------------------------
# Decoding with ffmpeg


def test_load_wav(track_wav, track):
    samples = load_audio(track_wav)
    assert samples.dtype == np.float32 and samples.shape == track.shape and samples.flags.writeable
    np.testing.assert_allclose(samples, track, atol=1e-3)  # 16-bit rounding
    assert load_audio(track_wav, sample_rate=44100).size == pytest.approx(2 * track.size, abs=2)


@pytest.mark.parametrize("suffix, codec", [(".m4a", "aac"), (".mp3", "libmp3lame")])
def test_compressed_audio_gives_the_same_tempo(tmp_path, track_wav, suffix, codec):
    path = tmp_path / f"beat{suffix}"
    run_ffmpeg(["-i", str(track_wav), "-c:a", codec, "-b:a", "96k", str(path)], what="encoding a test track")
    samples = load_audio(path)
    assert samples.size == pytest.approx(DURATION_S * SAMPLE_RATE, rel=0.02)  # codec padding aside
    features = audio_features(path, fps=25)
    assert features.bpm == pytest.approx(BPM, abs=2)
    assert audio_features(path, fps=25, bpm=100).bpm == 100


def test_video_without_sound_is_refused(tmp_path):
    video = tmp_path / "silent.mp4"
    run_ffmpeg(["-f", "lavfi", "-i", "testsrc=size=64x48:rate=10:duration=1", "-c:v", "mpeg4", str(video)],
               what="making a silent test video")
    with pytest.raises(ValueError, match="has no audio stream"):
        load_audio(video)


def test_missing_directory_and_non_media_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(ValueError, match="is a directory"):
        load_audio(tmp_path)
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all\n")
    with pytest.raises(ValueError, match="not a media file"):
        load_audio(text)


def test_audio_features_rejects_a_bad_bpm(track_wav):
    with pytest.raises(ValueError, match="bpm must be a positive number"):
        audio_features(track_wav, fps=25, bpm=0)
