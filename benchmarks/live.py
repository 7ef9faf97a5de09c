"""How `dreamreel live` holds up: output rate against the source's, dream rate, latency, drops, memory and coherence.

Usage::

    python benchmarks/live.py [--seconds 120] [--size 320x180] [--fps 30] [--preset live-camera]
    python benchmarks/live.py --coherence CLIP [--frames 60] [--max-side 256]

The first form runs a :class:`~dreamreel.pipeline.live.LiveSession` (the
library's own, with the default model) on a generated source, a textured pan
(:mod:`pan`) delivered in real time at ``--fps``, into a sink that timestamps
every output frame. Every ``MARKER_EVERY`` frames the source paints a white
square in its corner (black otherwise); the latency is from the moment the
source hands such a frame over to the moment the sink receives the first
output frame showing it. It prints the output frame rate and the source's,
dream updates per second, the latency (mean and largest), source frames
dropped, resident memory and threads every ``SAMPLE_S`` seconds, the CPU
seconds of the process and the load average before and after (a busy
machine slows everything: compare ratios, and re-run on a quiet one).

The second form plays ``CLIP`` in a loop through a session, keeps its output
frames next to the source frames they show, and compares the warping error
(:func:`~dreamreel.pipeline.metrics.measure`, ``dreamreel metrics``) of a
stretch of consecutive output frames with that of the same frames dreamed
one by one by ``dreamreel video`` (the ``video-live`` look of the same
settings, every frame dreamed).
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import numpy as np

from dreamreel.benchmarks import pan

MARKER_EVERY = 90  # frames between markers: 3 s at 30 fps
MARKER_PX = 16  # the marker's side, top-left corner
SAMPLE_S = 10.0  # memory and threads sampled this often


def rss_mb() -> float:
    """Resident memory now (Linux), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_source(size: tuple[int, int], fps: float):
    """A generated pan at ``fps``, real time, with a marker every ``MARKER_EVERY`` frames; it records when each marker left."""
    from dreamreel.pipeline.sources import Source

    class MarkedPan(Source):
        name = "generated pan"

        def __init__(self):
            self.fps = fps
            self.texture = pan.pan_texture(size, 600)
            self.count = 0
            self.marker_times: list[float] = []
            self._due = 0.0

        def open(self):
            self._due = time.monotonic()

        def read(self):
            self._due = max(self._due + 1 / fps, time.monotonic() - 1 / fps)
            wait = self._due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            index = self.count % 1200
            frame = np.ascontiguousarray(pan.pan_frame(self.texture, size, index if index < 600 else 1199 - index))
            marker = self.count % MARKER_EVERY == 0
            frame[:MARKER_PX, :MARKER_PX] = 255 if marker else 0
            self.count += 1
            if marker:
                self.marker_times.append(time.monotonic())
            return frame

    return MarkedPan()


def make_sink():
    from dreamreel.pipeline.sinks import Sink

    class TimingSink(Sink):
        name = "timing"

        def __init__(self):
            self.times: list[float] = []
            self.marker_seen: list[float] = []
            self._lit = False

        def write(self, frame, info):
            now = time.monotonic()
            self.times.append(now)
            lit = frame[2 : MARKER_PX - 2, 2 : MARKER_PX - 2].mean() > 160
            if lit and not self._lit:
                self.marker_seen.append(now)
            self._lit = lit

    return TimingSink()


def run_rates(args) -> None:
    from dreamreel.pipeline.dream import ComputeSettings
    from dreamreel.pipeline.live import LiveSession, load_look

    width, height = (int(v) for v in args.size.split("x"))
    source, sink = make_source((width, height), args.fps), make_sink()
    session = LiveSession(load_look(args.preset), ComputeSettings(device=args.device), source, [sink], quiet=True)
    samples = []
    stop = threading.Event()

    def sample():
        start = time.monotonic()
        while not stop.wait(SAMPLE_S):
            samples.append((time.monotonic() - start, rss_mb(), threading.active_count()))

    load_before = os.getloadavg()
    cpu_before = time.process_time()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    result = session.run(duration_s=args.seconds)
    stop.set()
    cpu = time.process_time() - cpu_before
    load_after = os.getloadavg()
    span = sink.times[-1] - sink.times[0]
    output_fps = (len(sink.times) - 1) / span
    source_fps = source.count / result.seconds
    latencies = []
    for sent in source.marker_times:
        seen = [t for t in sink.marker_seen if t >= sent]
        if seen and seen[0] - sent < 2.0:
            latencies.append(seen[0] - sent)
    print(f"settings: {args.size} at {args.fps:g} fps, preset {args.preset}, {args.seconds:g} s, device {args.device}, "
          f"{os.cpu_count()} CPUs, torch threads {__import__('torch').get_num_threads()}")  # fmt: skip
    print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")  # fmt: skip
    print(f"output {output_fps:.2f} fps against the source's {source_fps:.2f} ({output_fps / source_fps:.3f}x); "
          f"{len(sink.times)} output frames, {result.dropped} source frames dropped")  # fmt: skip
    print(f"dream updates {result.dreams / result.seconds:.2f}/s ({result.dreams} in {result.seconds:.1f} s)")
    if latencies:
        print(f"marker latency (source hand-over to sink): mean {1000 * np.mean(latencies):.0f} ms, "
              f"largest {1000 * max(latencies):.0f} ms over {len(latencies)} markers")  # fmt: skip
    print(f"session latency (source arrival to sink hand-over, every frame): mean {result.latency_ms:.0f} ms")
    print(f"CPU {cpu:.0f} s over {result.seconds:.0f} s wall ({cpu / result.seconds:.2f} cores)")
    print("memory: " + ", ".join(f"{s:.0f} s {mb:.0f} MB ({threads} threads)" for s, mb, threads in samples))
    early = [mb for s, mb, _ in samples if s >= 60]
    if len(early) >= 2:
        print(f"memory at the end over memory at 1 minute: {early[-1] / early[0]:.3f}")


def run_coherence(args) -> None:
    """Live output of a looped clip against the same frames dreamed every one by ``dreamreel video``."""
    import tempfile

    from dreamreel.pipeline.decode import read_frames
    from dreamreel.pipeline.dream import ComputeSettings
    from dreamreel.pipeline.encode import EncodeSettings, FrameWriter
    from dreamreel.pipeline.files import frame_path, load_image
    from dreamreel.pipeline.live import LiveSession, load_look
    from dreamreel.pipeline.metrics import measure
    from dreamreel.pipeline.sinks import MemorySink
    from dreamreel.pipeline.sources import LoopedFile
    from dreamreel.pipeline.video import dream_video

    look = load_look(args.preset)
    sink = MemorySink(keep=None)
    source = LoopedFile(args.coherence, max_side=args.max_side)
    session = LiveSession(look, ComputeSettings(device=args.device), source, [sink], quiet=True)
    session.run(duration_s=args.seconds)
    frames = list(sink.frames)
    # the longest stretch of consecutive source frames shown in order, past the first loop (a carried dream)
    best, run = [], []
    for frame, info in frames:
        if run and info.source_index != run[-1][1].source_index + 1:
            best, run = max(best, run, key=len), []
        run.append((frame, info))
    best = max(best, run, key=len)[: args.frames]
    outputs = [frame for frame, _ in best]
    inputs = [info.source for _, info in best]
    live = measure(outputs, inputs)
    shown_dreams = sum(1 for _, info in best if info.dream_index == info.source_index)
    with tempfile.TemporaryDirectory() as folder:
        clip = Path(folder) / "stretch.mp4"
        with FrameWriter(clip, fps=round(source.fps), size=(inputs[0].shape[1], inputs[0].shape[0]),
                         settings=EncodeSettings(crf=0, codec="libx264", speed="ultrafast")) as writer:  # fmt: skip
            for frame in inputs:
                writer.write(frame)
        dream_video(clip, Path(folder) / "every", look.dream, ComputeSettings(device=args.device), look.video,
                    EncodeSettings(), progress=False)  # fmt: skip
        every = [load_image(frame_path(Path(folder) / "every", t)) for t in range(len(inputs))]
        reference = measure(every, list(read_frames(clip)))
    print(f"load average {os.getloadavg()[0]:.2f}; {len(best)} consecutive live frames, {shown_dreams} of them a dream's own frame")
    print(f"live output:      warping error {live.warping_error:.4f}, strength {live.dream_strength:.4f}, "
          f"detail {1000 * live.fine_detail:.1f}e-3 (input warping error {live.input_warping_error:.4f})")  # fmt: skip
    print(f"every frame dreamed: warping error {reference.warping_error:.4f}, strength {reference.dream_strength:.4f}, "
          f"detail {1000 * reference.fine_detail:.1f}e-3")  # fmt: skip
    print(f"live over every-frame warping error: {live.warping_error / reference.warping_error:.2f}x (target <= 1.3)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--size", default="320x180")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--preset", default="live-camera")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--coherence", help="a clip: measure the live output's coherence instead")
    parser.add_argument("--frames", type=int, default=60, help="--coherence: consecutive frames measured")
    parser.add_argument("--max-side", type=int, default=256, help="--coherence: the clip's size")
    args = parser.parse_args()
    if args.coherence:
        run_coherence(args)
    else:
        run_rates(args)


if __name__ == "__main__":
    main()
