"""One ascent step compiled (``--compile on``) against eager, and what compiling costs: ``python benchmarks/compile_step.py``.

For each size and precision, the default model's step (the ``video-flow``
look: ``mid``, jitter, gradient blur; tiled as the dreamer tiles it) runs in
two fresh processes sharing one empty kernel cache folder:

1. **cold**: the first compiled step (compiling every kernel, tile shapes
   included, and running once), then ``--rounds`` rounds of ``--steps`` eager
   steps and ``--steps`` compiled steps, alternating, so the two are measured
   under the same load; the ratio is compiled over eager, per round;
2. **warm**: a new process on the cache the first one filled: its first
   compiled step (what a second run of a job pays before its first frame).

Each line printed is one JSON object (wall and CPU milliseconds per step,
per round; seconds of the first compiled step; the 1-minute load average
before and after), and a table ends the run. On a machine others use, read
the CPU times and their ratio, not the wall milliseconds. ``--device cuda`` measures the GPU the same
way (uncaptured steps: the captured graph is measured by ``dreamreel bench``).

    python benchmarks/compile_step.py --sizes 640x360,1280x720 --precisions bf16,fp32 --threads 1
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


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def measure(size: str, precision: str, device: str, rounds: int, steps: int, warm: bool) -> dict:
    """In this process: the first compiled step's seconds and, unless ``warm``, the alternating timings."""
    import torch

    from dreamreel.pipeline import models
    from dreamreel.pipeline.dream import CPU_TILE, CompiledSteps, ascent_step, frame_generator
    from dreamreel.pipeline.objectives import parse_objective
    from dreamreel.pipeline.presets import build, load_preset

    dev = torch.device(device)
    width, height = (int(n) for n in size.split("x"))
    autocast_dtype = models.pick_precision(precision, dev)
    model = models.prepare(models.load_model(models.DEFAULT_MODEL), dev)
    settings = build("dream", load_preset("video-flow"), {"tile": CPU_TILE if dev.type == "cpu" else max(width, height)})
    objective = parse_objective(settings.objective, model)
    x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0)).to(dev)
    compiled = CompiledSteps(required=True)

    def step(with_compiled) -> None:
        ascent_step(model, x, objective, settings, [frame_generator(0, 0)], autocast_dtype, compiled=with_compiled)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    load_before = load_average()
    start = time.perf_counter()
    step(compiled)
    sync()
    result = {"size": size, "precision": precision, "device": device, "threads": torch.get_num_threads(),
              "warm_cache": warm, "first_compiled_step_s": round(time.perf_counter() - start, 2)}  # fmt: skip
    if not warm:
        step(None)  # the eager kernels' first call (oneDNN primitives), untimed as the compiled one's second is
        step(compiled)
        timings = {"eager": [], "compiled": []}
        for _ in range(rounds):
            for name, which in (("eager", None), ("compiled", compiled)):
                sync()
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(steps):
                    step(which)
                sync()
                timings[name].append((1000 * (time.perf_counter() - wall) / steps, 1000 * (time.process_time() - cpu) / steps))
        result.update({
            f"{name}_ms": [round(w, 1) for w, _ in values] for name, values in timings.items()
        } | {
            f"{name}_cpu_ms": [round(c, 1) for _, c in values] for name, values in timings.items()
        } | {
            "ratio_compiled_over_eager": [round(c[0] / e[0], 3) for c, e in zip(timings["compiled"], timings["eager"])],
        })  # fmt: skip
    result["load_average"] = [load_before, load_average()]
    return result


def child(args: argparse.Namespace, size: str, precision: str, cache: str, warm: bool) -> dict:
    """:func:`measure` in a fresh process whose kernel cache is ``cache``."""
    env = {**os.environ, "DREAMREEL_CACHE": cache, "OMP_NUM_THREADS": str(args.threads)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    command = [sys.executable, __file__, "--child", json.dumps([size, precision, args.device, args.rounds, args.steps, warm])]
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"size": size, "precision": precision, "warm_cache": warm, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="640x360,1280x720")
    parser.add_argument("--precisions", default="bf16,fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each process (default 1: a shared machine)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of eager and compiled steps")
    parser.add_argument("--steps", type=int, default=3, help="steps per round and kind")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        size, precision, device, rounds, steps, warm = json.loads(args.child)
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        print(json.dumps(measure(size, precision, device, rounds, steps, warm)))
        return 0
    rows = []
    for size in args.sizes.split(","):
        for precision in args.precisions.split(","):
            with tempfile.TemporaryDirectory(prefix="dreamreel-compile-") as cache:
                for warm in (False, True):
                    row = child(args, size, precision, cache, warm)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    print(f"\n{'size':<10}{'prec':<6}{'eager ms (CPU)':>20}{'compiled ms (CPU)':>20}{'CPU ratio':>12}{'compile s':>11}{'cached s':>10}  load")
    for cold, warm in zip(rows[::2], rows[1::2]):
        if "error" in cold or "error" in warm:
            print(f"{cold['size']:<10}{cold['precision']:<6}  failed: {cold.get('error') or warm.get('error')}")
            continue
        ratios = [c / e for c, e in zip(cold["compiled_cpu_ms"], cold["eager_cpu_ms"])]
        print(
            f"{cold['size']:<10}{cold['precision']:<6}"
            f"{statistics.median(cold['eager_ms']):>10.0f} ({statistics.median(cold['eager_cpu_ms']):>5.0f})"
            f"{statistics.median(cold['compiled_ms']):>11.0f} ({statistics.median(cold['compiled_cpu_ms']):>5.0f})"
            f"{f'{min(ratios):.2f}-{max(ratios):.2f}':>12}"
            f"{cold['first_compiled_step_s']:>11.1f}{warm['first_compiled_step_s']:>10.1f}  {cold['load_average']} {warm['load_average']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
