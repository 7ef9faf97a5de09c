"""Audio features for audio-reactive animation: loudness, three bands, onsets, tempo, beats.

:func:`load_audio` decodes any file ffmpeg reads to mono float32 samples;
:func:`analyse` turns them into one value per video frame for each feature in
:data:`FEATURE_NAMES`; :func:`estimate_bpm` finds the tempo;
:func:`beat_grid` refines it and finds the first beat; and
:func:`audio_features` does all of it. Schedules see the features as the
variables ``rms``, ``bass``, ``mid``, ``treble`` and ``onset``.

Every feature is scaled so that 1 is the track's typical level and 0 is
silence, the convention of music visualisers (MilkDrop presets are written
for ``bass``, ``mid`` and ``treb`` near 1 on typical music, above 1 when
louder than usual), so a formula like ``1.01 + 0.03*bass`` means the same on
a quiet recording as on a loud master.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .ffmpeg import probe, run_ffmpeg

FEATURE_NAMES = ("rms", "bass", "mid", "treble", "onset")
# What Spectrum.measure gives for each window: the features, plus the onset
# of the bass bands that beats are found in.
RAW_NAMES = (*FEATURE_NAMES, "beat")

# Half the CD rate keeps everything up to 11 kHz, above the 8 kHz treble edge,
# at half the cost; librosa defaults to it for the same reason.
DEFAULT_SAMPLE_RATE = 22050
# The treble band reaches 8 kHz, so the Nyquist frequency must too.
MIN_SAMPLE_RATE = 16000

# 2048 samples at 22050 Hz (librosa's default n_fft): 10.8 Hz bins give the
# 20-250 Hz bass band about 20 bins, and 93 ms is short enough that a kick
# drum still reads as a peak at 25-30 fps.
WINDOW_S = 2048 / 22050

# The usual visualiser split of the spectrum (the engineers' table of sub-bass
# + bass 20-250 Hz, low mids + mids 250-2000 Hz, upper mids + presence +
# brilliance above), with treble stopped at 8 kHz: above it there is little
# musical energy, and lossy encoders at low bitrates cut it anyway.
BANDS_HZ = {"bass": (20.0, 250.0), "mid": (250.0, 2000.0), "treble": (2000.0, 8000.0)}

# Frames whose loudness is below -60 dBFS count as silence (ffmpeg's
# silencedetect uses the same default noise level) and are left out when
# finding the typical level, so a silent intro does not inflate the music.
SILENCE_AMPLITUDE = 10 ** (-60 / 20)

# Spectral flux compares levels in 40 mel bands over 20-8000 Hz rather than
# single FFT bins: a band sums several bins (at least 4 here), which steadies
# the frame-to-frame level of noisy sounds (hiss, cymbals, reverb) that would
# otherwise read as a constant drizzle of onsets; librosa's onset_strength
# likewise works on a mel spectrogram. Levels below -80 dBFS are clamped there
# (librosa's top_db of 80 below a full-scale peak).
ONSET_BAND_HZ = (20.0, 8000.0)
ONSET_MEL_BANDS = 40
ONSET_FLOOR_DB = -80.0
# A typical flux under a hundredth of a dB per frame (the just noticeable level
# change is about 1 dB) means a track with no onsets at all: report zeros
# rather than magnify rounding noise to "typical".
ONSET_MIN_TYPICAL_DB = 0.01

# Attack and release of the envelope follower, in seconds: a fast attack so a
# beat shows on its own frame, a slower release so the picture eases back
# instead of flickering at the frame rate. These sit in the usual ranges of
# envelope followers and compressors (attack around 10 ms, release a few
# hundred ms); the follower itself is described in follow.
ATTACK_S = 0.010
RELEASE_S = 0.200
# Onsets are meant to be spikes; a short release keeps them so.
ONSET_RELEASE_S = 0.050

# Tempo estimation (estimate_bpm): onsets are measured 100 times a second for
# it, the usual rate of onset detectors (a 10 ms hop), whatever the video's
# frame rate; each tempo is scored at its first 4 beat lags, on a 0.05 BPM
# grid; tempi within 90% of the best score count as ties (see estimate_bpm).
TEMPO_FPS = 100.0
TEMPO_MULTIPLES = 4
TEMPO_STEP_BPM = 0.05
TEMPO_TIE = 0.9

# Beat phase (beat_grid). The beat is found in the rises of the bass band
# (the mel bands under BANDS_HZ["bass"]'s top, 250 Hz), where the kick drum
# lives: in the whole-spectrum flux, off-beat hi-hats or snares are often the
# larger rises. Measured on kicks with off-beat snares or hi-hats (0.3-0.8 of
# full scale), the whole-spectrum flux put the beat half a beat late on every
# track; the bass flux was within 50 ms on all of them.
BEAT_BAND_HZ = BANDS_HZ["bass"]
# The flux of a window centred on time t rises most when a hit enters the
# window's leading half, about 30 ms before the hit (the window is 93 ms
# long): measured on kicks and clicks at 100 to 128 BPM, the beat phase of the
# flux came out 28-37 ms early. Beat times are moved this much later.
ONSET_LEAD_S = 0.030
# The refined tempo is searched within this share of the estimate (the
# estimate's error was at most 0.3% on generated beat tracks).
TEMPO_REFINE_SPAN = 0.01
# The first beat is the first grid point where the track's loudness reaches
# this share of its typical level (beat_grid): a quiet intro has no beats.
FIRST_BEAT_SHARE = 0.5

# Frames per FFT batch; bounds memory to about this many windows at a time
# whatever the length of the track.
_BATCH_FRAMES = 256


@dataclass(frozen=True, eq=False)
class AudioFeatures:
    """Per-frame audio features of a track, for frames at `fps`.

    Attributes:
        fps: video frames per second the features were computed for.
        duration_s: length of the audio in seconds.
        rms: loudness, float32, shape (n_frames,), n_frames = ceil(duration_s * fps).
        bass, mid, treble: amplitude in 20-250, 250-2000 and 2000-8000 Hz,
            float32, shape (n_frames,).
        onset: onset strength (positive spectral flux), float32, shape (n_frames,).
        bpm: tempo in beats per minute, or None when unknown.
        first_beat_s: time of the first beat in seconds; beats fall at
            ``first_beat_s + k * 60 / bpm`` (0 when unknown).

    All five features are 0 in silence and 1 at the track's typical level.
    """

    fps: float
    duration_s: float
    rms: np.ndarray
    bass: np.ndarray
    mid: np.ndarray
    treble: np.ndarray
    onset: np.ndarray
    bpm: float | None = None
    first_beat_s: float = 0.0

    def __post_init__(self):
        lengths = {name: len(getattr(self, name)) for name in FEATURE_NAMES}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"audio features must all have one length per frame, got {lengths}")

    @property
    def n_frames(self) -> int:
        """Number of video frames the audio covers."""
        return len(self.rms)

    def at(self, frame: int) -> dict[str, float]:
        """The features at one frame, keyed by FEATURE_NAMES.

        Frames past the end of the audio are silent (all 0): when the music
        stops, the animation calms down.

        Raises:
            ValueError: frame is negative.
        """
        if frame < 0:
            raise ValueError(f"frame must be 0 or more, got {frame}")
        if frame >= self.n_frames:
            return dict.fromkeys(FEATURE_NAMES, 0.0)
        return {name: float(getattr(self, name)[frame]) for name in FEATURE_NAMES}


def load_audio(path: str | Path, *, sample_rate: int = DEFAULT_SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream of any file ffmpeg reads.

    Args:
        path: an audio file, or a video with sound.
        sample_rate: resample to this rate, in Hz.

    Returns:
        Mono samples (channels averaged by ffmpeg), float32 in [-1, 1], shape (n,).

    Raises:
        ValueError: the file is missing, a directory, not media, has no audio
            stream, or decodes to nothing.
        FFmpegError: ffmpeg failed while decoding; the message is ffmpeg's.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, not an audio file")
    if not probe(path).has_audio:
        raise ValueError(f"{path}: has no audio stream (give a sound file, or a video with sound)")
    proc = run_ffmpeg(
        # "file:" makes ffmpeg read a local file even when the name looks like
        # one of its protocols ("concat:a|b", "C:\\music.mp3").
        ["-i", f"file:{path}", "-vn", "-f", "f32le", "-ac", "1", "-ar", str(sample_rate), "-"],
        what=f"decoding the audio of {path}",
        stdout=subprocess.PIPE,
    )
    # astype copies: the result is writable and in native byte order.
    samples = np.frombuffer(proc.stdout, dtype="<f4").astype(np.float32)
    if samples.size == 0:
        raise ValueError(f"{path}: the audio stream decodes to no samples")
    return samples


def analyse(
    samples: np.ndarray,
    sample_rate: int,
    *,
    fps: float,
    attack_s: float = ATTACK_S,
    release_s: float = RELEASE_S,
    onset_release_s: float = ONSET_RELEASE_S,
) -> AudioFeatures:
    """Measure loudness, band amplitudes and onsets for each video frame.

    For frame k a Hann window of about 93 ms (:data:`WINDOW_S`) is centred on
    its time k / fps, the moment the frame is shown, so a drum hit starts to
    register a little before it sounds and peaks 20-40 ms after it starts
    (at most a frame at 25-30 fps), inside the 45 ms by which viewers begin
    to notice sound leading picture (ITU-R BT.1359). From its spectrum:

    - ``rms``: root mean square of the windowed samples.
    - ``bass``, ``mid``, ``treble``: amplitude in each band of
      :data:`BANDS_HZ` (square root of the band's energy), so 2 means twice
      the typical amplitude rather than a spike squared.
    - ``onset``: positive spectral flux (Bello et al. 2005; the idea of
      librosa's onset_strength): the mean over 40 mel bands of 20-8000 Hz
      of how much each band's level in dB rose since the previous frame,
      falls ignored.

    Each feature then goes through an attack/release envelope follower
    (onsets with no attack delay and a short release, so they stay spiky) and
    is divided by its mean over the non-silent frames, so that 1 is the
    track's typical level. The mean rather than a median or percentile:
    onsets are near zero on most frames, where a median would make every
    spike huge, while the mean keeps the average of what the schedule sees
    at 1. A feature with nothing in it (no treble in a bass-only track) is
    0 throughout rather than magnified noise.

    Args:
        samples: mono audio, float32 in [-1, 1], shape (n,).
        sample_rate: in Hz, at least :data:`MIN_SAMPLE_RATE`.
        fps: video frames per second.
        attack_s, release_s: follower time constants in seconds (0: none).
        onset_release_s: release for ``onset``; its attack is instant.

    Returns:
        AudioFeatures with n_frames = ceil(n / sample_rate * fps) and bpm None.

    Raises:
        ValueError: samples are not mono, empty or not finite; a rate is out of range.
    """
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"samples must be mono, shape (n,), got shape {samples.shape}")
    if samples.size == 0:
        raise ValueError("no samples to analyse")
    if not np.isfinite(samples).all():
        raise ValueError("samples contain NaN or infinity")
    if sample_rate < MIN_SAMPLE_RATE:
        raise ValueError(
            f"sample_rate must be at least {MIN_SAMPLE_RATE} Hz to cover the treble band, got {sample_rate}"
        )
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps}")
    if min(attack_s, release_s, onset_release_s) < 0:
        raise ValueError("attack and release times must be 0 or more seconds")

    # round() first: 8 s at 25 fps is 200 frames, not ceil(200.00000001).
    n_frames = math.ceil(round(samples.size * fps / sample_rate, 6))
    raw = _frame_features(samples, sample_rate, fps, n_frames)
    loud = raw["rms"] > SILENCE_AMPLITUDE
    frame_s = 1.0 / fps
    features = {}
    for name in FEATURE_NAMES:
        if name == "onset":
            smoothed = follow(raw[name], 0.0, onset_release_s, frame_s)
            floor = ONSET_MIN_TYPICAL_DB
        else:
            smoothed = follow(raw[name], attack_s, release_s, frame_s)
            floor = SILENCE_AMPLITUDE
        features[name] = normalise(smoothed, loud, floor).astype(np.float32)
    return AudioFeatures(fps=float(fps), duration_s=samples.size / sample_rate, bpm=None, **features)


def _window_length(sample_rate: int) -> int:
    """The power of two nearest to WINDOW_S seconds (2048 at 22050 Hz, 4096 at 44.1 or 48 kHz)."""
    return 2 ** round(math.log2(WINDOW_S * sample_rate))


def _frame_features(samples: np.ndarray, sample_rate: int, fps: float, n_frames: int) -> dict[str, np.ndarray]:
    """Unsmoothed, unnormalised features: name -> float64 array of shape (n_frames,).

    rms and bands are amplitudes (a full-scale sine reads about 1); onset is
    in dB per frame, and so is ``beat``, the onset of the mel bands inside
    :data:`BEAT_BAND_HZ` (see :func:`beat_grid`).
    """
    spectrum = Spectrum.at(sample_rate)
    # Zero padding centres window k on sample k * sample_rate / fps, also for
    # the first and last frames; the hop is fractional (918.75 samples at
    # 24 fps), so window starts are rounded.
    padded = np.pad(samples, spectrum.n_fft // 2)
    starts = np.round(np.arange(n_frames) * (sample_rate / fps)).astype(np.int64)
    offsets = np.arange(spectrum.n_fft)

    out = {name: np.empty(n_frames) for name in RAW_NAMES}
    previous_db = None
    for begin in range(0, n_frames, _BATCH_FRAMES):
        batch = slice(begin, begin + _BATCH_FRAMES)
        measured, previous_db = spectrum.measure(padded[starts[batch, None] + offsets], previous_db)
        for name in RAW_NAMES:
            out[name][batch] = measured[name]
    return out


@dataclass(frozen=True, eq=False)
class Spectrum:
    """What measuring windows of samples takes at one sample rate.

    Shared by the file analysis (:func:`analyse`, windows centred on each
    video frame) and the live one (:mod:`audio_in`, the newest window of the
    sound card's stream), so both measure the same thing.

    Attributes:
        n_fft: window length in samples, the power of two nearest to
            :data:`WINDOW_S` (2048 at 22050 Hz, 4096 at 44.1 or 48 kHz).
        window: periodic Hann window, float32, shape (n_fft,).
        spectrum_scale: makes a sine of amplitude A peak at A.
        window_energy: sum of the squared window, to turn energy into rms.
        band_bins: band name -> bool mask of FFT bins, shape (n_fft // 2 + 1,).
        onset_bands: 0/1 matrix summing bins into mel bands, shape (bins, ONSET_MEL_BANDS).
        beat_bands: bool mask of the mel bands inside BEAT_BAND_HZ, shape (ONSET_MEL_BANDS,).
    """

    n_fft: int
    window: np.ndarray
    spectrum_scale: float
    window_energy: float
    band_bins: dict[str, np.ndarray]
    onset_bands: np.ndarray
    beat_bands: np.ndarray

    @classmethod
    def at(cls, sample_rate: int) -> Spectrum:
        """The window, gains and bands for samples at `sample_rate` Hz."""
        n_fft = _window_length(sample_rate)
        window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)  # periodic Hann
        freqs = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
        return cls(
            n_fft=n_fft,
            window=window,
            # A real sine's energy splits between +f and -f, and the window's
            # sum is its gain at the peak bin: 2 / sum(window) makes a sine of
            # amplitude A peak at A.
            spectrum_scale=2.0 / float(window.sum()),
            window_energy=float(np.sum(window.astype(np.float64) ** 2)),
            band_bins={name: (freqs >= lo) & (freqs < hi) for name, (lo, hi) in BANDS_HZ.items()},
            onset_bands=_mel_band_matrix(freqs),
            beat_bands=_mel_band_edges()[1:] <= BEAT_BAND_HZ[1],
        )

    def measure(self, frames: np.ndarray, previous_db: np.ndarray | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Features of consecutive windows.

        Args:
            frames: windows of samples, not yet windowed, shape (n, n_fft).
            previous_db: mel band levels of the window before the first, in
                dB, shape (ONSET_MEL_BANDS,); None at the start, where the
                first window's onset is 0 (rising from an assumed silence
                would make a spike that depends on the recording level).

        Returns:
            (name -> float64 array of shape (n,) for each of RAW_NAMES, the
            last window's mel band levels to pass on as `previous_db`).
        """
        frames = frames * self.window
        out = {"rms": np.sqrt(np.sum(frames.astype(np.float64) ** 2, axis=1) / self.window_energy)}
        power = np.abs(np.fft.rfft(frames, axis=1) * self.spectrum_scale).astype(np.float64) ** 2
        for name, bins in self.band_bins.items():
            out[name] = np.sqrt(power[:, bins].sum(axis=1))
        level_db = 10 * np.log10(np.maximum(power @ self.onset_bands, 10 ** (ONSET_FLOOR_DB / 10)))  # (n, bands)
        rises = np.diff(level_db, axis=0, prepend=level_db[:1] if previous_db is None else previous_db[None, :])
        out["onset"] = np.maximum(rises, 0.0).mean(axis=1)
        out["beat"] = np.maximum(rises[:, self.beat_bands], 0.0).mean(axis=1)
        return out, level_db[-1]


def _mel_band_matrix(freqs: np.ndarray) -> np.ndarray:
    """0/1 matrix summing FFT bins into ONSET_MEL_BANDS bands, shape (len(freqs), bands).

    Band edges are equally spaced on the mel scale (O'Shaughnessy's
    2595 * log10(1 + f / 700)) between the ends of ONSET_BAND_HZ.
    """
    edges_hz = _mel_band_edges()
    band_of_bin = np.searchsorted(edges_hz, freqs, side="right") - 1
    matrix = np.zeros((freqs.size, ONSET_MEL_BANDS))
    inside = np.flatnonzero((band_of_bin >= 0) & (band_of_bin < ONSET_MEL_BANDS))
    matrix[inside, band_of_bin[inside]] = 1.0
    return matrix


def _mel_band_edges() -> np.ndarray:
    """Edges of the ONSET_MEL_BANDS bands in Hz, shape (ONSET_MEL_BANDS + 1,)."""
    mel_lo, mel_hi = (2595 * math.log10(1 + f / 700) for f in ONSET_BAND_HZ)
    return 700 * (10 ** (np.linspace(mel_lo, mel_hi, ONSET_MEL_BANDS + 1) / 2595) - 1)


def follow(values: np.ndarray, attack_s: float, release_s: float, step_s: float, start: float = 0.0) -> np.ndarray:
    """One-pole attack/release envelope follower, starting from `start` (silence).

    The "smooth branching" peak detector of Giannoulis, Massberg & Reiss
    (2012, "Digital dynamic range compressor design", JAES 60(6)): it moves
    toward each new value by a fraction 1 - exp(-step / tau), with tau the
    attack time when rising and the release time when falling.

    Args:
        values: one value per frame, shape (n,).
        attack_s, release_s: time constants in seconds; 0 follows at once.
        step_s: seconds between values.
        start: the level before the first value (the live analysis goes on
            from where its previous block left off).
    """
    rise = 1.0 - math.exp(-step_s / attack_s) if attack_s > 0 else 1.0
    fall = 1.0 - math.exp(-step_s / release_s) if release_s > 0 else 1.0
    level = start
    followed = []
    for value in values.tolist():
        level += (rise if value > level else fall) * (value - level)
        followed.append(level)
    return np.asarray(followed)


def normalise(values: np.ndarray, loud: np.ndarray, min_typical: float) -> np.ndarray:
    """Divide by the mean over the `loud` frames; zeros if that mean is below `min_typical`."""
    typical = float(values[loud].mean()) if loud.any() else 0.0
    if typical < min_typical:
        return np.zeros_like(values)
    return values / typical


def estimate_bpm(onset: np.ndarray, fps: float, *, lo: float = 60.0, hi: float = 180.0) -> float | None:
    """Estimate the tempo from an onset envelope by autocorrelation.

    The envelope (mean removed) is correlated with itself: a steady beat
    lines up with itself again after each beat period. Each tempo from `lo`
    to `hi` in steps of :data:`TEMPO_STEP_BPM` is scored by the mean
    correlation at its first :data:`TEMPO_MULTIPLES` whole-beat lags,
    interpolated between frames; several multiples make the estimate finer
    than one frame of lag and let no single lag decide. Video frame rates
    are still coarse for this: at 25 fps a beat at 120 BPM is 12.5 frames,
    so sharp onsets land on alternating frame phases and the envelope only
    repeats every two beats. :func:`audio_features` therefore measures
    onsets at :data:`TEMPO_FPS` for the tempo.

    Octave ambiguity: a beat that repeats every period also repeats every two
    periods, so half the true tempo always scores about as well as the true
    one. Among tempi scoring at least :data:`TEMPO_TIE` of the best, the
    fastest is taken, the way pitch trackers take the shortest period that
    explains the signal (de Cheveigne & Kawahara 2002). Off-beats as strong
    as the beats (straight eighth-note hi-hats and nothing else) make double
    the tempo a fair reading too, and that is what comes out; the default
    range of 60-180 BPM leaves out most of these doubles. When it matters,
    give the tempo.

    Args:
        onset: onset strength per frame, shape (n,), e.g. the ``onset`` of
            ``analyse(samples, sample_rate, fps=TEMPO_FPS)``.
        fps: frames per second of `onset`.
        lo, hi: range of tempi to consider, in BPM.

    Returns:
        Beats per minute within [lo, hi], or None when the envelope is
        shorter than TEMPO_MULTIPLES beats at `lo` BPM (4 s at 60 BPM), flat,
        or never repeats. Music without a steady beat may still get a
        number, a poor one.

    Raises:
        ValueError: onset is not 1-D, fps is not positive, or the range is
            not 0 < lo < hi.
    """
    envelope = np.asarray(onset, dtype=np.float64)
    if envelope.ndim != 1:
        raise ValueError(f"onset must have shape (n,), got {envelope.shape}")
    if not 0 < lo < hi:
        raise ValueError(f"need 0 < lo < hi, got lo={lo}, hi={hi}")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps}")
    n = envelope.size
    if n < TEMPO_MULTIPLES * 60.0 * fps / lo + 2:
        return None
    envelope = envelope - envelope.mean()
    # Autocorrelation through the FFT, zero-padded to 2n so it is not circular,
    # then unbiased (each lag divided by the number of frame pairs it compares,
    # so long lags are not penalised for overlapping less) and scaled to 1 at lag 0.
    spectrum = np.fft.rfft(envelope, 2 * n)
    correlation = np.fft.irfft(np.abs(spectrum) ** 2)[:n] / (n - np.arange(n))
    if correlation[0] <= 0:
        return None
    correlation /= correlation[0]
    tempi = np.arange(lo, hi + TEMPO_STEP_BPM / 2, TEMPO_STEP_BPM)
    beat_lags = 60.0 * fps / tempi  # frames per beat, shape (n_tempi,)
    multiples = np.arange(1, TEMPO_MULTIPLES + 1)
    scores = np.interp(beat_lags[:, None] * multiples, np.arange(n), correlation).mean(axis=1)
    if scores.max() <= 0:
        return None
    # The fastest tempo close to the best, then up its own peak.
    i = int(np.flatnonzero(scores >= TEMPO_TIE * scores.max())[-1])
    while i > 0 and scores[i - 1] > scores[i]:
        i -= 1
    while i < len(tempi) - 1 and scores[i + 1] > scores[i]:
        i += 1
    return float(tempi[i])


def beat_grid(samples: np.ndarray, sample_rate: int, bpm: float, *, refine_tempo: bool = True) -> tuple[float, float]:
    """The tempo and the time of the first beat: beats at ``first_beat_s + k * 60 / bpm``.

    Beats are found in the rises of the bass band :data:`BEAT_BAND_HZ`
    (positive spectral flux, as ``onset`` in :func:`analyse` but unsmoothed,
    :data:`TEMPO_FPS` times a second), where kick drums mark the beat; a
    track with no rises there uses the flux of the whole 20-8000 Hz. A
    steady beat makes that envelope repeat at the beat frequency f, and its
    Fourier coefficient Z(f) = sum_n envelope[n] exp(-2 pi i f n) says where
    in each period the rises gather: its angle is the beat's phase (the
    circular mean of the rises, as in Grosche & Mueller's predominant local
    pulse, 2011), and its magnitude peaks at the true tempo. With
    `refine_tempo` the tempo is that peak within :data:`TEMPO_REFINE_SPAN` of
    `bpm`: one fit over the whole track, so beats do not drift away over a
    long song (0.1% off is a tenth of a beat every 100 beats). Beat times
    are moved :data:`ONSET_LEAD_S` later, as the flux rises before the hit.

    The first beat is the first point of that grid where the track is
    playing: its loudness (``rms``) at least :data:`FIRST_BEAT_SHARE` of its
    typical level, so a quiet intro is skipped. Before it the grid goes on
    (``b`` is negative there), so a pulse on ``b`` keeps its beat.

    Args:
        samples: mono audio, float32 in [-1, 1], shape (n,).
        sample_rate: in Hz, at least :data:`MIN_SAMPLE_RATE`.
        bpm: the tempo, from :func:`estimate_bpm` or the user.
        refine_tempo: search near `bpm` for the best fit; False keeps `bpm`
            (a tempo the user gave).

    Returns:
        (bpm, first_beat_s); first_beat_s is 0 when the track has no rises
        or is silent.

    Raises:
        ValueError: bpm is not a positive number.
    """
    if not (math.isfinite(bpm) and bpm > 0):
        raise ValueError(f"bpm must be a positive number, got {bpm}")
    n = math.ceil(round(samples.size * TEMPO_FPS / sample_rate, 6))
    raw = _frame_features(np.asarray(samples, dtype=np.float32), sample_rate, TEMPO_FPS, n)
    envelope = beat_envelope(raw)
    loud = raw["rms"] > SILENCE_AMPLITUDE
    if not (loud.any() and np.abs(envelope - envelope.mean()).max() > 0):
        return float(bpm), 0.0
    bpm, phase = fit_beat(envelope, TEMPO_FPS, bpm, refine_tempo=refine_tempo)
    period = 60.0 * TEMPO_FPS / bpm  # frames per beat
    # The grid's points inside the track, in frames, and the first one where
    # it plays. A hit in the first ONSET_LEAD_S makes no rise, so a point
    # that early counts too.
    lead = ONSET_LEAD_S * TEMPO_FPS
    points = (phase + lead) % period - period + period * np.arange(math.ceil(n / period) + 2)
    points = points[(points >= -lead) & (points < n - 0.5)]
    typical = raw["rms"][loud].mean()
    playing = np.flatnonzero(raw["rms"][np.round(points).astype(np.int64).clip(0)] >= FIRST_BEAT_SHARE * typical)
    first = points[playing[0]] if playing.size else points[0]
    return bpm, float(first / TEMPO_FPS)


def beat_envelope(raw: dict[str, np.ndarray]) -> np.ndarray:
    """The envelope beats are found in: the rises of the bass band, or of the
    whole 20-8000 Hz where the bass band has none; shape (n,), dB per frame.

    Args:
        raw: ``onset`` and ``beat`` as :meth:`Spectrum.measure` gives them.
    """
    return raw["beat"] if raw["beat"].mean() >= ONSET_MIN_TYPICAL_DB else raw["onset"]


def fit_beat(envelope: np.ndarray, fps: float, bpm: float, *, refine_tempo: bool = True) -> tuple[float, float]:
    """The tempo and phase of the beat in an onset envelope (see :func:`beat_grid`).

    A steady beat makes the envelope repeat at the beat frequency f, and the
    angle of its Fourier coefficient Z(f) says where in each period the rises
    gather; with `refine_tempo` the tempo is the peak of abs(Z) within
    :data:`TEMPO_REFINE_SPAN` of `bpm`.

    Args:
        envelope: rises per frame, shape (n,), e.g. :func:`beat_envelope`.
        fps: frames per second of the envelope.
        bpm: the tempo, or a first estimate of it.
        refine_tempo: search near `bpm` for the best fit.

    Returns:
        (bpm, phase): rises gather at frames ``phase + k * 60 * fps / bpm``,
        0 <= phase < one period; the hits themselves come
        :data:`ONSET_LEAD_S` later.
    """
    envelope = envelope - envelope.mean()
    n = envelope.size
    frames = np.arange(n)
    frequency = bpm / 60.0 / fps  # beats per envelope frame
    if refine_tempo:
        # |Z| peaks over a width of about 1/n: 8 candidates per width, the
        # best refined by a parabola through it and its neighbours.
        count = max(21, int(2 * TEMPO_REFINE_SPAN * frequency * 8 * n) + 1)
        candidates = frequency * (1 + np.linspace(-TEMPO_REFINE_SPAN, TEMPO_REFINE_SPAN, count))
        magnitude = np.array([abs(np.exp(-2j * np.pi * f * frames) @ envelope) for f in candidates])
        best = int(np.argmax(magnitude))
        frequency = candidates[best]
        if 0 < best < count - 1:
            left, middle, right = magnitude[best - 1 : best + 2]
            if left - 2 * middle + right < 0:
                frequency += 0.5 * (left - right) / (left - 2 * middle + right) * (candidates[1] - candidates[0])
    phase = -np.angle(np.exp(-2j * np.pi * frequency * frames) @ envelope) / (2 * np.pi * frequency)
    period = 1.0 / frequency
    return float(60.0 * fps * frequency), float(phase % period)


def audio_features(path: str | Path, *, fps: float, bpm: float | None = None) -> AudioFeatures:
    """Load a track and analyse it for an animation at `fps`.

    The tempo is estimated (:func:`estimate_bpm`) and refined, and the first
    beat found (:func:`beat_grid`); a tempo given is kept as it is, and only
    the first beat is found.

    Args:
        path: an audio file, or a video with sound.
        fps: video frames per second.
        bpm: the tempo if known; otherwise it is estimated (None if no
            steady beat is found).

    Raises:
        ValueError: see :func:`load_audio`; bpm is not a positive number.
    """
    if bpm is not None and not (math.isfinite(bpm) and bpm > 0):
        raise ValueError(f"bpm must be a positive number, got {bpm}")
    samples = load_audio(path, sample_rate=DEFAULT_SAMPLE_RATE)
    features = analyse(samples, DEFAULT_SAMPLE_RATE, fps=fps)
    given = bpm is not None
    if not given:
        bpm = estimate_bpm(analyse(samples, DEFAULT_SAMPLE_RATE, fps=TEMPO_FPS).onset, TEMPO_FPS)
    if bpm is None:
        return features
    bpm, first_beat_s = beat_grid(samples, DEFAULT_SAMPLE_RATE, bpm, refine_tempo=not given)
    return dataclasses.replace(features, bpm=bpm, first_beat_s=first_beat_s)
