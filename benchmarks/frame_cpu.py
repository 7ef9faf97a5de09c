"""CPU seconds of one dreamed frame, to compare two builds of dreamreel on a busy CPU: ``python benchmarks/frame_cpu.py``.

One 640x360 frame of the bench's look (``video-live``, 3 octaves x 5 steps,
one torch thread, ``--compile auto``), three frames after one unmeasured;
prints one JSON line: CPU and wall seconds a frame, a checksum of the last
frame (equal builds dream equal frames) and the load average. CPU time is
what other processes disturb least. To compare two commits, install each
from its wheel into a folder of its own and alternate::

    pip wheel --no-deps -w whl-a .   # at each commit, then
    pip install --no-deps --target site-a whl-a/*.whl
    for r in 1 2 3; do for w in a b; do PYTHONPATH=site-$w python benchmarks/frame_cpu.py; done; done
"""

from __future__ import annotations

import json
import os
import time


def main() -> None:
    import torch

    from dreamreel.benchmarks import pan
    from dreamreel.pipeline.dream import ComputeSettings, Dreamer, frame_generator, to_tensor
    from dreamreel.pipeline.presets import build, load_preset

    torch.set_num_threads(1)
    size = (640, 360)
    settings = build("dream", load_preset("video-live"), {"octaves": 3, "iterations": 5})
    dreamer = Dreamer(settings, ComputeSettings(device="cpu"))
    frames = [pan.pan_frame(pan.pan_texture(size, 8), size, k) for k in range(4)]
    dreamer(to_tensor(frames[0]), generators=[frame_generator(0, 0)])  # oneDNN's kernels built: not measured
    cpu, wall = time.process_time(), time.perf_counter()
    for k in range(1, 4):
        out = dreamer(to_tensor(frames[k]), generators=[frame_generator(0, k)])
    print(json.dumps({
        "cpu_s_per_frame": (time.process_time() - cpu) / 3, "wall_s_per_frame": (time.perf_counter() - wall) / 3,
        "checksum": float(out.sum()), "load_average": os.getloadavg()[0],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
