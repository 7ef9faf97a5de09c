"""The memory check of the benchmark: :func:`dream_video` once, in a fresh process.

A child reports its own peak resident memory, so the short and the long clip
are measured without each other's leftovers (and can run at the same time).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM on Linux, else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def rss_parts_mb() -> dict[str, float] | None:
    """This process's resident memory now, by kind: anonymous (heap, page-locked buffers), file-backed, shared; Linux only."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    parts = {line.split(":")[0][3:].lower(): int(line.split()[1]) / 1024 for line in lines if line.startswith("Rss")}
    return parts or None


def pinned_host_peak_mb() -> float | None:
    """Peak page-locked host memory torch's allocator held, in MB, cached blocks included.

    torch 2.14 counts it as ``allocated_bytes``; None without CUDA or where
    this torch does not count it.
    """
    import torch

    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    stats = getattr(torch.cuda, "host_memory_stats", dict)()
    return stats["allocated_bytes.peak"] / 2**20 if "allocated_bytes.peak" in stats else None


def pipeline_child(argv: list[str]) -> int:
    """Entry point of a memory child: run :func:`dream_video` once and print what it used.

    ``argv[0]`` is a JSON object with input, output, max_frames, threads and the
    dream, compute and video settings. Prints one JSON line: frames, seconds
    (the frame loop), wall_s (the whole call), peak_rss_mb (VmHWM of this
    process; ffmpeg runs in processes of its own), rss_parts_mb (what is
    resident at the end, by kind), and gpu_peak_mb and pinned_host_peak_mb
    (None without CUDA): when the peak grows with the clip, the parts say
    whether heap, page-locked buffers or mapped files hold it.
    """
    spec = json.loads(argv[0])
    import torch

    from dreamreel.pipeline.dream import ComputeSettings, DreamSettings
    from dreamreel.pipeline.encode import EncodeSettings
    from dreamreel.pipeline.video import VideoSettings, dream_video

    torch.set_num_threads(spec["threads"])
    start = time.perf_counter()
    result = dream_video(
        spec["input"], spec["output"], DreamSettings(**spec["dream"]), ComputeSettings(**spec["compute"]),
        VideoSettings(**spec["video"]), EncodeSettings(), max_frames=spec["max_frames"], progress=False,
    )  # fmt: skip
    wall = time.perf_counter() - start
    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    print(json.dumps({
        "frames": result.frames, "seconds": result.seconds, "wall_s": wall, "peak_rss_mb": peak_rss_mb(),
        "rss_parts_mb": rss_parts_mb(), "gpu_peak_mb": gpu, "pinned_host_peak_mb": pinned_host_peak_mb(),
    }))  # fmt: skip
    return 0


def start_child(job: dict) -> subprocess.Popen:
    """Start :func:`pipeline_child` on ``job`` in a fresh Python process."""
    code = "import sys; from dreamreel.benchmarks.children import pipeline_child; sys.exit(pipeline_child(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(job)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish_child(proc: subprocess.Popen, job: dict) -> dict:
    """Wait for a child; its JSON report, or RuntimeError with the end of its stderr."""
    out, err = proc.communicate()
    if proc.returncode != 0:
        tail = " | ".join(err.strip().splitlines()[-4:])
        raise RuntimeError(f"the pipeline child for {job['max_frames']} frames failed (exit {proc.returncode}): {tail}")
    return json.loads(out.strip().splitlines()[-1])
