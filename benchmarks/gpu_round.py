"""Issue 21's GPU round in one run: every row of its table, before and after, within a time budget.

Run by ``benchmarks/gpu_round.sh`` on the GPU machine (the project installed
from ``.gpu/whl``); ``python -m dreamreel.benchmarks.gpu_round --device cpu
--quick --out DIR --clip CLIP`` runs the same steps small on a CPU, to check
the plumbing. Every step is a ``dreamreel`` command in a fresh process under
its own timeout; a step that fails or times out is recorded and the next one
runs. Steps run in order of importance and a step starts only while the
budget leaves it time, so the run ends within ``--budget`` seconds with the
most important rows measured.

Rows (issue 21's table) and the steps that measure them:

- default ``video-flow`` look, 720p, end to end: ``flow720-*`` (compile off,
  then on with an empty kernel cache, then on with the cache warm);
- ``video-live`` 720p: ``live720-*``, compile off/on, flow scale 1/0.5
  (the variants on the clip's first 60 frames);
- ``video-live`` 1080p: ``live1080-*`` (the clip upscaled here), flow at
  full and half size; what half-size flow costs in coherence at 720p
  (``benchmarks/flow_scale.py``: warping error, strength and detail against
  frames dreamed alone, and DIS's time per frame on one of this host's
  cores): ``coherence720``;
- command to first frame on disk, cold and warm: every video step records
  the seconds from its start to the first frame file in the work folder;
  ``flow720-off-1``/``-2`` show a fresh process twice, ``flow720-on-cold``/
  ``-warm`` the compile cache empty and filled;
- dream only, batch 8 against batch 1, and peak memory 24 against 240 frames
  (``rss_parts_mb``, ``pinned_host_peak_mb``): ``bench720-*``; where one
  frame's kernel time goes at batch 1 and 8: ``profile720``; the memory
  check at one lane and with glibc's mmap threshold fixed: ``memory-*``
  (docs/performance.md says what each checks);
- pytorch-deepdream's settings (GoogLeNet ``inception4c``, 4 octaves x 1.8,
  10 steps every frame, 720p): ``googlenet-*``, with random weights (the GPU
  machine has no network and torchvision's file does not fit the carry):
  timing only;
- the ``cuda``-marked tests: ``tests-compile`` (the compiled captured step
  against eager) early, ``tests-cuda`` (all) last.

Writes ``summary.jsonl`` (one JSON object per step, as it ends),
``summary.txt`` (a table, rewritten after every step) and the commands'
output tails in ``log.txt``, all under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

WROTE = re.compile(r"wrote .*?: (\d+) frames at [\d.]+ fps in ([\d.]+) s")
COMPILE_LINE = re.compile(r"dreamreel: (?:compiling kernels|kernels for) .*")
# The bench's figures the summary keeps (the whole JSON goes to summary.jsonl).
BENCH_KEYS = (
    "compiled", "first_frame_s", "ms_per_iteration", "dream_fps_batch1", "dream_fps_batchN", "batch_n", "gpu_busy",
    "fps_pipeline", "pipeline_efficiency", "peak_rss_short_mb", "peak_rss_long_mb", "memory_ratio_long_short",
    "rss_parts_mb", "pinned_host_peak_mb", "gpu_peak_short_mb", "gpu_peak_long_mb", "stage_ms_per_frame",
)  # fmt: skip


@dataclass
class Step:
    """One command of the round: ``kind`` says how to read it (video: first frame and loop rate; bench: its JSON)."""

    name: str
    row: str
    command: list[str]
    timeout_s: int
    kind: str = "plain"
    env: dict = field(default_factory=dict)
    output: Path | None = None  # a video step's OUTPUT


def dreamreel(*args: str) -> list[str]:
    return [sys.executable, "-m", "dreamreel", *map(str, args)]


def plan(args: argparse.Namespace, work: Path) -> list[Step]:
    """The steps, most important first."""
    device = ["--device", args.device, "--quiet"]
    small = ["--max-frames", "3", "--max-side", "96"] if args.quick else []
    clip, clip1080 = args.clip, work / "clip1080.mp4"
    # One kernel cache for the round, empty at its first compiled step (flow720-on-cold) and filled after.
    kernels = {"DREAMREEL_CACHE": str(work / "kernels")}

    def video(name, row, source, *flags, env=None, timeout=60) -> Step:
        out = work / f"{name}.mp4"
        return Step(name, row, dreamreel("video", source, out, *device, *flags, *small), timeout, "video", env or {}, out)

    bench_size = ["--quick", "--size", "64x48", "--frames", "4"] if args.quick else ["--size", "1280x720", "--frames", "24"]
    size720, lanes = ("96x54", "2") if args.quick else ("1280x720", "8")
    googlenet = ["--model", "googlenet", "--weights", work / "googlenet.pth", "--objective", "inception4c", "--octaves", "4",
                 "--octave-scale", "1.8", "--iterations", "10", "--iterations-next", "10", "--no-audio", "--max-frames", "60"]  # fmt: skip
    tests = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "tests"]
    live, part = ["--preset", "video-live"], ["--max-frames", "60"]  # variants: 60 frames are enough for a rate
    memory = [sys.executable, "-c", MEMORY, args.device, size720, "24"]
    return [
        Step("env", "-", [sys.executable, "-c", ENV_PROBE], 60),
        Step("tests-compile", "6", [*tests, "-k", "compile"], 150, env=kernels),
        video("flow720-off-1", "1, 4", clip, "--compile", "off"),
        video("flow720-off-2", "1, 4", clip, "--compile", "off"),
        video("flow720-on-cold", "1, 4", clip, "--compile", "on", env=kernels, timeout=240),
        video("flow720-on-warm", "1, 4", clip, "--compile", "on", env=kernels, timeout=90),
        video("live720-off", "2", clip, *live, "--compile", "off"),
        video("live720-on", "2", clip, *live, "--compile", "on", env=kernels),
        video("live720-off-flow0.5", "2", clip, *live, *part, "--compile", "off", "--flow-scale", "0.5"),
        video("live720-on-flow0.5", "2", clip, *live, *part, "--compile", "on", "--flow-scale", "0.5", env=kernels),
        Step("profile720", "5", [sys.executable, "-c", PROFILE, args.device, size720, lanes], 90),
        Step("bench720-off", "5, 6", dreamreel("bench", *bench_size, "--batch", lanes, "--device", args.device, "--compile", "off", "--json"),
             150, "bench"),  # fmt: skip
        Step("clip1080", "3", [sys.executable, "-c", UPSCALE, clip, clip1080, "96x54" if args.quick else "1920x1080"], 60),
        video("live1080-off", "3", clip1080, *live, *part, "--compile", "off"),
        video("live1080-off-flow0.5", "3", clip1080, *live, *part, "--compile", "off", "--flow-scale", "0.5"),
        video("live1080-on-flow0.5", "3", clip1080, *live, *part, "--compile", "on", "--flow-scale", "0.5", env=kernels, timeout=240),
        Step("coherence720", "2", [sys.executable, "-m", "dreamreel.benchmarks.flow_scale", clip.parent, "--clips", "bbb-720",
                                   "--seeds", "0", "--rounds", "2"], 150),  # fmt: skip
        Step("memory-batch1", "6", [*memory, "1"], 120),
        Step("memory-mmap-threshold", "6", [*memory, lanes], 120, env={"MALLOC_MMAP_THRESHOLD_": "1048576"}),
        Step("googlenet-weights", "7", [sys.executable, "-c", GOOGLENET, work / "googlenet.pth"], 60),
        video("googlenet-off", "7", clip, *googlenet, "--compile", "off", timeout=90),
        video("googlenet-on", "7", clip, *googlenet, "--compile", "on", env=kernels, timeout=240),
        Step("bench720-on", "5, 6", dreamreel("bench", *bench_size, "--batch", lanes, "--device", args.device, "--compile", "on", "--json"),
             240, "bench", kernels),  # fmt: skip
        Step("tests-cuda", "6", tests, 180, env=kernels),
    ]


ENV_PROBE = """
import json, os, time
start = time.perf_counter()
import torch
info = {"import_torch_s": round(time.perf_counter() - start, 2)}
import cv2
info |= {"torch": torch.__version__, "cv2": cv2.__version__, "cuda": torch.cuda.is_available(), "cpus": os.cpu_count()}
if torch.cuda.is_available():
    start = time.perf_counter()
    torch.zeros(1, device="cuda")
    info |= {"cuda_init_s": round(time.perf_counter() - start, 2), "gpu": torch.cuda.get_device_name(),
             "cudnn": torch.backends.cudnn.version()}
try:
    import triton
    info["triton"] = triton.__version__
except ImportError:
    info["triton"] = None
print(json.dumps(info))
"""
# Where one uncaptured frame's GPU time goes (every kernel launched, so the
# profiler sees each), at batch 1 and at the lanes' batch: which kernels
# dominate, and whether their time per frame shrinks with the batch.
PROFILE = """
import json, sys, torch
from torch.profiler import ProfilerActivity, profile
from dreamreel.pipeline.dream import ComputeSettings, Dreamer, frame_generator
from dreamreel.pipeline.presets import build, load_preset
device, size, lanes = sys.argv[1], sys.argv[2], int(sys.argv[3])
width, height = map(int, size.split("x"))
dreamer = Dreamer(build("dream", load_preset("video-live"), {"iterations": 5}), ComputeSettings(device=device, compile="off"))
dreamer.graphs = None
cuda = dreamer.device.type == "cuda"
sync = torch.cuda.synchronize if cuda else (lambda: None)
report = {}
for batch in (1, lanes):
    x = torch.rand(batch, 3, height, width, device=dreamer.device)
    dreamer(x, iterations=1)
    sync()
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        dreamer(x, generators=[frame_generator(0, k) for k in range(batch)])
        sync()
    ms = lambda e: (e.self_device_time_total if cuda else e.self_cpu_time_total) / 1000 / batch
    events = sorted((e for e in prof.key_averages() if ms(e) > 0), key=ms, reverse=True)
    report[batch] = {"ms_per_frame": round(sum(map(ms, events)), 2), "kernels_per_frame": sum(e.count for e in events) / batch,
                     "top": [[e.key[:100], round(ms(e), 3), e.count] for e in events[:15]]}
print(json.dumps(report))
"""
# The memory check of bench720-off (pipeline children on a 24- and a 240-frame
# pan, one step an octave, N lanes), for the two hypotheses of docs/performance.md:
# at one lane (is the growth the 8 lanes' queues and flow threads filling, which
# 24 frames cannot fill?), and with MALLOC_MMAP_THRESHOLD_ fixed, where
# frame-sized buffers are always mapped and unmapped, so glibc's arenas cannot keep them.
MEMORY = """
import json, sys, tempfile
from pathlib import Path
from dreamreel.benchmarks import bench, pan
from dreamreel.pipeline.dream import ComputeSettings
from dreamreel.pipeline.presets import build, load_preset
device, size, frames, lanes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
width, height = map(int, size.split("x"))
preset = load_preset("video-live")
settings = build("dream", preset, {"iterations": bench.MEMORY_ITERATIONS})
video = build("video", preset, {"batch": lanes, "iterations_next": bench.MEMORY_ITERATIONS})
folder = Path(tempfile.mkdtemp(prefix="dreamreel-memory-"))
texture = pan.pan_texture((width, height), frames * bench.LONG_CLIP_FACTOR)
clips = {name: (pan.write_pan_clip(folder / f"{name}.mp4", texture, (width, height), count), count)
         for name, count in (("short", frames), ("long", frames * bench.LONG_CLIP_FACTOR))}
reports = bench.memory_reports(folder, clips, settings, ComputeSettings(device=device, compile="off"), video, at_once=True, log=print)
print(json.dumps({**reports, "ratio_long_short": reports["long"]["peak_rss_mb"] / reports["short"]["peak_rss_mb"]}))
"""
UPSCALE = """
import sys, imageio_ffmpeg, subprocess
source, target, size = sys.argv[1:]
subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", source, "-vf",
                "scale=" + size.replace("x", ":"), "-c:v", "libx264", "-preset", "veryfast", "-crf", "16", "-c:a", "copy", "-y", target],
               check=True)
"""
GOOGLENET = """
import sys, torch, torchvision
torch.manual_seed(0)
net = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True)
torch.save(net.state_dict(), sys.argv[1])
"""


def run_step(step: Step, timeout_s: float, log) -> dict:
    """Run ``step`` (at most ``timeout_s``); what it measured, and how it ended."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **step.env}
    if "DREAMREEL_CACHE" in step.env:  # the round's own kernel cache, not one this machine's environment names
        for name in ("TORCHINDUCTOR_CACHE_DIR", "CUDA_CACHE_PATH"):
            env.pop(name, None)
    start = time.perf_counter()
    first_frame_s = None
    frames_dir = Path(f"{step.output}.dreamreel") / "frames" if step.output else None
    with tempfile.TemporaryFile("w+") as output:
        proc = subprocess.Popen([str(c) for c in step.command], stdout=output, stderr=subprocess.STDOUT, env=env)
        while proc.poll() is None:
            elapsed = time.perf_counter() - start
            if first_frame_s is None and frames_dir is not None and frames_dir.is_dir() and any(frames_dir.glob("frame_*.png")):
                first_frame_s = round(elapsed, 2)
            if elapsed > timeout_s:
                proc.kill()
                proc.wait()
                break
            time.sleep(0.05)
        output.seek(0)
        text = output.read()
    seconds = time.perf_counter() - start
    log.write(f"=== {step.name} ({' '.join(map(str, step.command))})\n{text[-6000:]}\n")
    log.flush()
    result = {"step": step.name, "row": step.row, "rc": proc.returncode, "seconds": round(seconds, 1),
              "timed_out": seconds > timeout_s, "load_average": round(os.getloadavg()[0], 2)}  # fmt: skip
    if step.kind == "video":
        wrote = WROTE.search(text)
        result |= {"first_frame_s": first_frame_s, "compile_lines": COMPILE_LINE.findall(text)}
        if wrote:
            frames, loop_s = int(wrote[1]), float(wrote[2])
            result |= {"frames": frames, "loop_s": loop_s, "fps_end_to_end": round(frames / loop_s, 2)}
    elif step.kind == "bench" and proc.returncode == 0:
        figures = json.loads([line for line in text.splitlines() if line.startswith("{")][-1])
        result |= {"bench": figures, **{key: figures.get(key) for key in BENCH_KEYS}}
    elif proc.returncode == 0 and any(line.startswith("{") for line in text.splitlines()):
        result["output"] = json.loads([line for line in text.splitlines() if line.startswith("{")][-1])
    else:
        result["tail"] = text.strip().splitlines()[-3:]
    if step.output is not None:  # the outputs and work folders would fill the disk
        shutil.rmtree(f"{step.output}.dreamreel", ignore_errors=True)
        step.output.unlink(missing_ok=True)
    return result


def table(results: list[dict]) -> str:
    """The summary: one line per step with what it measured."""
    lines = [f"{'step':<22}{'row':<6}{'rc':>4}{'s':>7}  figures"]
    for r in results:
        if r.get("skipped"):
            lines.append(f"{r['step']:<22}{r['row']:<6}{'-':>4}{'-':>7}  skipped: {r['skipped']}")
            continue
        if "bench" in r:
            figures = ", ".join(f"{k} {r[k]}" for k in BENCH_KEYS if k not in ("rss_parts_mb", "stage_ms_per_frame"))
            figures += f"\n{'':<41}rss_parts_mb {r['rss_parts_mb']}\n{'':<41}stages ms {r['stage_ms_per_frame']}"
        elif "compile_lines" in r:
            figures = f"first frame {r.get('first_frame_s')} s, {r.get('fps_end_to_end')} frames/s end to end"
            figures += "".join(f"\n{'':<41}{line}" for line in r["compile_lines"])
        else:
            figures = json.dumps(r.get("output")) if "output" in r else " | ".join(r.get("tail", []))
        timed_out = " TIMED OUT" if r["timed_out"] else ""
        lines.append(f"{r['step']:<22}{r['row']:<6}{r['rc']!s:>4}{r['seconds']:>7.1f}  {figures}{timed_out}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for summary.jsonl, summary.txt and log.txt")
    parser.add_argument("--clip", type=Path, required=True, help="the 1280x720 Big Buck Bunny clip")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget", type=float, default=510, help="seconds for the whole round")
    parser.add_argument("--work", type=Path, default=Path("/tmp/dreamreel-gpu-round"), help="scratch folder (emptied first)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: to check the round on a CPU")
    parser.add_argument("--only", help="comma-separated step names to run (default: all)")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    args.out.mkdir(parents=True, exist_ok=True)
    args.clip = args.clip.resolve()
    steps = [s for s in plan(args, args.work) if not args.only or s.name in args.only.split(",")]
    results = []
    with open(args.out / "log.txt", "a") as log, open(args.out / "summary.jsonl", "a") as jsonl:
        for step in steps:
            left = args.budget - (time.perf_counter() - began)
            if left < min(step.timeout_s, 45):  # too little time to learn anything from it
                result = {"step": step.name, "row": step.row, "skipped": f"{left:.0f} s of the budget left"}
            else:
                print(f"[{time.perf_counter() - began:5.0f} s] {step.name}", flush=True)
                result = run_step(step, min(step.timeout_s, left), log)
            results.append(result)
            jsonl.write(json.dumps(result) + "\n")
            jsonl.flush()
            (args.out / "summary.txt").write_text(table(results) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
