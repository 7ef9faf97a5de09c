"""`dreamreel`: the command line. Parse, validate, call the library.

Heavy modules (torch, OpenCV) are imported inside the command functions so
`dreamreel --help` answers at once.

Exit codes: 0 done, 1 unexpected failure, 2 bad usage or bad input (one line
on stderr), 130 interrupted by Ctrl-C, 143 stopped by SIGTERM (128 + the
signal's number, as shells report a process a signal ended).
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
import warnings

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump), exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text}")
    return value


def positive_number(text: str) -> float:
    """A finite number above 0 (seconds, beats per minute)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number above 0, got {text}")
    return value


def size_arg(text: str) -> tuple[int, int]:
    """``WxH`` → (width, height), each from 16 to 8192 pixels."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 512x512, got {text!r}") from None
    if not (16 <= w <= 8192 and 16 <= h <= 8192):
        raise argparse.ArgumentTypeError(f"{text}: width and height must be from 16 to 8192 pixels")
    return w, h


# --- shared option groups -------------------------------------------------------

DREAM_FLAGS = (
    "objective", "octaves", "octave_scale", "iterations", "step", "jitter", "smooth", "tile", "tile_batch", "seed",
    "optimizer", "param", "gain", "scale_jitter", "rotate_jitter",
)  # fmt: skip


def add_dream_options(parser: argparse.ArgumentParser) -> None:
    p = parser.add_argument_group("dream (defaults come from the preset; see `dreamreel presets NAME`)")
    p.add_argument("--preset", help="built-in preset name or a .toml file")
    p.add_argument("--model", help="zoo model (see `dreamreel models`), timm:NAME, or an .onnx or TorchScript file; "
                   "default efficientnet-lite0")
    p.add_argument("--weights", help="state-dict file: your own weights for a zoo or timm:NAME model, or torchvision's file when offline")
    p.add_argument("--labels", help="class names file, one per line (for class:NAME)")
    p.add_argument("--objective", help='what to amplify, e.g. "mid", "blocks.4:97", "class:285", "low + 0.5*high", "mid - 0.5*tv"')
    p.add_argument("--guide", help="guide image for guide:LAYER objectives")
    p.add_argument("--octaves", type=int, help="pyramid levels")
    p.add_argument("--octave-scale", type=float, help="size ratio between levels")
    p.add_argument("--iterations", type=int, help="ascent steps per octave")
    p.add_argument("--step", type=float, help="step size in pixel-range units (0.01 = 1%%)")
    p.add_argument("--jitter", type=int, help="largest random roll in pixels")
    p.add_argument("--smooth", type=float, help="Gaussian smoothing of the gradient, sigma in pixels (0 = off)")
    p.add_argument("--tile", type=int, help="largest side processed at once, in pixels")
    p.add_argument("--tile-batch", type=int, help="tiles that go through the network together (more is faster on a GPU)")
    p.add_argument("--max-side", type=positive_int, help="downscale the input so its longest side is at most PX")
    p.add_argument("--seed", type=int, help="random seed (same seed, same output)")
    p.add_argument("--optimizer", choices=["step", "adam", "lbfgs"],
                   help="step: the normalised gradient step (default); adam: Adam at learning rate --step; lbfgs: L-BFGS")
    p.add_argument("--param", choices=["pixel", "fft"],
                   help="the picture as pixels (default), or as a 1/f-scaled spectrum in decorrelated colours (adam, lbfgs)")
    p.add_argument("--gain", type=float, help="enhance:LAYER aims at this many times the start picture's activations")
    p.add_argument("--scale-jitter", type=float, help="random rescaling before each step, e.g. 0.1 = 0.9x to 1.1x (adam, lbfgs)")
    p.add_argument("--rotate-jitter", type=float, help="random rotation before each step, largest angle in degrees (adam, lbfgs)")
    add_device_options(p)


def add_device_options(p) -> None:
    """--device and --precision, shared by the dreaming commands and bench."""
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps (default: auto)")
    p.add_argument(
        "--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
        help="mixed precision; auto = bf16 where faster (default: auto)",
    )
    p.add_argument(
        "--compile", default="auto", choices=["auto", "on", "off"],
        help="compile the ascent step with torch.compile (kernels kept in ~/.cache/dreamreel, or $DREAMREEL_CACHE); "
        "auto = on a CUDA GPU for video and zoom (default: auto)",
    )


def dream_settings(args, preset):
    """DreamSettings from defaults < preset < flags."""
    from dreamreel.pipeline.presets import build

    return build("dream", preset, {name: getattr(args, name) for name in DREAM_FLAGS})


def compute_settings(args, preset):
    from dreamreel.pipeline.dream import ComputeSettings

    model = args.model or (preset.model if preset else None) or ComputeSettings.model
    return ComputeSettings(
        model=model, weights=args.weights, labels=args.labels, device=args.device,
        precision=args.precision, guide=args.guide, compile=args.compile,
    )


def port_number(text: str) -> int:
    """A UDP or TCP port, 1 to 65535."""
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 1 to 65535, got {text}")
    return value


def preset_list(text: str) -> tuple[str, ...]:
    """Comma-separated preset names."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def add_controls_options(parser: argparse.ArgumentParser) -> None:
    """The live controls: a mapping file, OSC, MIDI, keys, audio in (docs/live-controls.md). --quiet is add_common's."""
    p = parser.add_argument_group("controls (MIDI, OSC, keys, audio in; see docs/live-controls.md)")
    p.add_argument("--controls", metavar="FILE", help="mapping file (TOML) for MIDI and OSC, and settings as expressions")
    p.add_argument("--osc-port", type=port_number, metavar="PORT", help="listen for OSC on this UDP port (/dreamreel/step 0.02, ...)")
    p.add_argument("--osc-host", default="127.0.0.1", help="address OSC listens on; 0.0.0.0 lets the network in")
    p.add_argument("--midi", nargs="?", const="", metavar="PORT", help="listen to a MIDI input (part of its name; none: the first)")
    p.add_argument("--learn", action="store_true", help="print each incoming MIDI/OSC message and the mapping line for it")
    p.add_argument("--audio-in", nargs="?", const="", metavar="DEVICE",
                   help="analyse a sound card input (number or part of its name; none: the default): rms bass mid treble onset, b")
    p.add_argument("--lookahead", type=float, default=0.0, metavar="SECONDS",
                   help="read the beat b this far ahead, to cover the output's latency")
    p.add_argument("--keys", type=preset_list, metavar="PRESET,...", help="the presets on the window's number keys 1-9 and 0 "
                   "(default: the mapping file's, else live-camera,live-zoom,live-beat,mid-creatures,low-ornaments,high-objects)")


def controls_settings(args):
    """ControlSettings from the controls flags."""
    from dreamreel.pipeline.controls import ControlSettings

    return ControlSettings(
        controls=args.controls, osc_port=args.osc_port, osc_host=args.osc_host, midi=args.midi, learn=args.learn,
        audio_in=args.audio_in, lookahead=args.lookahead, keys=args.keys,
    )  # fmt: skip


def load_preset_arg(args, default: str | None):
    from dreamreel.pipeline.presets import load_preset

    name = args.preset or default
    return load_preset(name) if name else None


# --- commands ---------------------------------------------------------------------


def cmd_image(args) -> int:
    from dreamreel.pipeline.image import dream_image

    preset = load_preset_arg(args, "mid-creatures")
    result = dream_image(
        args.input, args.output, dream_settings(args, preset), compute_settings(args, preset),
        max_side=args.max_side, noise_size=args.size, progress=not args.quiet,
    )
    w, h = result.size
    print(f"wrote {result.output} ({w}x{h}) in {result.seconds:.1f} s; score {result.score_start:.3g} → {result.score_end:.3g}")
    return EXIT_OK


def encode_settings(args, preset):
    from dreamreel.pipeline.presets import build

    return build("encode", preset, {"crf": args.crf, "codec": args.codec, "speed": args.speed, "keep_audio": args.keep_audio})


def interrupted(stop: KeyboardInterrupt, output=None) -> int:
    """Say what an interrupted command kept (the work folder of ``output``, if one is left); return its exit code.

    The code is 128 + the signal (130 for Ctrl-C, 143 for SIGTERM).
    """
    from dreamreel.pipeline.render import work_folder

    folder = work_folder(output) if output is not None else None
    if folder is not None and folder.is_dir():
        print(f"dreamreel: interrupted; finished frames are kept in {folder}. Run the same command again to continue.",
              file=sys.stderr)  # fmt: skip
    elif folder is not None:
        print("dreamreel: interrupted before the first frame was finished; nothing was kept", file=sys.stderr)
    else:
        print("dreamreel: interrupted", file=sys.stderr)
    return 128 + getattr(stop, "signum", signal.SIGINT)


def cmd_video(args) -> int:
    from dreamreel.pipeline.presets import build
    from dreamreel.pipeline.video import dream_video

    preset = load_preset_arg(args, "video-flow")
    video = build("video", preset, {
        "blend": args.blend, "flow": args.flow, "flow_scale": args.flow_scale, "iterations_next": args.iterations_next,
        "batch": args.batch, "temporal": args.temporal, "warmup": args.warmup, "cadence": args.cadence,
    })
    options = dict(start_s=args.start, end_s=args.end, max_frames=args.max_frames, max_side=args.max_side, progress=not args.quiet)
    settings, compute, encode = dream_settings(args, preset), compute_settings(args, preset), encode_settings(args, preset)
    ray_only = [f"--{name.replace('_', '-')}" for name in ("workers", "threads", "segment_frames", "verbose") if getattr(args, name)]
    if args.ray is None and ray_only:
        raise ValueError(f"{', '.join(ray_only)}: only used with --ray; add --ray or drop them")
    try:
        if args.ray is None:
            result = dream_video(args.input, args.output, settings, compute, video, encode, **options)
        else:
            from dreamreel.pipeline.distributed import RaySettings, dream_video_ray

            flags = {"workers": args.workers, "threads": args.threads, "segment_frames": args.segment_frames}
            distributed = RaySettings(address=args.ray or None, **{k: v for k, v in flags.items() if v is not None})
            result = dream_video_ray(args.input, args.output, settings, compute, video, encode, distributed, verbose=args.verbose, **options)
    except KeyboardInterrupt as stop:
        return interrupted(stop, args.output)
    lanes = f", {result.lanes} lanes" if result.lanes > 1 else ""
    if args.ray is not None:
        lanes = f" on {result.lanes} Ray workers"
    print(f"wrote {result.output}: {result.frames} frames at {result.fps:.3f} fps in {result.seconds:.1f} s{lanes}")
    return EXIT_OK


def variations_arg(text: str) -> int | list[str]:
    """``K`` (seeds) or ``PRESET,PRESET,...`` (looks)."""
    if text.strip().isdigit():
        return positive_int(text)
    names = [name.strip() for name in text.split(",")]
    if len(names) < 2 or not all(names):
        raise argparse.ArgumentTypeError(f"expected a count such as 4 or presets such as zoom-drift,zoom-spiral, got {text!r}")
    return names


def cmd_zoom(args) -> int:
    from dreamreel.pipeline.presets import build, load_preset
    from dreamreel.pipeline.zoom import dream_zoom

    loop_flags = {
        "zoom": args.zoom, "angle": args.angle, "translate_x": args.translate_x, "translate_y": args.translate_y,
        "iterations_next": args.iterations_next, "fps": args.fps, "sharpen": args.sharpen, "cadence": args.cadence,
    }  # fmt: skip
    if isinstance(args.variations, list):  # one look per preset, every flag applied to each
        if args.preset:
            raise ValueError("--preset and --variations PRESET,PRESET both choose the look; give the presets to --variations only")
        presets = [load_preset(name) for name in args.variations]
        models = {p.model for p in presets if p.model}
        if args.model is None and len(models) > 1:
            raise ValueError(f"--variations: the presets dream with different models ({', '.join(sorted(models))}); pass --model")
        preset = presets[0]
        variations = [(dream_settings(args, p), build("zoom", p, loop_flags)) for p in presets]
    else:
        preset = load_preset_arg(args, "zoom-drift")
        variations = args.variations
    zoom = build("zoom", preset, loop_flags)
    frames = args.frames if args.seconds is None else max(1, round(args.seconds * zoom.fps))
    try:
        result = dream_zoom(
            args.output, dream_settings(args, preset), compute_settings(args, preset), zoom,
            encode_settings(args, preset), frames=frames, size=args.size, init=args.init, audio=args.audio,
            bpm=args.bpm, variations=variations, progress=not args.quiet,
        )
    except KeyboardInterrupt as stop:
        return interrupted(stop, args.output)
    print(f"wrote {result.output}: {result.frames} frames at {result.fps:g} fps in {result.seconds:.1f} s")
    return EXIT_OK


def live_sources(args):
    """The source the flags choose (None: live zoom), built but not opened."""
    from dreamreel.pipeline import sources

    if args.camera is not None:
        return sources.Camera(args.camera)
    if args.input is not None:
        return sources.LoopedFile(args.input)
    if args.ndi is not None:
        return sources.NDISource(args.ndi)
    if args.screen is not None:
        return sources.ScreenSource(sources.parse_region(args.screen) if args.screen else None, fps=args.fps or 30.0)
    return None


def live_sinks(args, encode, clip):
    """The outputs the flags choose, each checked (its library, its path) before anything starts.

    The recording carries the looped ``clip``'s sound (--input), unless --audio-in's is attached to it.
    """
    from dreamreel.pipeline import sinks

    chosen = []
    if args.window:
        chosen.append(sinks.WindowSink())
    if args.virtual_camera:
        chosen.append(sinks.VirtualCameraSink())
    if args.ndi_out:
        chosen.append(sinks.NDISink(args.ndi_out))
    if args.spout:
        chosen.append(sinks.SpoutSink(args.spout))
    if args.syphon:
        chosen.append(sinks.SyphonSink(args.syphon))
    if args.record:
        chosen.append(sinks.RecordSink(args.record, encode, clip=clip))
    return chosen


LIVE_OUTPUTS = ("window", "virtual_camera", "ndi_out", "spout", "syphon", "record")


def cmd_live(args) -> int:
    from functools import partial

    from dreamreel.pipeline.controls import LiveVariables, Tempo, learn
    from dreamreel.pipeline.files import load_image
    from dreamreel.pipeline.live import DEFAULT_PRESET, DEFAULT_ZOOM_PRESET, LiveSession, load_look, run_with_controls
    from dreamreel.pipeline.sources import LoopedFile

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    # 1. the controls' flags, and --learn alone: only the controls, printing what comes in
    controls = controls_settings(args)
    if not any(getattr(args, name) for name in LIVE_OUTPUTS):
        if controls.learn:
            learn(controls, duration_s=args.duration, log=log)
            return EXIT_OK
        raise ValueError("no output: add --window, --record FILE.mp4, --virtual-camera, --ndi-out NAME, --spout NAME or --syphon NAME")
    # 2. the look, the source, the outputs
    zoom_mode = all(getattr(args, name) is None for name in ("camera", "input", "ndi", "screen"))
    if not zoom_mode and (args.zoom is not None or args.init or args.angle or args.translate_x or args.translate_y):
        raise ValueError("--zoom, --init, --angle and --translate-x/-y make a live zoom: drop the source (--camera, --input, ...)")
    overrides = {
        "model": args.model,
        "dream": {name: getattr(args, name) for name in DREAM_FLAGS},
        "video": {"blend": args.blend, "temporal": args.temporal, "iterations_next": args.iterations_next},
        "zoom": {"zoom": None if args.zoom == "" else args.zoom, "angle": args.angle, "translate_x": args.translate_x,
                 "translate_y": args.translate_y, "fps": args.fps},
        "live": {"mix": args.mix, "crossfade": args.crossfade, "fps": args.fps},
    }  # fmt: skip
    look_for = partial(load_look, overrides=overrides)
    look = look_for(args.preset or (DEFAULT_ZOOM_PRESET if zoom_mode else DEFAULT_PRESET))
    source = live_sources(args)
    sinks = live_sinks(args, encode_settings(args, None), source if isinstance(source, LoopedFile) else None)
    # 3. the session, its controls around it (OSC, MIDI, audio in, the mapping), and the show
    session = LiveSession(
        look, compute_settings(args, None), source, sinks, size=args.size, max_side=args.max_side,
        init=load_image(args.init) if args.init else None, variables=LiveVariables(),
        tempo=Tempo(lookahead_s=controls.lookahead), look_for=look_for, quiet=args.quiet, log=log,
    )  # fmt: skip
    result = run_with_controls(session, controls, duration_s=args.duration)
    rate = result.frames / result.seconds if result.seconds else 0.0
    print(f"live: {result.frames} frames in {result.seconds:.1f} s ({rate:.1f} fps), {result.dreams} dreams "
          f"({result.dreams / max(result.seconds, 1e-9):.1f}/s), {result.dropped} source frames dropped, "
          f"latency {result.latency_ms:.0f} ms")  # fmt: skip
    return EXIT_OK


def cmd_bench(args) -> int:
    import json

    from dreamreel.benchmarks.bench import format_table, log_to_stderr, run_benchmark

    result = run_benchmark(
        model=args.model, input=args.input, size=args.size, octaves=args.octaves, iterations=args.iterations,
        frames=args.frames, batch=args.batch, device=args.device, precision=args.precision, compile=args.compile, threads=args.threads,
        repeat=args.repeat, quick=args.quick, log=None if args.quiet else log_to_stderr,
    )  # fmt: skip
    print(format_table(result), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(result))
    return EXIT_OK


def cmd_metrics(args) -> int:
    import json
    from dataclasses import asdict

    from dreamreel.pipeline.metrics import measure_files

    report, seams = measure_files(
        args.input, args.output, batch=args.batch, warmup=args.warmup, start_s=args.start, end_s=args.end,
        max_frames=args.max_frames, max_side=args.max_side,
    )  # fmt: skip
    figures = {k: v for k, v in asdict(report).items() if k != "changes"}
    figures["seam_scores"] = seams
    if args.json:
        print(json.dumps(figures, indent=2))
        return EXIT_OK
    seam_text = ", ".join(f"{s:.2f}" for s in seams) if seams else "no lane borders inside a shot"
    print(f"{report.frames} frames, {report.pairs} frame pairs (scene cuts left out)\n")
    print(f"{'':<28}{'OUTPUT':>10}{'INPUT':>10}")
    print(f"{'warping error':<28}{report.warping_error:>10.4f}{report.input_warping_error:>10.4f}   lower = steadier")
    print(f"{'dream strength':<28}{report.dream_strength:>10.4f}{'':>10}   mean |OUTPUT - INPUT|")
    print(f"{'fine detail (x1000)':<28}{1000 * report.fine_detail:>10.3f}{1000 * report.input_fine_detail:>10.3f}   variance of the Laplacian")
    print(f"{'seam score at lane borders':<28}{seam_text}   1.0 = no seam")
    return EXIT_OK


def cmd_models(args) -> int:
    from dreamreel.pipeline.models import ZOO, weights_status

    width = max(map(len, ZOO))
    for name, entry in ZOO.items():
        print(f"{name:<{width}}  {entry.description}\n{'':<{width}}  weights: {weights_status(name)}")
    print(
        "\nYour own model (--labels FILE names its classes):\n"
        "  --model ARCH --weights FILE.pth       a zoo architecture with your state dict\n"
        "  --model timm:NAME --weights FILE.pth  any timm architecture with your state dict\n"
        "  --model FILE.onnx                     ONNX, e.g. from TensorFlow/Keras via tf2onnx (pip install 'dreamreel[onnx]')\n"
        "  --model FILE.pt                       TorchScript (class objectives only)"
    )
    return EXIT_OK


def cmd_layers(args) -> int:
    from dreamreel.pipeline.models import LOGITS, load_model

    model = load_model(args.model, weights=args.weights, labels=args.labels)
    channels = model.layer_channels()
    width = max(map(len, channels))
    for name, count in channels.items():
        print(f"{name:<{width}}  {count:>5} channels")
    for alias, target in model.aliases.items():
        print(f"{alias:<{width}}  = {target}")
    if not model.hookable:
        print(f"(a TorchScript file: only {LOGITS} can be dreamed, with class:N objectives)")
    return EXIT_OK


def cmd_studio(args) -> int:
    from dreamreel.pipeline.studio import serve

    serve(host=args.host, port=args.port, output_dir=args.output_dir)
    return EXIT_OK


def cmd_presets(args) -> int:
    from dreamreel.pipeline.presets import builtin_names, load_preset

    if args.name:
        preset = load_preset(args.name)
        print(f"{preset.name} ({preset.kind}): {preset.description}")
        if preset.model:
            print(f"model = {preset.model}")
        for section, values in preset.sections.items():
            print(f"[{section}]")
            for key, value in values.items():
                print(f"  {key} = {value!r}")
        return EXIT_OK
    presets = [load_preset(name) for name in builtin_names()]
    width = max(len(p.name) for p in presets)
    for kind in ("image", "video", "zoom", "live"):
        rows = [p for p in presets if p.kind == kind]
        if rows:
            print(f"{kind} presets:")
            for p in rows:
                print(f"  {p.name:<{width}}  {p.description}")
    return EXIT_OK


# --- parser -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Every command and flag, declared in one place: a flat list of argparse calls, long but with no logic to split."""
    parser = Parser(
        prog="dreamreel",
        description="DeepDream for video and animation.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dreamreel {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    p = sub.add_parser("image", help="dream a still picture", description="Dream a still picture.")
    p.add_argument("input", metavar="INPUT", help="picture file, or the word 'noise'")
    p.add_argument("output", metavar="OUTPUT", help="output picture (.png, .jpg, .webp)")
    p.add_argument("--size", type=size_arg, default=(512, 512), help="WxH of the noise picture when INPUT is 'noise'")
    add_dream_options(p)
    add_common(p)
    p.set_defaults(run=cmd_image)

    p = sub.add_parser("video", help="dream a video file, flow-coherent, sound kept", description="Dream every frame of a video.")
    p.add_argument("input", metavar="INPUT", help="video file")
    p.add_argument("output", metavar="OUTPUT", help="output: .mp4/.mov/.mkv/.webm, .gif, or a folder for PNG frames")
    v = p.add_argument_group("video")
    v.add_argument("--blend", type=float, help="share of the previous dream carried into the next frame, 0..1")
    v.add_argument("--flow", choices=["dis", "farneback", "none"], help="optical flow method (none = plain blending)")
    v.add_argument("--flow-scale", type=float,
                   help="compute the flow at this share of the frame size, 0.125..1 (0.5: about a quarter of the time, "
                        "more flicker; default 1)")
    v.add_argument("--iterations-next", type=int, help="ascent steps per octave for frames after the first")
    v.add_argument("--temporal", type=float,
                   help="pull of every ascent step towards the carried dream where the flow is trusted, 0..1 (0 = off)")
    v.add_argument("--batch", type=positive_int,
                   help="lanes dreamed as one batch, for throughput (default 1: strictly sequential)")
    v.add_argument("--warmup", type=int, help="frames both lanes dream and crossfade over at a border inside a shot")
    v.add_argument("--cadence", type=positive_int,
                   help="dream every Nth frame; the frames between show its dream warped by the flow (default 1: every frame)")
    v.add_argument("--start", type=float, default=0.0, help="first second to dream")
    v.add_argument("--end", type=float, help="second to stop before")
    v.add_argument("--max-frames", type=positive_int, help="dream at most N frames")
    r = p.add_argument_group("ray: one video on many GPUs or machines (needs pip install \"dreamreel[ray]\")")
    r.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="dream shots on Ray workers; no ADDRESS starts a local Ray, 'auto', HOST:6379 or ray://HOST:10001 joins a cluster")
    r.add_argument("--workers", type=positive_int, help="Ray workers (default: one per GPU, else one per --threads CPUs)")
    r.add_argument("--threads", type=positive_int, help="torch threads of each CPU worker (default 1)")
    r.add_argument("--segment-frames", type=positive_int, help="longest piece of a shot one worker dreams (default 300)")
    r.add_argument("--verbose", action="store_true", help="print each worker's frame rate")
    add_encode_options(p)
    add_dream_options(p)
    add_common(p)
    p.set_defaults(run=cmd_video)

    p = sub.add_parser("zoom", help="infinite-zoom feedback animation, optionally driven by music",
                       description="Render an infinite-zoom feedback animation.")
    p.add_argument("output", metavar="OUTPUT", help="output: .mp4/.mov/.mkv/.webm, .gif, or a folder for PNG frames")
    z = p.add_argument_group("animation (numbers or schedules such as \"0:(1.02), 120:(1.05)\" or \"1.01+0.03*bass\")")
    z.add_argument("--init", help="start picture (default: seeded noise)")
    length = z.add_mutually_exclusive_group()
    length.add_argument("--frames", type=positive_int, help="length in frames (default: the audio's length, else 5 s)")
    length.add_argument("--seconds", type=positive_number, help="length in seconds")
    z.add_argument("--fps", type=float, help="frames per second")
    z.add_argument("--size", type=size_arg, default=(512, 512), help="WxH of the animation")
    z.add_argument("--zoom", help="scale per frame, 0.1 to 10 (1.02 = 2%% closer)")
    z.add_argument("--angle", help="rotation per frame, degrees")
    z.add_argument("--translate-x", help="shift per frame, pixels")
    z.add_argument("--translate-y", help="shift per frame, pixels")
    z.add_argument("--iterations-next", help="ascent steps per octave for frames after the first (--iterations: frame 0)")
    z.add_argument("--sharpen", type=float, help="unsharp amount after each resampling")
    z.add_argument("--cadence", type=positive_int,
                   help="dream every Nth frame; the frames between are only moved (default 1: every frame)")
    z.add_argument("--audio", help="music file: drives bass/mid/treble/rms/onset and is muxed into the output")
    z.add_argument("--bpm", type=positive_number, help="tempo for the beat variable b (default: estimated from --audio)")
    z.add_argument("--variations", type=variations_arg, default=1,
                   help="K seeds, or PRESET,PRESET,... looks, rendered side by side as one batch")
    add_encode_options(p)
    add_dream_options(p)
    add_common(p)
    p.set_defaults(run=cmd_zoom)

    p = sub.add_parser("live", help="dream a camera, a clip or an endless zoom in real time, to a window and other outputs",
                       description="Dream in real time: the output runs at the source's frame rate and never waits for the dream "
                                   "(see docs/live.md). Ctrl-C or --duration ends it and finishes the recording.")
    src = p.add_argument_group("source (one; none = an endless live zoom)").add_mutually_exclusive_group()
    src.add_argument("--camera", type=int, metavar="N", help="camera number (OpenCV; 0 is the first)")
    src.add_argument("--input", metavar="FILE", help="a video file, played in a loop at its own frame rate")
    src.add_argument("--ndi", metavar="NAME", help="an NDI sender whose name contains NAME (needs dreamreel[ndi])")
    src.add_argument("--screen", nargs="?", const="", metavar="WxH+X+Y", help="the screen, or a region of it (needs dreamreel[live])")
    out = p.add_argument_group("outputs (any number)")
    out.add_argument("--window", action="store_true",
                     help="a window: keys 1-9 and 0 presets (--keys), space freeze, F full screen, O on-screen display, "
                          "T tap tempo, Esc quit")
    out.add_argument("--virtual-camera", action="store_true", help="a virtual webcam (pyvirtualcam; Linux: v4l2loopback)")
    out.add_argument("--ndi-out", metavar="NAME", help="send over NDI as NAME (needs dreamreel[ndi])")
    out.add_argument("--spout", metavar="NAME", help="a Spout sender, Windows (needs dreamreel[spout])")
    out.add_argument("--syphon", metavar="NAME", help="a Syphon server, macOS (needs dreamreel[syphon])")
    out.add_argument("--record", metavar="FILE", help="record the output to a video file (.mp4, .mov, .mkv, .webm), in real "
                     "time, with --audio-in's sound or else the looped --input's own")
    lv = p.add_argument_group("live")
    lv.add_argument("--duration", type=positive_number, metavar="SECONDS", help="end after this many seconds (default: Ctrl-C)")
    lv.add_argument("--fps", type=positive_number, help="output frames per second (default: the source's; live zoom: the preset's)")
    lv.add_argument("--mix", help="share of the dream in the output, 0..1, a number or an expression such as \"0.5+0.5*cc1\"")
    lv.add_argument("--crossfade", type=int, metavar="FRAMES", help="frames a preset switch fades over")
    lv.add_argument("--blend", type=float, help="share of the previous dream carried into the next, 0..1")
    lv.add_argument("--temporal", type=float, help="pull of the dream towards the carried one, 0..1")
    lv.add_argument("--iterations-next", type=int, help="ascent steps per octave of each carried dream")
    zm = p.add_argument_group("live zoom (no source)")
    zm.add_argument("--zoom", nargs="?", const="", metavar="SCALE", help="an endless zoom; SCALE per frame, a number or an expression")
    zm.add_argument("--angle", help="rotation per frame, degrees")
    zm.add_argument("--translate-x", help="shift per frame, pixels")
    zm.add_argument("--translate-y", help="shift per frame, pixels")
    zm.add_argument("--size", type=size_arg, default=(320, 180), help="WxH of the zoom")
    zm.add_argument("--init", help="start picture (default: seeded noise)")
    add_controls_options(p)
    add_encode_options(p)
    add_dream_options(p)
    add_common(p)
    p.set_defaults(run=cmd_live)

    from dreamreel.benchmarks import bench  # light: its constants, no torch import

    p = sub.add_parser("bench", help="measure speed, pipeline efficiency and memory",
                       description="Benchmark (benchmarks/bench.py): first frame, ms per iteration, GFLOP/s, "
                                   "dream-only fps at batch 1 and N, GPU busy, pipeline efficiency, speed-up, memory.")
    (w, h), (qw, qh) = bench.DEFAULT_SIZE, bench.QUICK_SIZE
    p.add_argument("--model", default=bench.DEFAULT_MODEL, help="zoo model or TorchScript file")
    p.add_argument("--input", help="video file to use instead of the generated pan (its own size)")
    p.add_argument("--size", type=size_arg, help=f"WxH of the generated pan, both even (default {w}x{h}; --quick {qw}x{qh})")
    p.add_argument("--octaves", type=positive_int,
                   help=f"pyramid levels (default {bench.DEFAULT_OCTAVES}; --quick {bench.QUICK_OCTAVES})")
    p.add_argument("--iterations", type=positive_int,
                   help=f"ascent steps per octave, every frame (default {bench.DEFAULT_ITERATIONS}; --quick {bench.QUICK_ITERATIONS})")
    p.add_argument("--frames", type=int, help=f"frames of the short clip, >= 2; the long one has {bench.LONG_CLIP_FACTOR}x "
                                              f"(default {bench.DEFAULT_FRAMES}; --quick {bench.QUICK_FRAMES})")
    p.add_argument("--batch", type=positive_int, default=1,
                   help="N: frames per call for the batch-N dream rate, and the pipeline's lanes (default 1)")
    add_device_options(p)
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's, one per core)")
    p.add_argument("--repeat", type=positive_int, default=1, help="runs of the frame-rate measurements; the fastest counts")
    p.add_argument("--quick", action="store_true", help="small and rough: for tests and smoke checks")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (the table goes to stderr)")
    add_common(p)
    p.set_defaults(run=cmd_bench)

    p = sub.add_parser("metrics", help="how steady and how strong a dreamed video is",
                       description="Warping error (flicker) of OUTPUT and of INPUT, dream strength, fine detail "
                                   "and lane seam scores; see docs/video.md for what they mean.")
    p.add_argument("input", metavar="INPUT", help="the input video")
    p.add_argument("output", metavar="OUTPUT", help="the dreamed video, or its folder of PNG frames")
    p.add_argument("--start", type=float, default=0.0, help="the --start the output was dreamed with")
    p.add_argument("--end", type=float, help="the --end the output was dreamed with")
    p.add_argument("--max-frames", type=positive_int, help="the --max-frames the output was dreamed with")
    p.add_argument("--max-side", type=positive_int, help="the --max-side the output was dreamed with")
    p.add_argument("--batch", type=positive_int, default=1, help="the --batch (lanes) the output was dreamed with")
    p.add_argument("--warmup", type=int, default=30, help="the --warmup (frames before a lane border) the output was dreamed with")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    add_common(p)
    p.set_defaults(run=cmd_metrics)

    p = sub.add_parser("models", help="list the models and whether their weights are here")
    add_common(p)
    p.set_defaults(run=cmd_models)

    p = sub.add_parser("layers", help="list the dreamable layers of a model")
    p.add_argument("model", metavar="MODEL", help="zoo name, timm:NAME (with --weights), or an .onnx or TorchScript file")
    p.add_argument("--weights", help="state-dict file")
    p.add_argument("--labels", help="class names file")
    add_common(p)
    p.set_defaults(run=cmd_layers)

    p = sub.add_parser("presets", help="list the presets, or show one")
    p.add_argument("name", metavar="NAME", nargs="?", help="preset to show")
    add_common(p)
    p.set_defaults(run=cmd_presets)

    p = sub.add_parser("studio", help="a local web page to preview looks and render them (needs dreamreel[studio])",
                       description="Open the studio: preview and render in a web browser.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 opens it to your network)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument("--output-dir", default="studio-output", help="folder for uploads, previews, renders and presets")
    add_common(p)
    p.set_defaults(run=cmd_studio)
    return parser


def add_encode_options(parser: argparse.ArgumentParser) -> None:
    p = parser.add_argument_group("encoding")
    p.add_argument("--crf", type=int, help="x264 quality, 0 (lossless) to 51; 18 looks near-lossless")
    p.add_argument("--codec", help="ffmpeg video codec; default auto: h264_nvenc where this ffmpeg can use an NVIDIA GPU, else libx264")
    p.add_argument("--speed", help="encoder speed, ultrafast to veryslow: x264's -preset (NVENC: p1..p7); default veryfast")
    p.add_argument("--keep-audio", dest="keep_audio", action="store_true", default=None, help="keep the sound (default)")
    p.add_argument("--no-audio", dest="keep_audio", action="store_false", help="drop the sound")


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _version() -> str:
    from dreamreel import __version__

    return __version__


def warning_line(message, category, filename, lineno, line=None) -> str:
    """A library warning (a truncated video, an encoder fall-back) as one line on stderr."""
    return f"dreamreel: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.formatwarning = warning_line
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from dreamreel.pipeline.render import Interrupted

    def terminate(signum, frame):  # SIGTERM stops a command as Ctrl-C does: work in hand is kept
        raise Interrupted(signum)

    main_thread = threading.current_thread() is threading.main_thread()  # only it may set handlers
    previous = signal.signal(signal.SIGTERM, terminate) if main_thread else None
    try:
        return args.run(args)
    except KeyboardInterrupt as stop:
        return interrupted(stop)
    except Exception as exc:
        if args.debug:
            raise
        line, code = error_line(exc)
        print(line, file=sys.stderr)
        return code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def error_line(exc: Exception) -> tuple[str, int]:
    """The one line printed for an error, and the exit code (the studio shows the same line).

    ValueError is bad input or a bad argument (exit 2): the library raises
    it, naming the flag or file, for exactly that. OSError (disk full,
    permissions) already says what to do (exit 1). Anything else, a TypeError
    included, is a bug: one line and a hint to rerun with --debug (exit 1).
    """
    if isinstance(exc, ValueError):
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"dreamreel: error: {message}", EXIT_USAGE
    if isinstance(exc, OSError):
        return f"dreamreel: error: {exc}", EXIT_FAILURE
    return f"dreamreel: unexpected error: {type(exc).__name__}: {exc} (rerun with --debug for details)", EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
