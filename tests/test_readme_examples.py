"""Every command line of the README and of the docs/*.md pages runs as documented.

Each command of their ```bash blocks (``a && b`` is two) is one of:

* a ``dreamreel image`` line: run as written, on small stand-ins for the
  files it names (photo.jpg, my_finetune.pth, classifier.onnx, ...);
* any other ``dreamreel`` line: run at a tiny size, on stand-ins (a
  22-second 48x32 clip at 2 fps, an 8-second beat, ...): zoom lengths and
  sizes and live durations are cut down (:func:`tiny`), one octave and one
  ascent step are added, ``bench`` runs ``--quick``; a ``metrics`` line first
  dreams the output it measures, with its clip options; ``--ray`` lines start
  a local Ray;
* listed in :data:`NOT_RUNNABLE` with the reason it cannot run here (the
  network, a cluster, a browser server, the test suite itself).

A new line that is none of these fails the test; so does a listed line that
is no longer documented. A line naming a file this test cannot make fails
with the CLI's own "no such file" message: teach ``MAKERS`` to make it.
The objectives of the table in docs/dreaming.md are run the same way, and its
example preset (its ```toml block) is the ``mine.toml`` the examples load.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dreamreel.cli.main import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
DREAMING = ROOT / "docs" / "dreaming.md"  # the dream options, the objectives' table and the example preset
PHOTO = Path(__file__).parent / "data" / "chelsea.jpg"
CLASSES = ["me", "my dog", "my cat"]  # my_classes.txt: the own-classifier examples' classes

# Commands that cannot run in a test, each with the reason; the exact text of the line (`a && b` split).
NOT_RUNNABLE = {
    "python3 -m venv .venv": "makes a virtual environment; the tests already run in one",
    ". .venv/bin/activate": "a shell's own command",
    "pip install .": "installs from the package index (the network)",
    "pip install '.[test]'": "installs from the package index (the network)",
    "pip install '.[studio]'": "installs from the package index (the network)",
    "pip install 'dreamreel[ray]'": "installs from the package index (the network)",
    "pip install tf2onnx": "installs from the package index (the network)",
    "python -m pytest -q": "runs this test suite itself",
    "OMP_NUM_THREADS=1 python -m pytest -q tests/test_readme_examples.py": "runs this test itself",
    "python -m tf2onnx.convert --saved-model my_model/ --output classifier.onnx --opset 17 --inputs-as-nchw input_1":
        "needs TensorFlow and a SavedModel; tests/test_models.py exports its ONNX files from torch",
    "dreamreel video clip.mp4 out.mp4 --device cuda --compile on": "needs a CUDA GPU; tests/test_dream.py compiles the step on the devices there are",
    "dreamreel bench --device cuda --size 1280x720 --batch 8 --frames 24 --compile on --json": "needs a CUDA GPU",
    "dreamreel studio": "serves a web page until stopped; tests/test_studio.py drives it in a browser",
    "dreamreel studio --port 8000 --output-dir looks/": "serves a web page until stopped; tests/test_studio.py drives it",
    "pip install 'dreamreel[live]'": "installs from the package index (the network)",
    "dreamreel live --camera 0 --window --osc-port 9000": "needs a camera and a screen",
    "dreamreel live --camera 0 --window --midi nanoKONTROL2 --controls nanokontrol2":
        "needs a camera, a screen and a MIDI controller",
    "dreamreel live --camera 0 --window --midi --osc-port 9000 --learn": "needs a camera, a screen and a MIDI controller",
    "dreamreel live --camera 0 --window": "needs a camera and a screen",
    "dreamreel live --input clip.mp4 --window --record set.mp4": "needs a screen (tests/test_live.py opens the window under Xvfb)",
    "dreamreel live --zoom --window --size 640x360": "needs a screen",
    "dreamreel live --zoom '1.002 + 0.01*bass' --audio-in --window": "needs a sound card's input and a screen",
    "dreamreel live --zoom '1.002 + 0.01*bass' --window --audio-in --lookahead 0.08": "needs a screen and a sound card's input",
    "dreamreel live --camera 0 --window --osc-port 9000 --controls touchdesigner": "needs a camera and a screen",
    "dreamreel live --midi --osc-port 9000 --learn": "needs a MIDI controller",
    "dreamreel live --zoom --preset live-beat --window": "needs a screen",
    "dreamreel live --camera 0 --virtual-camera": "needs a camera and a virtual camera driver (v4l2loopback)",
    "dreamreel live --camera 0 --ndi-out dreamreel": "needs a camera and NDI",
    "dreamreel live --ndi OBS --window --max-side 640": "needs an NDI sender on the network and a screen",
    "dreamreel live --screen 640x360+0+0 --window": "needs a screen to capture and to show",
}  # fmt: skip

# The tiny size: what each command's flags are cut down to, and what is added.
TINY_VALUES = {
    "zoom": {"--size": "32x32", "--seconds": "0.125", "--frames": "3"},
    "live": {"--duration": "2"},
    "bench": {"--size": "64x36"},
}
TINY_FLAGS = {
    "video": ["--octaves", "1", "--iterations", "1", "--iterations-next", "1", "--quiet"],
    "zoom": ["--octaves", "1", "--iterations", "1", "--iterations-next", "1", "--quiet"],
    "live": ["--octaves", "1", "--iterations", "1", "--iterations-next", "1", "--quiet"],
    "bench": ["--quick", "--quiet"],
}
CLIP_FLAGS = ("--start", "--end", "--max-frames", "--max-side", "--batch", "--warmup")  # metrics: the output's clip


def commands(page: Path) -> list[list[str]]:
    """The commands of a page's bash blocks as argument lists (continuations joined, comments dropped, `&&` split)."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(encoding="utf-8"), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            while argv:
                cut = argv.index("&&") if "&&" in argv else len(argv)
                found.append(argv[:cut])
                argv = argv[cut + 1 :]
    return found


def documented() -> list[tuple[str, list[str]]]:
    """(page, argv) of every documented command."""
    return [(page.relative_to(ROOT).as_posix(), argv) for page in PAGES for argv in commands(page)]


def runnable(kind: str) -> list[tuple[str, list[str]]]:
    """The dreamreel commands this test runs, each once: ``image`` lines, or all ``other`` ones."""
    found = {}
    for page, argv in documented():
        if argv[0] == "dreamreel" and shlex.join(argv) not in NOT_RUNNABLE and (argv[1] == "image") == (kind == "image"):
            found.setdefault(shlex.join(argv), (page, argv))
    return list(found.values())


def tiny(argv: list[str]) -> list[str]:
    """``argv`` at the tiny size: :data:`TINY_VALUES` replace values, :data:`TINY_FLAGS` are added.

    A zoom of no stated length (5 s by default, or the song's) gets 3 frames.
    """
    values, out = TINY_VALUES.get(argv[1], {}), list(argv)
    for k, token in enumerate(out[:-1]):
        if token in values:
            out[k + 1] = values[token]
    if argv[1] == "zoom" and not {"--frames", "--seconds"} & set(argv):
        out += ["--frames", "3"]
    return out + TINY_FLAGS.get(argv[1], [])


def image_params() -> list:
    """One pytest param per image example; those dreaming more than 256x256 pixels are slow (35 s for 512x512 under load)."""
    params = []
    for page, argv in runnable("image"):
        width, height = (int(v) for v in argv[argv.index("--size") + 1].split("x")) if "--size" in argv else (0, 0)
        marks = [pytest.mark.slow] if width * height > 256 * 256 else []
        params.append(pytest.param(argv[1:], id=f"{page}: {shlex.join(argv)}", marks=marks))
    return params


def other_params() -> list:
    """One pytest param per other command; those that start a local Ray or benchmark (25-35 s each) are slow."""
    return [
        pytest.param(argv[1:], id=f"{page}: {shlex.join(argv)}", marks=[pytest.mark.slow] * ("--ray" in argv or argv[1] == "bench"))
        for page, argv in runnable("other")
    ]


def table_objectives() -> list[str]:
    """Each backticked expression in the first column of the objectives table of docs/dreaming.md."""
    section = DREAMING.read_text(encoding="utf-8").split("\n## Objectives\n", 1)[1]
    table = re.search(r"^\|.*?(?=\n\n)", section, re.S | re.M).group(0)
    rows = [row.split("|")[1] for row in table.splitlines()[2:]]
    return [expr for cell in rows for expr in re.findall(r"`([^`]+)`", cell)]


# --- stand-ins for the files the examples name ------------------------------------


def small_photo(path: Path) -> None:
    """The test cat, 48x32: a picture as small as the examples' settings allow."""
    cv2.imwrite(str(path), cv2.resize(cv2.imread(str(PHOTO)), (48, 32), interpolation=cv2.INTER_AREA))


def flowers(path: Path) -> None:
    from conftest import textured_frame

    cv2.imwrite(str(path), textured_frame(32, 48, seed=3))


def labels(path: Path) -> None:
    path.write_text("\n".join(CLASSES) + "\n")


def googlenet_state(path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.googlenet(weights=None, num_classes=len(CLASSES), aux_logits=False, init_weights=False)
    torch.save(net.state_dict(), path)


def timm_state(path: Path) -> None:
    import timm

    torch.manual_seed(0)
    torch.save(timm.create_model("convnext_atto", pretrained=False, num_classes=len(CLASSES)).state_dict(), path)


def onnx_classifier(path: Path) -> None:
    import warnings

    from test_models import SmallClassifier

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated
        torch.onnx.export(
            SmallClassifier().eval(), (torch.rand(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
            input_names=["image"], dynamic_axes={"image": {0: "b", 2: "h", 3: "w"}},
        )  # fmt: skip


def clip(path: Path) -> None:
    """22 s of a 48x32 pan at 2 fps, with sound: long enough for the examples' --start 12 --end 20, 44 frames in all."""
    from conftest import textured_frame

    from dreamreel.pipeline.encode import EncodeSettings, FrameWriter
    from dreamreel.pipeline.ffmpeg import run_ffmpeg

    silent = path.with_name("silent-" + path.name)
    big = textured_frame(32 + 44, 48 + 88, seed=5)
    with FrameWriter(silent, fps=2, size=(48, 32), settings=EncodeSettings(crf=0, codec="libx264")) as writer:
        for t in range(44):
            writer.write(np.ascontiguousarray(big[t : t + 32, 2 * t : 2 * t + 48]))
    run_ffmpeg(["-i", str(silent), "-f", "lavfi", "-i", "sine=duration=22", "-c:v", "copy", "-shortest", str(path)],
               what="adding sound to the stand-in clip")  # fmt: skip
    silent.unlink()


def shots(path: Path) -> None:
    """Two shots of 6 frames, 48x48 (the --ray examples' film)."""
    from conftest import textured_frame

    from dreamreel.pipeline.encode import EncodeSettings, FrameWriter

    with FrameWriter(path, fps=12, size=(48, 48), settings=EncodeSettings(crf=0, codec="libx264")) as writer:
        for shot in range(2):
            picture = textured_frame(48, 48 + 24, seed=10 + shot)
            for t in range(6):
                writer.write(np.ascontiguousarray(picture[:, 4 * t : 4 * t + 48]))


def example_preset(path: Path) -> None:
    """The preset of docs/dreaming.md, as the page shows it."""
    path.write_text(re.search(r"```toml\n(.*?)```", DREAMING.read_text(encoding="utf-8"), re.S).group(1))


def beat(path: Path) -> None:
    """8 s at 120 BPM: a decaying 60 Hz kick every 0.5 s (the tempo of `b` is found in 8 s, not in 4)."""
    from dreamreel.pipeline.ffmpeg import run_ffmpeg

    kick = "0.8*sin(2*PI*60*t)*exp(-20*mod(t,0.5))"
    run_ffmpeg(["-f", "lavfi", "-i", f"aevalsrc=exprs='{kick}':s=22050:d=8", str(path)], what="making a beat track")


MAKERS = {
    "photo.jpg": small_photo,
    "me.jpg": small_photo,
    "flowers.jpg": flowers,
    "my_classes.txt": labels,
    "my_finetune.pth": googlenet_state,
    "my_timm.pth": timm_state,
    "classifier.onnx": onnx_classifier,
    "clip.mp4": clip,
    "film.mp4": shots,
    "song.mp3": beat,
    "song.wav": beat,
    "mine.toml": example_preset,
}


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A working folder in which ``make(argv)`` creates the files ``argv`` names."""
    monkeypatch.chdir(tmp_path)

    def make(argv: list[str]) -> None:
        for token in argv:
            if token in MAKERS and not (tmp_path / token).exists():
                MAKERS[token](tmp_path / token)

    return make


def run(argv: list[str], capsys) -> str:
    """``dreamreel ARGV`` in this process; its stdout (the command must succeed)."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, f"`dreamreel {shlex.join(argv)}` exited {code}: {err.strip()}"
    return out


def run_apart(argv: list[str]) -> str:
    """``dreamreel ARGV`` in a process of its own (a local Ray starts and ends with it); its stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dreamreel", *argv], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"`dreamreel {shlex.join(argv)}` exited {proc.returncode}: {proc.stderr.strip()}"
    return proc.stdout


# --- the documents and this test agree ---------------------------------------------


def test_every_documented_command_runs_here_or_is_listed_with_its_reason():
    unknown = [f"{page}: {shlex.join(argv)}" for page, argv in documented()
               if argv[0] != "dreamreel" and shlex.join(argv) not in NOT_RUNNABLE]  # fmt: skip
    assert not unknown, f"commands neither run by this test nor listed in NOT_RUNNABLE with the reason: {unknown}"
    listed = {shlex.join(argv) for _, argv in documented()}
    assert set(NOT_RUNNABLE) <= listed, f"NOT_RUNNABLE lists commands no page has: {sorted(set(NOT_RUNNABLE) - listed)}"


def test_the_readme_lists_every_preset_once():
    from dreamreel.pipeline.presets import builtin_names

    section = README.read_text(encoding="utf-8").split("\n## Presets\n", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `([^`]+)` \|", section, re.M)
    assert sorted(listed) == sorted(builtin_names()), f"README's presets {listed}, `dreamreel presets`: {builtin_names()}"


def test_the_documents_have_their_examples():
    kinds = {argv[1] for _, argv in runnable("other")}
    assert len(runnable("image")) >= 8 and {"video", "zoom", "metrics", "layers", "bench"} <= kinds, kinds
    unknown = [argv[2] for _, argv in runnable("image") if argv[2] not in ("noise", *MAKERS)]
    assert not unknown, f"examples read {unknown}: teach MAKERS to make them"


# --- the commands run -----------------------------------------------------------------


@pytest.mark.parametrize("argv", image_params())
def test_documented_image_example_runs_as_written(argv, scratch, capsys):
    scratch(argv)
    run(argv, capsys)
    source, output = cv2.imread(argv[1]), cv2.imread(argv[2])
    assert output is not None, f"{argv[2]} was not written"
    if argv[1] != "noise" and "--max-side" not in argv:
        assert output.shape == source.shape and (output.astype(int) - source).__abs__().mean() > 1, "nothing was dreamed"


@pytest.mark.parametrize("argv", other_params())
def test_documented_command_runs_at_a_tiny_size(argv, scratch, capsys):
    scratch(argv)
    if argv[0] == "metrics":  # it measures a dreamed output: dream it first, with the clip options it names
        clip_options = [token for k, token in enumerate(argv) if token in CLIP_FLAGS or k and argv[k - 1] in CLIP_FLAGS]
        run(tiny(["dreamreel", "video", argv[1], argv[2], *clip_options])[1:], capsys)
    command = tiny(["dreamreel", *argv])[1:]
    out = run_apart(command) if "--ray" in argv else run(command, capsys)
    if argv[0] in ("video", "zoom") or "--record" in argv:
        written = Path(argv[2] if argv[0] == "video" else argv[1] if argv[0] == "zoom" else argv[argv.index("--record") + 1])
        assert written.is_file() or any(written.glob("frame_*.png")), f"{written} was not written"
    if "--json" in argv:
        assert json.loads(out)
    else:
        assert out.strip(), "the command printed nothing"


@pytest.mark.parametrize("objective", table_objectives())
def test_objective_table_entry_runs(objective, scratch, capsys):
    argv = ["image", "photo.jpg", "out.png", "--objective", objective, "--octaves", "1", "--iterations", "1", "--quiet"]
    argv += ["--guide", "flowers.jpg"] if "guide:" in objective else []
    scratch(argv)
    run(argv, capsys)


def test_every_documented_dreamreel_line_is_one_the_cli_takes(capsys):
    """Lines that cannot run here (a camera, a cluster) still name only flags and values the parser takes."""
    from dreamreel.cli.main import build_parser

    parser = build_parser()
    lines = [argv[1:] for _, argv in documented() if argv[0] == "dreamreel"]
    assert sum(argv[0] == "live" for argv in lines) >= 15, lines  # the parser still finds them
    for argv in lines:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"`dreamreel {shlex.join(argv)}`: {capsys.readouterr().err.strip().splitlines()[-1]}")
