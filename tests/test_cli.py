import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from dreamreel.cli.main import main

DATA = Path(__file__).parent / "data"


def test_help_is_instant_and_imports_no_torch():
    code = (
        "import sys; from dreamreel.cli.main import build_parser; build_parser().format_help(); "
        "print('torch' in sys.modules, 'cv2' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_python_dash_m_dreamreel_runs():
    out = subprocess.run([sys.executable, "-m", "dreamreel", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("dreamreel ")


def test_image_from_noise(tmp_path, capsys):
    out = tmp_path / "noise.png"
    code = main(["image", "noise", str(out), "--size", "64x48", "--octaves", "1", "--iterations", "2", "--quiet"])
    assert code == 0
    assert cv2.imread(str(out)).shape == (48, 64, 3)
    assert "wrote" in capsys.readouterr().out


def test_image_of_a_real_photo_keeps_its_size_and_changes_it(tmp_path):
    out = tmp_path / "cat.png"
    code = main(["image", str(DATA / "chelsea.jpg"), str(out), "--max-side", "96", "--iterations", "3",
                 "--octaves", "2", "--quiet"])
    assert code == 0
    dreamed = cv2.imread(str(out)).astype(np.float32)
    source = cv2.resize(cv2.imread(str(DATA / "chelsea.jpg")), (dreamed.shape[1], dreamed.shape[0]), interpolation=cv2.INTER_AREA)
    assert dreamed.shape[:2] == (64, 96)
    assert np.abs(dreamed - source).mean() > 3  # visibly dreamed


def make_bad_inputs(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video")
    (tmp_path / "folder").mkdir()
    return {"empty": tmp_path / "empty.png", "text": tmp_path / "text.mp4", "folder": tmp_path / "folder"}


CASES = [
    (["image", "{tmp}/missing.png", "{tmp}/o.png"], "missing.png"),
    (["image", "{tmp}/folder", "{tmp}/o.png"], "folder"),
    (["image", "{tmp}/empty.png", "{tmp}/o.png"], "empty.png"),
    (["image", "noise", "{tmp}/nofolder/o.png"], "does not exist"),
    (["image", "noise", "{tmp}/o.txt"], "unknown picture type"),
    (["image", "noise", "{tmp}/o.png", "--iterations", "-3"], "--iterations -3"),
    (["image", "noise", "{tmp}/o.png", "--model", "alexnet"], "unknown model 'alexnet'"),
    (["image", "noise", "{tmp}/o.png", "--objective", "blocks.44"], "unknown layer 'blocks.44'"),
    (["image", "noise", "{tmp}/o.png", "--preset", "nope"], "available:"),
    (["image", "noise", "{tmp}/o.png", "--precision", "fp16", "--device", "cpu"], "not supported on the CPU"),
    (["image", "noise", "{tmp}/o.png", "--size", "0x0"], "width and height"),
    (["video", "{tmp}/text.mp4", "{tmp}/o.mp4"], "text.mp4"),
    (["video", "{tmp}/missing.mp4", "{tmp}/o.mp4"], "missing.mp4"),
    (["video", str(DATA / "chelsea.jpg"), "{tmp}/o.mp4"], "is an image, not a video"),
    (["zoom", "{tmp}/o.mp4", "--zoom", "0"], "zoom"),
    (["zoom", "{tmp}/o.mp4", "--zoom", "0:(1.02"], "zoom: column"),
    (["zoom", "{tmp}/o.mp4", "--frames", "3", "--seconds", "2"], "not allowed with"),
    (["zoom", "{tmp}/o.mp4", "--preset", "zoom-bass-dream"], "no --audio"),
    (["zoom", "{tmp}/o.xyz"], ".xyz"),
    (["layers", "vgg17"], "did you mean vgg19 or vgg16"),
    (["presets", "zoom-drfit"], "did you mean 'zoom-drift'"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(c[0][:2]) + f" #{i}" for i, c in enumerate(CASES)])
def test_bad_input_gives_one_line_and_exit_code_2(tmp_path, capsys, argv, message):
    make_bad_inputs(tmp_path)
    try:
        code = main([a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--quiet"] * (argv[0] in ("image", "video", "zoom")))
    except SystemExit as exit_info:  # argparse's own checks
        code = exit_info.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert message in err


def test_audio_only_as_video_and_silent_video_as_audio(tmp_path, capsys):
    from dreamreel.pipeline.ffmpeg import run_ffmpeg

    audio_only = tmp_path / "song.m4a"
    silent = tmp_path / "silent.mp4"
    run_ffmpeg(["-f", "lavfi", "-i", "sine=frequency=220:duration=1", str(audio_only)], what="making a test song")
    run_ffmpeg(["-f", "lavfi", "-i", "testsrc=size=64x48:rate=10:duration=1", "-pix_fmt", "yuv420p", str(silent)],
               what="making a test clip")
    assert main(["video", str(audio_only), str(tmp_path / "o.mp4"), "--quiet"]) == 2
    assert "has no video stream (only audio)" in capsys.readouterr().err
    assert main(["zoom", str(tmp_path / "z.mp4"), "--audio", str(silent), "--frames", "2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no audio stream" in err and len(err.splitlines()) == 1


def test_argparse_errors_are_one_line_too(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["image"])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_models_and_presets_listings(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet-lite0" in out and "embedded" in out and "googlenet" in out
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "zoom-beat-pulse" in out and "mid-creatures" in out
    assert main(["presets", "zoom-spiral"]) == 0
    assert "angle" in capsys.readouterr().out


def test_layers_lists_names_channels_and_aliases(capsys):
    assert main(["layers", "efficientnet-lite0"]) == 0
    out = capsys.readouterr().out
    assert "blocks.4" in out and "112 channels" in out and "mid" in out
