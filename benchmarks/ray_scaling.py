"""Ray scale-out on one machine: a 3-shot clip dreamed by 1 worker and by 2 workers, 1 thread each.

Run: ``python benchmarks/ray_scaling.py [--size 128] [--shots 16,16,16]``
(needs ``dreamreel[ray]``). It generates a clip of shots of the given lengths
(textured pictures panning 4 px a frame, cut between; three equal shots
allow at most 1.5x on 2 workers, 24,12,12 allows 2x), dreams it with the
``video-flow`` preset's look through :func:`dream_video_ray`, and prints a
table: wall time from the call to the finished mp4 (worker start and model
load included), the busiest worker's own dreaming time, and the speed-ups.
The single-process run (:func:`dream_video`, one torch thread) is timed too.
The load average before and after is printed with the table: figures taken
while other processes ran are not comparable.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import numpy as np


def make_shots(path: Path, size: int, shots: list[int]) -> Path:
    import cv2

    from dreamreel.pipeline.encode import EncodeSettings, FrameWriter

    with FrameWriter(path, fps=25, size=(size, size), settings=EncodeSettings(crf=0)) as writer:
        for shot, shot_frames in enumerate(shots):
            rng = np.random.default_rng(shot)
            picture = cv2.GaussianBlur(rng.random((size, size + 4 * shot_frames, 3), dtype=np.float32), (0, 0), size / 24)
            picture = (255 * (picture - picture.min()) / np.ptp(picture)).astype(np.uint8)
            for t in range(shot_frames):
                writer.write(np.ascontiguousarray(picture[:, 4 * t : 4 * t + size]))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="frame side in pixels")
    parser.add_argument("--shots", default="16,16,16", help="frames of each shot, comma-separated")
    args = parser.parse_args()

    import ray
    import torch

    from dreamreel.pipeline.distributed import RaySettings, dream_video_ray
    from dreamreel.pipeline.dream import ComputeSettings
    from dreamreel.pipeline.encode import EncodeSettings
    from dreamreel.pipeline.presets import build, load_preset
    from dreamreel.pipeline.video import dream_video

    preset = load_preset("video-flow")
    settings, video = build("dream", preset, {}), build("video", preset, {"batch": 1})
    compute = ComputeSettings(device="cpu", precision="fp32")
    encode = EncodeSettings()
    folder = Path(tempfile.mkdtemp(prefix="dreamreel-ray-"))
    shots = [int(n) for n in args.shots.split(",")]
    clip = make_shots(folder / "shots.mp4", args.size, shots)
    total = sum(shots)

    load_before = os.getloadavg()
    torch.set_num_threads(1)
    start = time.perf_counter()
    dream_video(clip, folder / "single", settings, compute, video, encode, progress=False)
    single = time.perf_counter() - start

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    for workers in (1, 2):
        out = folder / f"ray{workers}"
        printed = StringIO()
        start = time.perf_counter()
        with redirect_stdout(printed):
            dream_video_ray(clip, out, settings, compute, video, encode, RaySettings(workers=workers, threads=1), progress=False, verbose=True)
        wall = time.perf_counter() - start
        busy = max(float(s) for s in re.findall(r"frames in ([\d.]+) s", printed.getvalue()))
        rows.append((workers, wall, busy))
    ray.shutdown()

    load_after = os.getloadavg()
    print(f"{total} frames ({args.size}x{args.size}, shots of {args.shots} frames, video-flow look), CPU, 1 torch thread per worker")
    print("load average before: {:.2f} {:.2f} {:.2f}, after: {:.2f} {:.2f} {:.2f}".format(*load_before, *load_after))
    print(f"single process, 1 thread: {single:.1f} s ({total / single:.2f} frames/s)")
    print("| workers x threads | wall s | frames/s | speed-up (wall) | busiest worker s | speed-up (dreaming) |")
    print("|---|---|---|---|---|---|")
    for workers, wall, busy in rows:
        print(f"| {workers} x 1 | {wall:.1f} | {total / wall:.2f} | {rows[0][1] / wall:.2f}x | {busy:.1f} | {rows[0][2] / busy:.2f}x |")


if __name__ == "__main__":
    main()
