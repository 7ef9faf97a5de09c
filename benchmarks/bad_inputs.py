"""Every bad input of the reliability issues, run through the real command line: exit code and message.

Run: ``python benchmarks/bad_inputs.py [--markdown FILE]``. It makes small
stand-in files in a scratch folder (a 12-frame clip, a song, an odd-sized
clip, broken ONNX graphs, label and weight files, a preset naming a model
file), runs each case as ``python -m dreamreel ...`` there (at tiny sizes,
so the whole table takes a few minutes on a CPU), and prints one row per
command: the command, its exit code and the last line it printed on stderr.
A case of several commands is a mistake followed by its corrected rerun.
A row marked ``!`` exited with another code than the one promised. The
commands leave out the tiny-size flags they run with (``TINY``, ``ZOOM``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

TINY = ["--octaves", "1", "--iterations", "1", "--quiet"]
ZOOM = ["--frames", "4", "--size", "64x64", *TINY]


def make_files(folder: Path) -> None:
    """The stand-ins the cases name, made in ``folder``."""
    import numpy as np
    import onnx
    import timm
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from dreamreel.pipeline.efficientnet import EfficientNetLite0
    from dreamreel.pipeline.ffmpeg import run_ffmpeg

    def ffmpeg(*args: str) -> None:
        run_ffmpeg(list(args), what="making a stand-in file")

    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=12:duration=1", "-f", "lavfi", "-i", "sine=duration=1",
           "-shortest", "-pix_fmt", "yuv420p", str(folder / "clip.mp4"))  # fmt: skip
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=12:duration=2", "-f", "lavfi", "-i", "sine=duration=2",
           "-shortest", "-pix_fmt", "yuv420p", str(folder / "song.mp4"))  # fmt: skip
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=63x47:rate=12:duration=0.5", "-c:v", "ffv1", str(folder / "odd.mkv"))
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48", "-frames:v", "1", str(folder / "photo.png"))
    ffmpeg("-i", str(folder / "photo.png"), str(folder / "start.gif"))  # a picture, and a zoom output

    def onnx_graph(name: str, extra: list, input_shape: list) -> None:
        nodes = [*extra, helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])]
        graph = helper.make_graph(
            nodes, "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        )  # fmt: skip
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(folder / name))

    onnx_graph("identity.onnx", [helper.make_node("Identity", [], ["i"])], [1, 3, 32, 32])
    constant = numpy_helper.from_array(np.array(1.0, np.float32))
    onnx_graph("constant.onnx", [helper.make_node("Constant", [], [], value=constant)], [1, 3, 32, 32])
    onnx_graph("huge.onnx", [], [1, 3, 100_000, 100_000])

    state = EfficientNetLite0().state_dict()
    torch.save({**state, "classifier.weight": torch.tensor(0.0)}, folder / "head0d.pth")
    wrong = {f"features.{k}.weight": torch.zeros(1) for k in range(400)}
    torch.save({**wrong, "classifier.weight": torch.zeros(1000, 1280)}, folder / "wrong.pth")
    torch.save({"fc.weight": torch.zeros(3, 8)}, folder / "any.pth")
    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3).state_dict(), folder / "vit.pth")

    names = [f"class {k}" for k in range(1000)]
    (folder / "latin1.txt").write_bytes("\n".join(["café", *names[1:]]).encode("latin-1"))
    (folder / "bom.txt").write_text("\n".join(["first", *names[1:]]), encoding="utf-8-sig")
    (folder / "dup.txt").write_text("\n".join([*names[:998], "class 5", "Class_7"]))

    torch.jit.script(torch.nn.Linear(3, 3)).save(str(folder / "ts.pt"))
    (folder / "ts.toml").write_text('description = "a preset naming a model file"\nmodel = "ts.pt"\n[dream]\nobjective = "class:1"\n')
    (folder / "frames").mkdir()
    (folder / "frames" / "frame_000000.png").write_bytes((folder / "photo.png").read_bytes())


# Each case: (what it shows, [commands]); a command is (argv after `dreamreel`, the exit code promised).
CASES: list[tuple[str, list[tuple[list[str], int]]]] = [
    ("1. a refused objective, then the corrected rerun", [
        (["zoom", "z1.mp4", "--objective", "nosuch", *ZOOM], 2),
        (["zoom", "z1.mp4", "--objective", "mid", *ZOOM], 0),
    ]),
    ("1. a channel beyond the layer's, then a valid one", [
        (["video", "clip.mp4", "v1.mp4", "--objective", "mid:99999", *TINY], 2),
        (["video", "clip.mp4", "v1.mp4", "--objective", "mid:5", *TINY], 0),
    ]),
    ("1. a refused frames folder, then the fixed rerun", [
        (["video", "clip.mp4", "frames", "--max-frames", "3", *TINY], 2),
        (["rm", "frames/frame_000000.png"], 0),
        (["video", "clip.mp4", "frames", "--max-frames", "3", "--objective", "low", *TINY], 0),
    ]),
    ("2. a schedule that fails at frame 2, then the fixed one", [
        (["zoom", "z2.mp4", "--zoom", "1.01 + 0.001/(t-2)", *ZOOM], 2),
        (["zoom", "z2.mp4", "--zoom", "1.01 + 0.001*t", *ZOOM], 0),
    ]),
    ("2. zoom out of range, schedules failing at a later frame", [
        (["zoom", "z3.mp4", "--zoom", "0.0", *ZOOM], 2),
        (["zoom", "z3.mp4", "--zoom", "0:(1.0), 3:(0.0)", *ZOOM], 2),
        (["zoom", "z3.mp4", "--angle", "1/(t-3)", *ZOOM], 2),
        (["zoom", "z3.mp4", "--iterations-next", "3 + 2000*bass", "--audio", "song.mp4", *ZOOM], 2),
        (["zoom", "z3.mp4", "--zoom", "1.02", *ZOOM], 0),
    ]),
    ("11. output = an input", [
        (["zoom", "song.mp4", "--audio", "song.mp4", *ZOOM], 2),
        (["zoom", "start.gif", "--init", "start.gif", *ZOOM], 2),
        (["image", "noise", "photo.png", "--objective", "guide:mid", "--guide", "photo.png", *TINY], 2),
    ]),
    ("12. exit 2, not 1", [
        (["video", "clip.mp4", "e.mp4", "--end", "inf", *TINY], 2),
        (["video", "clip.mp4", "e.mp4", "--start", "inf", *TINY], 2),
        (["image", "photo.png", "m.png", "--max-side", "1", *TINY], 2),
        (["layers", "identity.onnx"], 2),
        (["layers", "constant.onnx"], 2),
        (["layers", "efficientnet-lite0", "--weights", "head0d.pth"], 2),
        (["layers", "timm:resnet10t.a1_in1k", "--weights", "any.pth"], 2),
        (["layers", "timm:vit_tiny_patch16_224", "--weights", "vit.pth"], 2),
        (["image", "noise", "d.png", "--device", "meta", *TINY], 2),
    ]),
    ("13. a weight beyond float32", [
        (["image", "noise", "w.png", "--objective", "1e39*mid", "--size", "64x64", *TINY], 2),
    ]),
    ("14. labels, weights, model files, metrics", [
        (["image", "noise", "l.png", "--labels", "latin1.txt", "--objective", "class:1", *TINY], 2),
        (["image", "noise", "l.png", "--labels", "bom.txt", "--objective", "class:first", "--size", "64x64", *TINY], 0),
        (["image", "noise", "l.png", "--labels", "dup.txt", "--objective", "class:1", *TINY], 2),
        (["layers", "efficientnet-lite0", "--weights", "wrong.pth"], 2),
        (["image", "noise", "n.png", "--model", "nonexist.onnx", *TINY], 2),
        (["metrics", "clip.mp4", "v1.mp4", "--warmup", "-5"], 2),
    ]),
    ("15. metrics of what video wrote", [
        (["video", "odd.mkv", "odd.mp4", *TINY], 0),
        (["metrics", "odd.mkv", "odd.mp4"], 0),
        (["video", "clip.mp4", "lanes.mp4", "--batch", "4", *TINY], 0),  # lanes whose warm-up reaches frame 0
        (["metrics", "clip.mp4", "lanes.mp4", "--batch", "4"], 0),
    ]),
    ("16. a preset naming a model file", [
        (["image", "noise", "p.png", "--preset", "ts.toml", *TINY], 2),
    ]),
    ("18. an ONNX input declared huge", [
        (["layers", "huge.onnx"], 2),
    ]),
]


def run_case(folder: Path, argv: list[str]) -> tuple[int, str]:
    """Exit code and last stderr line of ``dreamreel ARGV`` in ``folder`` (``rm PATH``: the user deletes a file)."""
    if argv[0] == "rm":
        (folder / argv[1]).unlink()
        return 0, ""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dreamreel", *argv], cwd=folder, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    message = lines[-1] if lines else proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    return proc.returncode, message


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    rows = ["| case | command | exit | message |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="dreamreel-bad-inputs-") as scratch:
        folder = Path(scratch)
        make_files(folder)
        for title, commands in CASES:
            for argv, promised in commands:
                code, message = run_case(folder, argv)
                mark = "" if code == promised else " !"
                for tail in (ZOOM, TINY):
                    argv = argv[: -len(tail)] if argv[-len(tail) :] == tail else argv
                shown = shlex.join(argv) if argv[0] == "rm" else "dreamreel " + shlex.join(argv)
                message = message.replace("|", "\\|")
                rows.append(f"| {title} | `{shown}` | {code}{mark} | {message} |")
                print(rows[-1], flush=True)
    if args.markdown:
        args.markdown.write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
