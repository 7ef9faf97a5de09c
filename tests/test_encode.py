"""encode: frames out as video (exact fps, even sizes, audio kept), GIF, or PNG folder.

Written files are read back with the decoder and ffmpeg's probe. Frame i of
every test clip is a flat grey of level 20*i, so a decoded frame tells which
one it is, and a red corner shows that the channels kept their order.
"""

from __future__ import annotations

import os
import subprocess
from contextlib import nullcontext
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from dreamreel.pipeline.decode import probe_video, read_frames
from dreamreel.pipeline.encode import EncodeSettings, FrameWriter, output_kind
from dreamreel.pipeline.ffmpeg import FFmpegError, probe, run_ffmpeg
from dreamreel.pipeline.files import load_image

NTSC = Fraction(30000, 1001)
GREY_STEP = 20
ODD = (33, 21)  # (width, height) that yuv420p cannot hold as is


def counting_frames(n: int, size: tuple[int, int] = ODD) -> list[np.ndarray]:
    """n RGB frames of ``size``: frame i grey 20*i with a red 8x8 top-left corner."""
    frames = []
    for i in range(n):
        frame = np.full((size[1], size[0], 3), GREY_STEP * i, np.uint8)
        frame[:8, :8] = (255, 0, 0)
        frames.append(frame)
    return frames


def frame_index(frame: np.ndarray) -> int:
    """Which counting frame this is, judged away from the red corner."""
    return round(float(frame[10:, 10:].mean()) / GREY_STEP)


def write_clip(path: Path, n: int = 12, **options) -> Path:
    """Write ``n`` counting frames of size ODD at 30000/1001 fps; padding warnings are expected."""
    with pytest.warns(UserWarning, match="padded") if output_kind(path) == "video" else nullcontext():
        with FrameWriter(path, fps=NTSC, size=ODD, **options) as writer:
            for frame in counting_frames(n):
                writer.write(frame)
    return path


def lavfi(out: Path, graph: str, *output_args: str) -> Path:
    """Render the lavfi filter graph ``graph`` into ``out``."""
    run_ffmpeg(["-f", "lavfi", "-i", graph, *output_args, str(out)], what=f"making test file {out.name}")
    return out


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sources")


@pytest.fixture(scope="module")
def stereo_wav(sources) -> Path:
    """1 s of 440 Hz, stereo PCM (a codec MP4 players do not play, so it is re-encoded)."""
    return lavfi(sources / "stereo.wav", "sine=frequency=440:duration=1", "-ac", "2")


@pytest.fixture(scope="module")
def surround_m4a(sources) -> Path:
    """1 s of 440 Hz, 5.1 AAC."""
    return lavfi(sources / "surround.m4a", "sine=frequency=440:duration=1", "-ac", "6", "-c:a", "aac")


@pytest.fixture(scope="module")
def silent_video(sources) -> Path:
    return lavfi(sources / "silent.mp4", "testsrc=s=32x24:r=25", "-frames:v", "5")


def temp_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- output kinds and settings ---------------------------------------------------


@pytest.mark.parametrize(
    "path, kind",
    [
        ("out.mp4", "video"),
        ("OUT.MOV", "video"),
        ("out.mkv", "video"),
        ("out.webm", "video"),
        ("out.gif", "gif"),
        ("frames", "frames"),
        ("out.frames/", "frames"),
    ],
)
def test_output_kind(path, kind):
    assert output_kind(path) == kind


def test_output_kind_of_an_existing_folder_is_frames(tmp_path):
    (tmp_path / "looks_like.mp4").mkdir()
    assert output_kind(tmp_path / "looks_like.mp4") == "frames"


def test_unknown_output_suffix_lists_the_accepted_kinds():
    with pytest.raises(ValueError, match=r"out\.avi.*\.mp4.*\.webm.*\.gif.*folder"):
        output_kind("out.avi")


@pytest.mark.parametrize(
    "options, name",
    [(dict(crf=-1), "--crf"), (dict(crf=52), "--crf"), (dict(crf=18.5), "--crf"), (dict(codec=""), "--codec"),
     (dict(speed="fastest"), "--speed 'fastest': expected one of ultrafast, ")],
)  # fmt: skip
def test_encode_settings_reject_bad_values_naming_the_setting(options, name):
    with pytest.raises(ValueError, match=name):
        EncodeSettings(**options)


# --- video ---------------------------------------------------------------------------


def test_mp4_round_trip_pads_odd_sizes_and_keeps_count_fps_and_frames(tmp_path):
    out = tmp_path / "out.mp4"
    with pytest.warns(UserWarning, match=r"padded 33x21 to 34x22 \(yuv420p needs even sizes\)"):
        with FrameWriter(out, fps=NTSC, size=ODD) as writer:
            for frame in counting_frames(12):
                writer.write(frame)
            assert writer.frames_written == 12

    info = probe_video(out)
    assert (info.width, info.height) == (34, 22)
    assert info.fps == NTSC
    frames = list(read_frames(out))
    assert [frame_index(f) for f in frames] == list(range(12))
    red = frames[0][:6, :6].reshape(-1, 3).mean(axis=0)
    assert red[0] > 200 and red[2] < 60
    # Padding repeats the edge instead of adding a dark line.
    last = frames[-1].astype(int)
    assert np.abs(last[:, 33] - last[:, 32]).max() <= 4
    assert np.abs(last[21, :] - last[20, :]).max() <= 4
    assert probe(out).has_audio is False
    assert temp_leftovers(tmp_path) == []


def test_stereo_audio_is_kept_and_cut_to_the_video_length(tmp_path, stereo_wav):
    out = write_clip(tmp_path / "out.mp4", audio_source=stereo_wav)
    media = probe(out)
    assert (media.has_audio, media.audio_channels) == (True, "stereo")
    assert media.audio_codec == "aac"  # PCM re-encoded for MP4 players
    assert media.duration_s == pytest.approx(float(12 / NTSC), abs=0.05)  # the source lasts 1 s
    assert len(list(read_frames(out))) == 12
    assert temp_leftovers(tmp_path) == []


@pytest.mark.parametrize("suffix, codec, audio_codec", [(".mp4", "libx264", "aac"), (".webm", "libvpx-vp9", "opus")])
def test_surround_audio_keeps_its_six_channels(tmp_path, surround_m4a, suffix, codec, audio_codec):
    out = write_clip(tmp_path / f"out{suffix}", settings=EncodeSettings(codec=codec), audio_source=surround_m4a)
    media = probe(out)
    assert (media.audio_channels, media.audio_codec) == ("5.1", audio_codec)
    assert probe_video(out).fps == NTSC


def test_audio_start_offsets_into_the_source(tmp_path, stereo_wav):
    # 1 s of source from 0.8 s: 0.2 s of audio under 0.4 s of video.
    out = write_clip(tmp_path / "out.mkv", audio_source=stereo_wav, audio_start_s=0.8)
    assert probe(out).has_audio
    assert probe(out).duration_s < 0.45


def decoded_mono(path: Path, rate: int = 8000) -> np.ndarray:
    """The sound of ``path`` as mono float samples at ``rate``."""
    from dreamreel.pipeline.ffmpeg import ffmpeg_exe

    raw = subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(path), "-map", "0:a", "-f", "s16le", "-ac", "1",
                          "-ar", str(rate), "-"], capture_output=True, check=True).stdout  # fmt: skip
    return np.frombuffer(raw, np.int16) / 32768


@pytest.mark.parametrize("start_s", [0.0, 0.25])
def test_audio_added_at_the_end_loops_one_stretch_sample_exact(tmp_path, sources, start_s):
    """A tone of 0.3 s looped every 0.5 s (silence fills the loop) under 3 s of video, starting 0.25 s into the loop."""
    tone = lavfi(sources / f"tone{start_s}.m4a", "sine=frequency=440:duration=0.3:sample_rate=8000", "-c:a", "aac")
    with FrameWriter(tmp_path / "out.mp4", fps=30, size=(32, 24)) as writer:
        for _ in range(90):
            writer.write(np.zeros((24, 32, 3), np.uint8))
        writer.add_audio(tone, start_s=start_s, loop_s=0.5)
    loud = np.abs(decoded_mono(tmp_path / "out.mp4")).reshape(-1, 400).max(1) > 0.1  # 50 ms steps
    assert loud.size == 60  # cut to the video's 3 s
    one_loop = np.arange(10) * 0.05 + start_s  # where each step of the first loop falls within the sound
    expected = np.tile((one_loop % 0.5) < 0.3 - 1e-9, 6)
    assert (loud != expected).sum() <= 2, (loud.astype(int), expected.astype(int))  # an edge of a tone may go either way
    assert temp_leftovers(tmp_path) == []


def test_audio_added_at_the_end_is_checked(tmp_path, stereo_wav, silent_video):
    writer = FrameWriter(tmp_path / "out.mp4", fps=30, size=(32, 24))
    with pytest.raises(ValueError, match="no such file"):
        writer.add_audio(tmp_path / "missing.wav")
    with pytest.raises(ValueError, match="start_s=0.6"):
        writer.add_audio(stereo_wav, start_s=0.6, loop_s=0.5)
    writer.add_audio(silent_video)  # no sound: none added
    writer.write(counting_frames(1, (32, 24))[0])
    writer.close()
    assert not probe(tmp_path / "out.mp4").has_audio
    with pytest.raises(ValueError, match="the writer is closed"):
        writer.add_audio(stereo_wav)


def test_source_without_audio_or_keep_audio_off_gives_no_audio(tmp_path, silent_video, stereo_wav):
    assert not probe(write_clip(tmp_path / "a.mp4", audio_source=silent_video)).has_audio
    off = EncodeSettings(keep_audio=False)
    assert not probe(write_clip(tmp_path / "b.mp4", audio_source=stereo_wav, settings=off)).has_audio


def test_exception_inside_with_leaves_nothing_behind(tmp_path, stereo_wav):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"the previous run's output")
    with pytest.raises(KeyError), pytest.warns(UserWarning, match="padded"):
        with FrameWriter(out, fps=NTSC, size=ODD, audio_source=stereo_wav) as writer:
            writer.write(counting_frames(1)[0])
            raise KeyError("dreaming failed")
    assert out.read_bytes() == b"the previous run's output"
    assert temp_leftovers(tmp_path) == []


def test_ffmpeg_failure_raises_ffmpeg_error_with_its_message(tmp_path):
    out = tmp_path / "out.mkv"
    with pytest.raises(FFmpegError, match="no_such_encoder"):
        with FrameWriter(out, fps=NTSC, size=(32, 24), settings=EncodeSettings(codec="no_such_encoder")) as writer:
            writer.write(counting_frames(1, (32, 24))[0])
    assert not out.exists()
    assert temp_leftovers(tmp_path) == []


def test_closing_without_frames_is_an_error_and_leaves_nothing(tmp_path):
    writer = FrameWriter(tmp_path / "out.mp4", fps=25, size=(32, 24))
    with pytest.raises(ValueError, match="no frames"):
        writer.close()
    assert list(tmp_path.iterdir()) == []


# --- GIF and frames folder -------------------------------------------------------------


def test_gif_keeps_size_and_frames(tmp_path):
    out = write_clip(tmp_path / "out.gif")
    info = probe_video(out)
    assert (info.width, info.height) == ODD  # no padding needed
    assert [frame_index(f) for f in read_frames(out)] == list(range(12))
    assert temp_leftovers(tmp_path) == []


def test_frames_folder_holds_numbered_lossless_pngs(tmp_path):
    out = write_clip(tmp_path / "frames", n=3)
    assert sorted(p.name for p in out.iterdir()) == ["frame_000000.png", "frame_000001.png", "frame_000002.png"]
    np.testing.assert_array_equal(load_image(out / "frame_000002.png"), counting_frames(3)[2])  # numbered from 0


@pytest.mark.parametrize("umask", [0o022, 0o027])
@pytest.mark.parametrize("name", ["out.mp4", "out.gif", "frames"])
def test_finished_outputs_get_the_usual_mode_not_the_temporary_files(tmp_path, name, umask, stereo_wav):
    # They are written under a temporary name and renamed; they once kept
    # mkstemp's 0o600, readable by their owner only.
    previous = os.umask(umask)
    try:
        out = write_clip(tmp_path / name, n=2, audio_source=stereo_wav)  # .mp4: muxed, a second temporary file
    finally:
        os.umask(previous)
    files = [p for p in out.iterdir()] if out.is_dir() else [out]
    assert files and {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o666 & ~umask)}


def test_frames_folder_with_earlier_frames_is_refused(tmp_path):
    write_clip(tmp_path / "frames", n=1)
    with pytest.raises(ValueError, match="earlier run"):
        FrameWriter(tmp_path / "frames", fps=25, size=ODD)


# --- checks made before any work ------------------------------------------------------------


@pytest.mark.parametrize(
    "path, options, message",
    [
        ("missing_dir/out.mp4", {}, "does not exist"),
        ("missing_dir/frames", {}, "does not exist"),
        ("out.avi", {}, "cannot write"),
        ("out.webm", {}, "--codec libvpx-vp9"),
        ("out.mp4", dict(fps=29.97), "Fraction"),
        ("out.mp4", dict(fps=0), "fps"),
        ("out.mp4", dict(size=(0, 24)), "size"),
        ("out.mp4", dict(audio_source="missing.wav"), "missing.wav: no such file"),
        ("out.mp4", dict(audio_start_s=-1.0), "audio_start_s"),
    ],
)
def test_bad_construction_is_refused_before_any_work(tmp_path, path, options, message):
    options = {"fps": NTSC, "size": (32, 24), **options}
    if "audio_source" in options:
        options["audio_source"] = tmp_path / options["audio_source"]
    with pytest.raises(ValueError, match=message):
        FrameWriter(tmp_path / path, **options)
    assert list(tmp_path.iterdir()) == []


def test_read_only_folder_is_refused(tmp_path, monkeypatch):
    # The folder reads as not writable the way os.access reports it to a
    # normal user; a chmod would not do, since root (CI) may write anywhere.
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != tmp_path and access(path, mode, **kw))
    with pytest.raises(ValueError, match="not writable"):
        FrameWriter(tmp_path / "out.mp4", fps=25, size=(32, 24))
    assert list(tmp_path.iterdir()) == []


def test_frames_of_the_wrong_size_or_type_are_refused(tmp_path):
    with FrameWriter(tmp_path / "frames", fps=25, size=(32, 24)) as writer:
        with pytest.raises(ValueError, match="does not match"):
            writer.write(np.zeros((32, 24, 3), np.uint8))  # (H, W) swapped
        with pytest.raises(ValueError, match="uint8"):
            writer.write(np.zeros((24, 32, 3), np.float32))
        assert writer.frames_written == 0


# --- which encoder: NVENC where ffmpeg can use it, else x264 -----------------------------------

FAKE_LISTING = """Encoders:
 V..... = Video
 ------
 V....D libx264              libx264 H.264 / AVC / MPEG-4 AVC / MPEG-4 part 10 (codec h264)
{nvenc} A....D aac                  AAC (Advanced Audio Coding)
"""
NVENC_LINE = " V....D h264_nvenc           NVIDIA NVENC H.264 encoder (codec h264)\n"


@pytest.fixture
def fake_ffmpeg(tmp_path, monkeypatch):
    """``fake_ffmpeg(listed=..., works=...)``: an ffmpeg that lists NVENC or not and whose trial encode works or not.

    Each call is logged to ``calls.log``; the path is what ``ffmpeg_exe`` returns.
    """
    from dreamreel.pipeline import encode

    encode._warn_once.cache_clear()

    def make(*, listed: bool, works: bool) -> Path:
        listing = tmp_path / "listing.txt"
        listing.write_text(FAKE_LISTING.format(nvenc=NVENC_LINE if listed else ""))
        exe = tmp_path / f"ffmpeg-{listed}-{works}"
        exe.write_text(
            "#!/bin/sh\n"
            f'echo "$*" >> {tmp_path / "calls.log"}\n'
            f'case "$*" in *-encoders*) cat {listing}; exit 0;; esac\n'
            + ("exit 0\n" if works else 'echo "[h264_nvenc @ 0x5581] Cannot load libcuda.so.1" >&2\n'
               'echo "[vost#0:0/h264_nvenc @ 0x5582] Error while opening encoder" >&2\nexit 1\n')
        )
        exe.chmod(0o755)
        monkeypatch.setattr("dreamreel.pipeline.encode.ffmpeg_exe", lambda: str(exe))
        return exe

    return make


def trial_runs(tmp_path) -> int:
    log = tmp_path / "calls.log"
    return sum("-frames:v 1" in line for line in log.read_text().splitlines()) if log.exists() else 0


def test_auto_uses_nvenc_where_the_trial_encode_works(tmp_path, fake_ffmpeg, recwarn):
    from dreamreel.pipeline.encode import codec_args, video_codec

    fake_ffmpeg(listed=True, works=True)
    assert video_codec("auto") == video_codec("h264_nvenc") == "h264_nvenc"
    assert trial_runs(tmp_path) == 1  # detected once per ffmpeg binary
    assert not recwarn.list
    args = codec_args("h264_nvenc", EncodeSettings(crf=20, speed="veryfast"))
    assert args == ["-c:v", "h264_nvenc", "-preset", "p2", "-rc", "vbr", "-cq", "20", "-b:v", "0"]


def test_listed_nvenc_without_a_gpu_falls_back_to_x264_with_one_warning(tmp_path, fake_ffmpeg, monkeypatch):
    from dreamreel.pipeline import encode
    from dreamreel.pipeline.encode import video_codec

    fake_ffmpeg(listed=True, works=False)
    monkeypatch.setattr(encode, "_cuda_present", lambda: True)  # a GPU the driver cannot reach, say
    with pytest.warns(UserWarning) as caught:
        assert video_codec("auto") == "libx264"
        assert video_codec("auto") == "libx264"  # a second video in the same run: no second warning
    assert [str(w.message) for w in caught] == [
        "h264_nvenc cannot encode here (Cannot load libcuda.so.1); encoding with libx264"
    ]


def test_auto_on_a_machine_without_a_gpu_gives_x264_quietly(tmp_path, fake_ffmpeg, monkeypatch, recwarn):
    from dreamreel.pipeline import encode

    fake_ffmpeg(listed=True, works=False)
    monkeypatch.setattr(encode, "_cuda_present", lambda: False)
    assert encode.video_codec("auto") == "libx264"
    assert not recwarn.list


def test_ffmpeg_without_nvenc_gives_x264_quietly_unless_nvenc_was_asked_for(tmp_path, fake_ffmpeg, recwarn):
    from dreamreel.pipeline.encode import video_codec

    exe = fake_ffmpeg(listed=False, works=False)
    assert video_codec("auto") == "libx264"
    assert not recwarn.list and trial_runs(tmp_path) == 0  # nothing to try
    with pytest.warns(UserWarning, match=f"this ffmpeg \\({exe}\\) has no h264_nvenc encoder.*libx264"):
        assert video_codec("h264_nvenc") == "libx264"


def test_other_codecs_are_used_as_named_without_asking_ffmpeg(tmp_path, fake_ffmpeg):
    from dreamreel.pipeline.encode import codec_args, video_codec

    fake_ffmpeg(listed=True, works=True)
    assert video_codec("libvpx-vp9") == "libvpx-vp9" and video_codec("libx264") == "libx264"
    assert not (tmp_path / "calls.log").exists()
    assert codec_args("libx264", EncodeSettings(crf=18, speed="faster")) == ["-c:v", "libx264", "-crf", "18", "-preset", "faster"]
    assert codec_args("libvpx-vp9", EncodeSettings()) == ["-c:v", "libvpx-vp9", "-crf", "18", "-b:v", "0"]


def test_the_real_ffmpeg_encodes_with_what_auto_picks(tmp_path):
    frames = counting_frames(3, (32, 24))
    with FrameWriter(tmp_path / "out.mp4", fps=25, size=(32, 24), settings=EncodeSettings(keep_audio=False)) as writer:
        for frame in frames:
            writer.write(frame)
    assert writer.codec in ("h264_nvenc", "libx264")  # NVENC where this machine has a GPU for it
    assert [frame_index(f) for f in read_frames(tmp_path / "out.mp4")] == [0, 1, 2]
