"""decode: video frames streamed upright, counted and selected.

Clips are generated with ffmpeg's lavfi sources. In the "counting" clip frame
i is a flat grey of level 20*i, so a decoded frame tells which one it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from dreamreel.pipeline.decode import output_size, probe_video, read_frames
from dreamreel.pipeline.ffmpeg import run_ffmpeg

NTSC = Fraction(30000, 1001)
GREY_STEP = 20  # grey level added per frame in the counting clip


def lavfi(out: Path, graph: str, *output_args: str) -> Path:
    """Render the lavfi filter graph ``graph`` into ``out``."""
    run_ffmpeg(["-f", "lavfi", "-i", graph, *output_args, str(out)], what=f"making test clip {out.name}")
    return out


def frame_index(frame: np.ndarray) -> int:
    """Which frame of the counting clip this is."""
    return round(float(frame.mean()) / GREY_STEP)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="module")
def counting_clip(clips) -> Path:
    """12 frames, 64x48, 30000/1001 fps, frame i grey 20*i (lossless H.264)."""
    return lavfi(
        clips / "counting.mp4",
        f"color=c=black:s=64x48:r=30000/1001,format=rgb24,geq=r=N*{GREY_STEP}:g=N*{GREY_STEP}:b=N*{GREY_STEP}",
        "-frames:v", "12", "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv420p",
    )  # fmt: skip


@pytest.fixture(scope="module")
def long_clip(clips) -> Path:
    """50 busy 64x48 frames at 25 fps, every one a keyframe, index at the front:
    cutting the file in half leaves a readable header and about half the frames."""
    return lavfi(
        clips / "long.mp4",
        "testsrc=s=64x48:r=25",
        "-frames:v", "50", "-c:v", "libx264", "-g", "1", "-movflags", "+faststart",
    )  # fmt: skip


@pytest.fixture(scope="module")
def truncated_clip(long_clip) -> Path:
    data = long_clip.read_bytes()
    out = long_clip.with_name("truncated.mp4")
    out.write_bytes(data[: len(data) // 2])
    return out


# --- probing -------------------------------------------------------------------


def test_probe_video_describes_the_clip(counting_clip):
    info = probe_video(counting_clip)
    assert (info.width, info.height) == (64, 48)
    assert info.fps == NTSC  # exact, not 29.97002997
    assert info.frame_count_estimate == 12
    assert info.duration_s == pytest.approx(12 / NTSC, abs=0.02)
    assert (info.rotation_deg, info.has_audio, info.audio_channels) == (0, False, None)


def test_probe_video_reads_whole_frame_rates_as_integers(long_clip):
    assert probe_video(long_clip).fps == Fraction(25)


def _bad_input(kind: str, folder: Path, long_clip: Path) -> Path:
    """A file of the given kind of wrongness in ``folder``."""
    path = folder / f"{kind}.mp4"
    if kind == "missing":
        pass
    elif kind == "folder":
        path.mkdir()
    elif kind == "empty":
        path.touch()
    elif kind == "text":
        path.write_text("hello, I am not a video\n")
    elif kind == "audio":
        lavfi(path, "sine=frequency=440:duration=0.2", "-c:a", "aac")
    elif kind == "image":  # a PNG wearing a video's name
        lavfi(path.with_suffix(".png"), "testsrc=s=32x24", "-frames:v", "1")
        path.with_suffix(".png").rename(path)
    elif kind == "no_frames":  # header intact, frame data cut off
        data = long_clip.read_bytes()
        path.write_bytes(data[: data.index(b"mdat") + 20])
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "no such file"),
        ("folder", "is a folder"),
        ("empty", "is empty"),
        ("text", "not a media file"),
        ("audio", "has no video stream"),
        ("image", "is an image, not a video"),
        ("no_frames", "not one frame decodes"),
    ],
)
def test_probe_video_and_read_frames_reject_bad_files(tmp_path, long_clip, kind, message):
    path = _bad_input(kind, tmp_path, long_clip)
    for call in (probe_video, read_frames):
        with pytest.raises(ValueError, match=message) as err:
            call(path)
        assert str(path) in str(err.value)


# --- reading frames --------------------------------------------------------------


def test_read_frames_streams_every_frame_in_order(counting_clip):
    frames = read_frames(counting_clip)
    assert isinstance(frames, Iterator)  # a stream, not a list held in memory
    frames = list(frames)
    assert [frame_index(f) for f in frames] == list(range(12))
    assert all(f.shape == (48, 64, 3) and f.dtype == np.uint8 for f in frames)


@pytest.mark.parametrize(
    "options, expected",
    [
        # at 30000/1001 fps, 0.1 s is frame round(2.997) = 3 and 0.2 s is frame 6
        (dict(start_s=0.1), list(range(3, 12))),
        (dict(start_s=0.1, end_s=0.2), [3, 4, 5]),
        (dict(max_frames=4), [0, 1, 2, 3]),
        (dict(start_s=0.1, end_s=0.3, max_frames=2), [3, 4]),
        (dict(end_s=10.0), list(range(12))),
        (dict(start_s=7 / NTSC, max_frames=np.int64(2)), [7, 8]),  # exact Fraction, numpy count
        # skip counts frames from the clip's first; max_frames and end_s still bound the clip
        (dict(start_s=0.1, skip=4), list(range(7, 12))),
        (dict(start_s=0.1, max_frames=5, skip=3), [6, 7]),
        (dict(start_s=0.1, end_s=0.2, skip=3), []),
    ],
)
def test_start_end_and_max_frames_select_frames(counting_clip, options, expected):
    assert [frame_index(f) for f in read_frames(counting_clip, **options)] == expected


def test_max_side_shrinks_to_even_sides(counting_clip):
    frames = list(read_frames(counting_clip, max_side=27))
    assert output_size(64, 48, 27) == (26, 20)
    assert {f.shape for f in frames} == {(20, 26, 3)}
    assert [frame_index(f) for f in frames] == list(range(12))


@pytest.mark.parametrize(
    "size, max_side, expected",
    [
        ((1920, 1080), 500, (500, 282)),
        ((1080, 1920), 500, (282, 500)),
        ((64, 48), None, (64, 48)),
        ((33, 21), 64, (33, 21)),  # fits: never enlarged, odd sizes kept
        ((33, 21), 33, (33, 21)),
        ((400, 3), 16, (16, 2)),  # a side never shrinks below 2
    ],
)
def test_output_size(size, max_side, expected):
    assert output_size(*size, max_side) == expected


@pytest.mark.parametrize(
    "turn, display_rotation, rotation_deg",
    [
        ("transpose=clock", "90", 90),  # phone held upright, stored sideways
        ("transpose=cclock", "-90", 270),
        ("transpose=clock,transpose=clock", "180", 180),
    ],
)
def test_rotation_metadata_gives_upright_frames(clips, turn, display_rotation, rotation_deg):
    # Upright picture: 32 wide, 48 tall, white top-left quarter. It is stored
    # turned, with display rotation metadata that turns it back.
    stored = lavfi(
        clips / f"stored_{rotation_deg}.mp4",
        f"color=c=black:s=32x48:r=25,drawbox=x=0:y=0:w=16:h=24:c=white:t=fill,{turn}",
        "-frames:v", "2", "-c:v", "libx264", "-qp", "0",
    )  # fmt: skip
    rotated = clips / f"rotated_{rotation_deg}.mp4"
    run_ffmpeg(["-display_rotation", display_rotation, "-i", str(stored), "-c", "copy", str(rotated)], what="tagging")

    info = probe_video(rotated)
    assert (info.width, info.height, info.rotation_deg) == (32, 48, rotation_deg)
    frames = list(read_frames(rotated))
    assert len(frames) == 2
    grey = frames[0].mean(axis=2)
    assert grey.shape == (48, 32)
    assert grey[:24, :16].mean() > 200
    assert grey[24:, :].mean() < 30 and grey[:, 16:].mean() < 30


def test_truncated_file_yields_the_frames_that_decode_and_warns(truncated_clip):
    with pytest.warns(UserWarning, match="may be truncated") as record:
        frames = list(read_frames(truncated_clip))
    assert 0 < len(frames) < 50
    assert f"stopped at frame {len(frames)}" in str(record[0].message)
    assert str(truncated_clip) in str(record[0].message)


def test_start_beyond_the_frames_that_decode_is_refused(truncated_clip):
    # The header says 2 s; only about 1 s decodes.
    with pytest.raises(ValueError, match="--start"):
        list(read_frames(truncated_clip, start_s=1.8))


def test_full_read_of_an_intact_file_does_not_warn(long_clip, recwarn):
    assert len(list(read_frames(long_clip))) == 50
    assert not recwarn.list


@pytest.mark.parametrize(
    "options, flag",
    [
        (dict(start_s=-1.0), "--start"),
        (dict(start_s=float("nan")), "--start"),
        (dict(start_s=5.0), "--start"),  # past the end of a 0.4 s clip
        (dict(start_s=0.3, end_s=0.2), "--end"),
        (dict(start_s=0.1, end_s=0.11), "--end"),  # both in frame 3
        (dict(max_frames=0), "--max-frames"),
        (dict(max_frames=2.5), "--max-frames"),
        (dict(max_side=15), "--max-side"),
        (dict(skip=-1), "skip"),
        # infinities used to overflow round() into an OverflowError (exit 1)
        (dict(end_s=float("inf")), r"^--end inf: expected a finite number of seconds after --start \(0.0\); leave --end out"),
        (dict(start_s=float("inf")), r"^--start inf: expected a finite number of seconds >= 0$"),
    ],
)
def test_bad_options_name_their_flag(counting_clip, options, flag):
    with pytest.raises(ValueError, match=flag):
        read_frames(counting_clip, **options)


def test_output_size_refuses_a_max_side_that_leaves_no_pixels():
    # `image --max-side 1` used to shrink a picture to 0 pixels wide (a RuntimeError, exit 1)
    with pytest.raises(ValueError, match=r"^--max-side 1: expected a whole number of pixels >= 16$"):
        output_size(512, 512, 1)
    assert output_size(512, 256, 16) == (16, 8)


# --- starting late: seeking ----------------------------------------------------------


@pytest.mark.parametrize(
    "name, codec_args",
    [
        ("gop.mp4", ["-c:v", "libx264", "-g", "12", "-bf", "3"]),  # B-frames, a keyframe every 12
        ("gop.mkv", ["-c:v", "libx264", "-g", "10"]),
        ("gop.webm", ["-c:v", "libvpx-vp9", "-g", "12", "-b:v", "200k"]),
    ],
)
def test_a_late_start_seeks_to_exactly_the_frame_decoding_from_0_gives(clips, name, codec_args):
    clip = lavfi(clips / name, "testsrc=s=64x48:r=25:d=2", *codec_args)
    every = list(read_frames(clip))
    assert len(every) == 50
    for k in (1, 11, 12, 13, 30, 49):
        np.testing.assert_array_equal(next(read_frames(clip, start_s=Fraction(k, 25))), every[k], err_msg=f"frame {k}")


def test_a_late_start_does_not_decode_the_frames_before_it(long_clip, monkeypatch):
    from dreamreel.pipeline import decode

    decoded = []
    real_open = decode._open_capture

    class Counting:
        def __init__(self, capture):
            self.capture = capture

        def grab(self):
            decoded.append(1)
            return self.capture.grab()

        def read(self):
            decoded.append(1)
            return self.capture.read()

        def __getattr__(self, name):
            return getattr(self.capture, name)

    monkeypatch.setattr(decode, "_open_capture", lambda path: Counting(real_open(path)))
    assert len(list(read_frames(long_clip, start_s=Fraction(45, 25)))) == 5
    assert len(decoded) == 1 + 5 + 1  # the probe's check of frame 0, five frames, the read that finds the end
