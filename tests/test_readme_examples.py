"""The commands of the README and of the guide's pages (docs/*.md) are real.

Every ``dreamreel image`` line of the README's and docs/*.md's bash blocks is run through the
command line in a scratch folder that holds small stand-ins for the files it
names (photo.jpg, my_finetune.pth, classifier.onnx, ...), on the embedded
model or the architecture the line names; the objectives of the README's
table are run the same way. A line naming a file this test cannot make fails
with the CLI's own "no such file" message: teach ``MAKERS`` to make it.

Every other ``dreamreel`` line of the README and of the guide's pages is parsed by the command line's own
parser, so each flag and value it shows exists; the ``dreamreel live`` lines
that need no device (a looped clip, a recording) are also run, for a second,
on the tiny model. Those needing a camera, a display, a sound card, a MIDI
port or NDI are only parsed: CI has none of them.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import cv2
import pytest
import torch

from dreamreel.cli.main import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

README = Path(__file__).parent.parent / "README.md"
DOCS = README.parent / "docs"
# Flags of `dreamreel live` that need a device this test cannot have.
LIVE_DEVICES = ("--camera", "--ndi", "--screen", "--window", "--virtual-camera", "--ndi-out", "--spout", "--syphon",
                "--midi", "--audio-in", "--osc-port")  # fmt: skip
PHOTO = Path(__file__).parent / "data" / "chelsea.jpg"
CLASSES = ["me", "my dog", "my cat"]  # my_classes.txt: the own-classifier examples' classes


def bash_lines() -> list[list[str]]:
    """The bash-block commands of the README and the user guide's pages as argument lists (continuations joined, comments dropped)."""
    lines = []
    for page in (README, *sorted(DOCS.glob("*.md"))):
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(encoding="utf-8"), re.S):
            lines += [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines()]
    return [argv for argv in lines if argv]


def image_examples() -> list[list[str]]:
    """``["image", INPUT, OUTPUT, ...]`` for each `dreamreel image` line."""
    return [argv[1:] for argv in bash_lines() if argv[:2] == ["dreamreel", "image"]]


def example_params() -> list:
    """One pytest param per example; those dreaming more than 256x256 pixels are slow (35 s for 512x512 under load)."""
    params = []
    for argv in image_examples():
        width, height = (int(v) for v in argv[argv.index("--size") + 1].split("x")) if "--size" in argv else (0, 0)
        marks = [pytest.mark.slow] if width * height > 256 * 256 else []
        params.append(pytest.param(argv, id=shlex.join(argv), marks=marks))
    return params


def dreamreel_commands() -> list[list[str]]:
    """``[COMMAND, ...]`` for each ``dreamreel`` line of the README and the guide's pages."""
    return [argv[1:] for argv in bash_lines() if argv[:1] == ["dreamreel"]]


def runnable_live_examples() -> list[list[str]]:
    """The ``dreamreel live`` lines that need no device, to run for a second."""
    return [argv for argv in dreamreel_commands() if argv[0] == "live" and not any(flag in argv for flag in LIVE_DEVICES)]


def table_objectives() -> list[str]:
    """Each backticked expression in the first column of the README's objectives table."""
    section = README.read_text(encoding="utf-8").split("**Objectives**", 1)[1].split("\n\n", 2)[1]
    rows = [row.split("|")[1] for row in section.splitlines()[2:]]
    return [expr for cell in rows for expr in re.findall(r"`([^`]+)`", cell)]


# --- stand-ins for the files the examples name ------------------------------------


def small_photo(path: Path) -> None:
    """The test cat, 48x32: a picture as small as the examples' settings allow."""
    cv2.imwrite(str(path), cv2.resize(cv2.imread(str(PHOTO)), (48, 32), interpolation=cv2.INTER_AREA))


def flowers(path: Path) -> None:
    from conftest import textured_frame

    cv2.imwrite(str(path), textured_frame(32, 48, seed=3))


def clip(path: Path) -> None:
    """A 16-frame clip with a second of sound, as a looped --input."""
    from conftest import textured_frame
    from dreamreel.pipeline.encode import FrameWriter
    from dreamreel.pipeline.ffmpeg import run_ffmpeg

    sound = path.with_name("clip-sound.wav")
    run_ffmpeg(["-f", "lavfi", "-i", "sine=frequency=440:duration=1", str(sound)], what="making the test clip's sound")
    with FrameWriter(path, fps=30, size=(64, 48), audio_source=sound) as writer:
        for seed in range(16):
            writer.write(textured_frame(48, 64, seed))


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


MAKERS = {
    "photo.jpg": small_photo,
    "me.jpg": small_photo,
    "flowers.jpg": flowers,
    "my_classes.txt": labels,
    "my_finetune.pth": googlenet_state,
    "my_timm.pth": timm_state,
    "classifier.onnx": onnx_classifier,
    "clip.mp4": clip,
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


def run(argv: list[str], capsys) -> None:
    code = main(argv)
    assert code == 0, f"`dreamreel {shlex.join(argv)}` exited {code}: {capsys.readouterr().err.strip()}"


def test_the_readme_has_its_image_examples():
    examples = image_examples()
    assert len(examples) >= 8, examples  # the parser still finds them
    unknown = [argv[1] for argv in examples if argv[1] not in ("noise", *MAKERS)]
    assert not unknown, f"README examples read {unknown}: teach MAKERS to make them"


@pytest.mark.parametrize("argv", example_params())
def test_readme_image_example_runs_as_written(argv, scratch, capsys):
    scratch(argv)
    run(argv, capsys)
    source, output = cv2.imread(argv[1]), cv2.imread(argv[2])
    assert output is not None, f"{argv[2]} was not written"
    if argv[1] != "noise" and "--max-side" not in argv:
        assert output.shape == source.shape and (output.astype(int) - source).__abs__().mean() > 1, "nothing was dreamed"


@pytest.mark.parametrize("objective", table_objectives())
def test_readme_objective_table_entry_runs(objective, scratch, capsys):
    argv = ["image", "photo.jpg", "out.png", "--objective", objective, "--octaves", "1", "--iterations", "1", "--quiet"]
    argv += ["--guide", "flowers.jpg"] if "guide:" in objective else []
    scratch(argv)
    run(argv, capsys)


def test_every_command_of_the_readme_and_the_guide_is_one_the_cli_takes(capsys):
    from dreamreel.cli.main import build_parser

    parser = build_parser()
    commands = dreamreel_commands()
    assert sum(argv[0] == "live" for argv in commands) >= 15, commands  # the parser still finds them
    for argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"`dreamreel {shlex.join(argv)}`: {capsys.readouterr().err.strip().splitlines()[-1]}")


@pytest.mark.parametrize("argv", runnable_live_examples(), ids=shlex.join)
def test_live_example_without_devices_runs_for_a_second(argv, scratch, capsys, tiny_model, use_model):
    from dreamreel.pipeline.ffmpeg import probe

    use_model(tiny_model)
    scratch(argv)
    run([*argv, "--duration", "1", "--quiet"], capsys)  # the last --duration wins
    record = argv[argv.index("--record") + 1]
    assert probe(record).has_audio  # the looped clip's sound
