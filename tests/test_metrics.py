"""Tests for pipeline/metrics.py on generated footage: a textured image panning 2 px right, 1 px down per frame."""

import itertools
import math

import numpy as np
import pytest

from conftest import textured_frame
from dreamreel.pipeline.metrics import CoherenceReport, dream_strength, measure, spectrum_slope, warping_error

HEIGHT, WIDTH, FRAMES = 48, 64, 6
NOISE_SIGMA = 8.0  # grey levels


def panning_clip(frames: int = FRAMES, seed: int = 0):
    """Generator of frames cropped from one texture, the window moving 2 px right and 1 px down each frame."""
    big = textured_frame(HEIGHT + frames, WIDTH + 2 * frames, seed)
    for t in range(frames):
        yield big[t : t + HEIGHT, 2 * t : 2 * t + WIDTH]


def with_noise(frames, sigma: float = NOISE_SIGMA, seed: int = 1):
    """The frames with independent Gaussian noise per frame (flicker with no motion behind it)."""
    rng = np.random.default_rng(seed)
    for frame in frames:
        yield np.clip(frame + rng.normal(0, sigma, frame.shape), 0, 255).astype(np.uint8)


def test_warping_error_of_input_is_small_and_noise_raises_it():
    clean = warping_error(panning_clip(), panning_clip())
    noisy = warping_error(with_noise(panning_clip()), panning_clip())
    assert clean < 0.005
    # Whole-pixel motion, so the warp copies the noise: |n_t - n_{t-1}| has mean
    # sqrt(2) * sigma * sqrt(2 / pi) = 1.13 sigma.
    assert noisy == pytest.approx(2 / math.sqrt(math.pi) * NOISE_SIGMA / 255, rel=0.15)
    assert noisy > 10 * clean


def test_flow_beats_no_motion_compensation():
    assert warping_error(panning_clip(), panning_clip(), method="none") > 10 * warping_error(
        panning_clip(), panning_clip()
    )


def test_dream_strength():
    assert dream_strength(panning_clip(), panning_clip()) == 0.0
    shifted = (np.minimum(frame, 245) + 10 for frame in panning_clip())
    assert dream_strength(shifted, (np.minimum(frame, 245) for frame in panning_clip())) == pytest.approx(10 / 255)
    # Gaussian noise: E|N(0, sigma)| = sigma * sqrt(2 / pi).
    noisy = dream_strength(with_noise(panning_clip()), panning_clip())
    assert noisy == pytest.approx(math.sqrt(2 / math.pi) * NOISE_SIGMA / 255, rel=0.1)


def test_measure_reports_both_in_one_pass():
    report = measure(with_noise(panning_clip()), panning_clip())
    assert isinstance(report, CoherenceReport)
    assert report.frames == FRAMES and report.pairs == FRAMES - 1
    assert report.warping_error == warping_error(with_noise(panning_clip()), panning_clip())
    assert report.dream_strength == dream_strength(with_noise(panning_clip()), panning_clip())


def test_scene_cuts_are_left_out():
    clip = list(panning_clip(3, seed=0)) + list(panning_clip(3, seed=5))
    report = measure(clip, clip)
    assert report.frames == 6 and report.pairs == 4
    assert report.warping_error < 0.005


def test_only_cuts_is_an_error():
    clip = [textured_frame(HEIGHT, WIDTH, seed) for seed in (1, 2, 3)]
    with pytest.raises(ValueError, match="all 2 frame pairs are scene cuts"):
        warping_error(clip, clip)


def test_lengths_must_match_without_reading_everything():
    frame = textured_frame(HEIGHT, WIDTH, 0)
    endless = itertools.repeat(frame)
    with pytest.raises(ValueError, match="outputs has 3 frames but inputs has more"):
        warping_error([frame] * 3, endless)
    with pytest.raises(ValueError, match="inputs has 2 frames but outputs has more"):
        dream_strength([frame] * 3, [frame] * 2)


def test_too_few_frames():
    frame = textured_frame(HEIGHT, WIDTH, 0)
    with pytest.raises(ValueError, match="got 1 frame"):
        warping_error([frame], [frame])
    with pytest.raises(ValueError, match="got 0 frame"):
        warping_error([], [])
    with pytest.raises(ValueError, match="empty"):
        dream_strength([], [])


def test_bad_frames():
    frame = textured_frame(HEIGHT, WIDTH, 0)
    with pytest.raises(ValueError, match=r"outputs\[1\] has shape \(48, 60, 3\) but frame 0 has \(48, 64, 3\)"):
        dream_strength([frame, frame[:, :60]], [frame, frame])
    with pytest.raises(ValueError, match=r"inputs\[0\] has shape \(24, 32, 3\)"):
        dream_strength([frame], [frame[::2, ::2]])
    with pytest.raises(ValueError, match=r"inputs\[0\] must be an RGB uint8 array .*, got float32"):
        warping_error([frame, frame], [frame.astype(np.float32), frame])


def test_unknown_flow_method():
    with pytest.raises(ValueError, match="method='raft'"):
        warping_error(panning_clip(), panning_clip(), method="raft")


def test_seam_scores_compare_the_changes_over_a_border_with_the_median_elsewhere():
    from dreamreel.pipeline.metrics import seam_scores

    changes = [0.02, 0.02, 0.03, 0.02, 0.02, 0.05, 0.02, 0.02, None, 0.02]
    # A hard border into frame 3 (pair 2), a crossfade over frames 4..5 (pairs 3-5), one at a cut (pair 8).
    assert seam_scores(changes, [(3, 3), (4, 6), (9, 9)]) == [pytest.approx(1.5), pytest.approx(2.5)]
    # A crossfade from frame 0, as `video --batch 4` plans it where the warm-up is longer than a lane
    # (this used to be refused as "outside the clip", so metrics refused the video's own output): pairs 0-2.
    assert seam_scores(changes, [(0, 3)]) == [pytest.approx(1.5)]
    with pytest.raises(ValueError, match="outside a clip of 11 frames"):
        seam_scores(changes, [(5, 12)])


def test_frame_changes_follow_the_motion_and_skip_cuts():
    from dreamreel.pipeline.metrics import frame_changes

    pan_frames = list(panning_clip())
    rng = np.random.default_rng(0)
    other = rng.integers(0, 256, pan_frames[0].shape, dtype=np.uint8)
    changes = frame_changes([*pan_frames[:3], other], [*pan_frames[:3], other])
    assert len(changes) == 3 and changes[2] is None  # a cut
    assert max(changes[:2]) < 0.01  # the pan itself, followed by the flow, barely changes


def test_measure_reports_the_inputs_floor_and_fine_detail():
    import cv2

    from dreamreel.pipeline.metrics import fine_detail

    report = measure(with_noise(panning_clip()), panning_clip())
    assert report.input_warping_error < 0.005 < report.warping_error  # the input is steady, the noise is not
    assert report.fine_detail > report.input_fine_detail > 0  # grain adds fine detail
    assert len(report.changes) == FRAMES - 1 and np.mean(report.changes) == pytest.approx(report.warping_error)
    blurred = [cv2.GaussianBlur(frame, (0, 0), 1.5) for frame in panning_clip()]
    assert fine_detail(blurred[0]) < 0.5 * fine_detail(next(panning_clip()))  # blur removes it
    with pytest.raises(ValueError, match="frame must be an RGB uint8"):
        fine_detail(blurred[0].astype(np.float32))


@pytest.fixture
def pan_video(tmp_path, make_panning_clip):
    """10 frames of a 64x64 pan as an mp4, and the same frames decoded."""
    from dreamreel.pipeline.decode import read_frames

    path = make_panning_clip(tmp_path / "pan.mp4", frames=10)
    return path, list(read_frames(path))


def save_frames(folder, frames) -> None:
    from dreamreel.pipeline.files import frame_path, save_image

    folder.mkdir()
    for t, frame in enumerate(frames):
        save_image(frame_path(folder, t), frame)


def test_measure_files_reads_a_frames_folder_against_the_input_and_rates_lane_borders(tmp_path, pan_video):
    from dreamreel.pipeline.metrics import measure_files

    path, frames = pan_video
    save_frames(tmp_path / "out", list(with_noise(frames)))
    report, seams = measure_files(path, tmp_path / "out")
    assert report.frames == 10 and seams == []
    assert report.warping_error == pytest.approx(measure(with_noise(frames), frames).warping_error)
    report, seams = measure_files(path, tmp_path / "out", batch=2, warmup=2)
    assert len(seams) == 1 and 0.3 < seams[0] < 3  # noise everywhere: the border is like any other pair
    save_frames(tmp_path / "part", frames[2:5])
    report, _ = measure_files(path, tmp_path / "part", start_s=0.07, max_frames=3)  # frames 2..4 at 29.97 fps
    assert report.frames == 3 and report.input_warping_error < 0.005 and report.dream_strength == 0

def test_measure_files_refuses_other_counts_and_sizes_naming_the_option(tmp_path, pan_video):
    from dreamreel.pipeline.metrics import measure_files

    path, frames = pan_video
    save_frames(tmp_path / "short", frames[:7])
    with pytest.raises(ValueError, match="OUTPUT has 7 frames but INPUT has 10; pass the --start"):
        measure_files(path, tmp_path / "short")
    with pytest.raises(ValueError, match="OUTPUT frames are 64x64 but INPUT frames are 32x32; pass the --max-side"):
        measure_files(path, path, max_side=32)
    with pytest.raises(ValueError, match="no such file"):
        measure_files(path, tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="--batch 0"):
        measure_files(path, path, batch=0)
    with pytest.raises(ValueError, match=r"^--warmup -5: expected a whole number from 0 to 10000$"):  # was an internal message
        measure_files(path, path, warmup=-5)


def test_measure_files_measures_what_video_wrote_from_an_odd_sized_clip(tmp_path):
    """`video` pads a 63x47 clip to 64x48 (yuv420p needs even sizes); metrics measures it against the 63x47 input."""
    from dreamreel.pipeline.decode import read_frames
    from dreamreel.pipeline.encode import EncodeSettings, FrameWriter
    from dreamreel.pipeline.ffmpeg import run_ffmpeg
    from dreamreel.pipeline.metrics import measure_files

    frames = list(panning_clip())
    save_frames(tmp_path / "png", [np.ascontiguousarray(frame[:47, :63]) for frame in frames])
    clip = tmp_path / "odd.mkv"  # lossless
    run_ffmpeg(["-framerate", "10", "-i", str(tmp_path / "png" / "frame_%06d.png"), "-c:v", "ffv1", str(clip)], what="an odd clip")
    frames = list(read_frames(clip))
    with pytest.warns(UserWarning, match="padded 63x47 to 64x48"):
        with FrameWriter(tmp_path / "out.mp4", fps=10, size=(63, 47), settings=EncodeSettings(crf=0)) as writer:
            for frame in frames:
                writer.write(frame)
    report, _ = measure_files(clip, tmp_path / "out.mp4")
    # The same pictures but for the encoder's colour conversion: 0.037, as a 62x46 clip's round trip measured;
    # frames off by one pixel measured 0.084.
    assert report.frames == len(frames) == 6 and report.dream_strength < 0.05
    with pytest.raises(ValueError, match="OUTPUT frames are 64x48 but INPUT frames are 32x24; pass the --max-side"):
        measure_files(clip, tmp_path / "out.mp4", max_side=32)


def power_law_noise(exponent: float, size: int = 256, seed: int = 0) -> np.ndarray:
    """Grey noise whose power spectrum falls as 1/f**exponent, as RGB uint8."""
    rng = np.random.default_rng(seed)
    f = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :])
    spectrum = np.fft.fft2(rng.normal(size=(size, size))) / np.maximum(f, 1 / size) ** (exponent / 2)
    grey = np.real(np.fft.ifft2(spectrum))
    grey = (grey - grey.min()) / (grey.max() - grey.min()) * 255
    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)


@pytest.mark.parametrize("exponent", [0.0, 2.0, 3.0])
def test_spectrum_slope_finds_the_power_law_of_noise(exponent):
    assert spectrum_slope(power_law_noise(exponent)) == pytest.approx(-exponent, abs=0.25)


def test_spectrum_slope_of_a_photo_is_photographic_and_small_frames_are_refused():
    import cv2
    from pathlib import Path

    photo = cv2.cvtColor(cv2.imread(str(Path(__file__).parent / "data" / "chelsea.jpg")), cv2.COLOR_BGR2RGB)
    assert -3.2 < spectrum_slope(photo) < -2.6
    with pytest.raises(ValueError, match="frame: 80x40 is too small for a spectrum slope"):
        spectrum_slope(photo[:40, :80])
