"""`dreamreel studio`: a local web page to audition a look, then render it.

Drop a picture or a clip (or start from noise), pick a preset, a model, an
objective and the dream settings, look at a small preview within seconds, then
render to a file and download it. Zoom schedules are edited as text beside a
plot of their values over the frames (and of the music's features when a song
is given), and the look can be saved as a preset file that the command line
reproduces exactly.

The page is a front end like ``cli/main.py``: it builds the same settings
dataclasses through :func:`presets.build` and calls the same jobs
(:func:`image.dream_image`, :func:`video.dream_video`, :func:`zoom.dream_zoom`).
Gradio is an optional extra (``pip install 'dreamreel[studio]'``) imported
only by :func:`serve`.

Safety: everything the page sends is data. Models are zoo names, objectives and
schedules go through their own small parsers (nothing reaches ``eval``), input
files must be uploads, and every file written (uploads, previews, renders,
presets) lands inside the output folder. The page serves back only the files
the studio wrote there and Gradio's own uploads, never the rest of the folder.

One render at a time: renders run on the main thread, one after another
(:class:`RenderWorker`), so Cancel is the command line's Ctrl-C: a zoom or a
video stops after the frames in hand and keeps them in its work folder for a
rerun; a picture stops at once and writes nothing. Requests that wait for the
render in progress are shown on the page as queued.
"""


import _thread
import contextvars
import functools
import itertools
import json
import math
import os
import queue
import re
import shlex
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: this module imports no torch until a job runs
    from .dream import ComputeSettings, DreamSettings
    from .encode import EncodeSettings
    from .video import VideoSettings
    from .zoom import ZoomSettings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_OUTPUT_DIR = "studio-output"
JOBS = ("image", "video", "zoom")
# Each job starts from the preset its command uses by default.
DEFAULT_PRESETS = {"image": "mid-creatures", "video": "video-flow", "zoom": "zoom-drift"}
# Previews: the longest side in pixels, and the frames of a zoom preview.
# Measured on the 2-core development CPU (docs/studio.md): a picture preview
# at 192 px with the default look takes a few seconds, most of it loading the model.
PREVIEW_SIDE = 192
PREVIEW_ZOOM_FRAMES = 8
MAX_SIDE = 4096  # largest render side the page accepts, in pixels
MAX_FRAMES = 100_000  # longest zoom the page accepts
MAX_PLOT_POINTS = 2000  # schedule plots sample at most this many frames
SCHEDULE_PLOT_HEIGHT = 160  # px: one small plot per schedule box
# Cancel waits this long for the frames in hand to finish before answering.
CANCEL_WAIT_S = 120.0
POLL_S = 1.0  # how often a waiting render request updates the page's progress bar
# Sub-folders of the output folder.
UPLOADS = ".uploads"  # Gradio's file cache: uploads and files shown on the page
PREVIEWS = ".preview"
PRESETS = "presets"
PRESET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


class Cancelled(Exception):
    """The render was cancelled from the page (or by Ctrl-C) before it finished."""


# --- what the page asks for ---------------------------------------------------------


@dataclass(frozen=True)
class Folders:
    """The output folder and its parts; nothing the page sends is written elsewhere."""

    output: Path

    @property
    def uploads(self) -> Path:
        return self.output / UPLOADS

    @property
    def previews(self) -> Path:
        return self.output / PREVIEWS

    @property
    def presets(self) -> Path:
        return self.output / PRESETS

    def make(self) -> None:
        """Create the folders; a folder that cannot be made is a one-line error."""
        for folder in (self.output, self.uploads, self.previews, self.presets):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ValueError(f"--output-dir {self.output}: cannot create {folder} ({exc.strerror})") from None

    def upload(self, path: str | None, what: str) -> Path | None:
        """An uploaded file's path, checked to lie in the upload folder (None: nothing dropped)."""
        if not path:
            return None
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(self.uploads.resolve()) or not resolved.is_file():
            raise ValueError(f"{what}: {Path(path).name} is not a file dropped on this page; drop it again")
        return resolved


@dataclass(frozen=True)
class Job:
    """One render, as the page describes it: the settings dataclasses plus the job's inputs.

    Attributes:
        kind: ``image``, ``video`` or ``zoom``.
        source: picture (image, zoom start) or clip (video); None = seeded noise.
        dream, compute, zoom, video, encode: the settings, as the CLI builds them.
        side: longest side of the output in pixels.
        frames: zoom length in frames; video: the most frames to dream (None = all).
        audio: song for a zoom (drives the schedules and is muxed in), or None.
        bpm: tempo for ``b``; None = estimated from the song.
    """

    kind: str
    source: Path | None
    dream: "DreamSettings"
    compute: "ComputeSettings"
    zoom: "ZoomSettings"
    video: "VideoSettings"
    encode: "EncodeSettings"
    side: int
    frames: int | None
    audio: Path | None
    bpm: float | None

    def size(self, side: int | None = None) -> tuple[int, int]:
        """(width, height) of the output at ``side`` (default: the job's): the source's shape, or square."""
        from .decode import output_size

        side = side or self.side
        if self.source is None:
            return side, side
        if self.kind == "video":
            from .decode import probe_video

            info = probe_video(self.source)
            return output_size(info.width, info.height, side)
        from .files import load_image

        h, w = load_image(self.source).shape[:2]
        return output_size(w, h, side)

    def sections(self) -> dict[str, object]:
        """The settings a preset of this job holds, by section."""
        extra = {"image": {}, "video": {"video": self.video, "encode": self.encode}, "zoom": {"zoom": self.zoom, "encode": self.encode}}
        return {"dream": self.dream, **extra[self.kind]}


# Page controls → settings. Names are the dataclass fields (= preset keys = CLI flags).
DREAM_CONTROLS = ("objective", "octaves", "iterations", "step", "jitter", "seed")
ZOOM_CONTROLS = ("zoom", "angle", "translate_x", "translate_y", "step", "iterations_next", "fps")
VIDEO_CONTROLS = ("blend", "flow")
CONTROLS = (
    "kind", "source", "preset", "model", *DREAM_CONTROLS, "side", "frames",
    *(f"zoom_{name}" for name in ZOOM_CONTROLS), *(f"video_{name}" for name in VIDEO_CONTROLS), "audio", "bpm",
)  # fmt: skip
# Each control's label on the page. The page's error lines name these instead of
# the command line's flags, which the page does not show.
LABELS = {
    "kind": "Job", "source": "Picture or clip", "preset": "Preset", "model": "Model", "objective": "Objective",
    "octaves": "Octaves", "iterations": "Steps per octave", "step": "Step size", "jitter": "Jitter", "seed": "Seed",
    "side": "Longest side", "frames": "Frames", "zoom_zoom": "zoom", "zoom_angle": "angle",
    "zoom_translate_x": "translate-x", "zoom_translate_y": "translate-y", "zoom_step": "step",
    "zoom_iterations_next": "iterations-next", "zoom_fps": "fps", "video_blend": "blend", "video_flow": "flow",
    "audio": "Song", "bpm": "bpm",
}  # fmt: skip
# What library messages name (flags, the CLI's INPUT) → the control that sets it.
# A zoom schedule's messages name the setting itself (``translate-x: column 3``), as its label does.
FLAG_CONTROLS = {
    "INPUT": "source", "--preset": "preset", "--model": "model", **{f"--{name}": name for name in DREAM_CONTROLS},
    "--max-side": "side", "--frames": "frames",
    **{f"--{name.replace('_', '-')}": f"zoom_{name}" for name in ZOOM_CONTROLS if name != "step"},
    "--blend": "video_blend", "--flow": "video_flow", "--audio": "audio", "--bpm": "bpm",
}  # fmt: skip
# The zoom schedules the page has a box for, each plotted beside it ([zoom] blend is left to presets).
SCHEDULE_BOXES = tuple(name for name in ZOOM_CONTROLS if name != "fps")
# A schedule left empty (None) takes the [dream] setting of this name.
DREAM_FALLBACKS = {"step": "step", "iterations_next": "iterations"}
FLAG = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, FLAG_CONTROLS)) + r")(?![\w-])")


def _whole(value, name: str, lo: int | None = None, hi: int | None = None):
    """A whole number from a page box (which may send 4.0) as an int; ranges left to the dataclass when not given."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise ValueError(f"--{name.replace('_', '-')} {value!r}: expected a whole number")
    if lo is not None and not lo <= value <= hi:
        raise ValueError(f"--{name.replace('_', '-')} {value:g}: expected a whole number from {lo} to {hi}")
    return int(value)


def _schedule_value(text) -> str | float | None:
    """A schedule box's text: a plain number as a float, a formula as text, empty as None (keep the preset's)."""
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    text = str(text).strip()
    if not text:
        return None
    return float(text) if PLAIN_NUMBER.fullmatch(text) else text


def load_page_preset(name: str | None, folders: Folders):
    """A built-in preset by name, or one saved on this page (``presets/NAME.toml``); None for none."""
    from .presets import builtin_names, load_preset

    if not name:
        return None
    if name in builtin_names():
        return load_preset(name)
    saved = folders.presets / f"{name}.toml"
    if PRESET_NAME.fullmatch(name) and saved.is_file():
        return load_preset(str(saved))
    raise ValueError(f"--preset {name!r}: not a built-in preset nor one saved in {folders.presets}")


def page_presets(folders: Folders) -> list[str]:
    """Preset names the page offers: the built-in ones, then those saved in the output folder."""
    from .presets import builtin_names

    saved = sorted(p.stem for p in folders.presets.glob("*.toml") if PRESET_NAME.fullmatch(p.stem))
    return builtin_names() + [name for name in saved if name not in builtin_names()]


def job_from_page(values: dict, folders: Folders) -> Job:
    """Build a :class:`Job` from the page's control values (keys: :data:`CONTROLS`).

    Settings are built as the CLI builds them: defaults < preset < the page's
    values, each checked by its dataclass, so bad input raises the CLI's own
    one-line ``ValueError``.
    """
    from .dream import ComputeSettings
    from .files import IMAGE_SUFFIXES
    from .models import ZOO
    from .presets import build

    kind = values["kind"]
    if kind not in JOBS:
        raise ValueError(f"job {kind!r}: expected one of {', '.join(JOBS)}")
    preset = load_page_preset(values.get("preset"), folders)
    model = values.get("model") or (preset.model if preset else None) or ComputeSettings.model
    if model not in ZOO:
        raise ValueError(f"--model {model!r}: the studio dreams with zoo models ({', '.join(ZOO)}); use the CLI for model files")
    source = folders.upload(values.get("source"), "INPUT")
    is_clip = source is not None and source.suffix.lower() not in IMAGE_SUFFIXES
    if kind == "video" and not is_clip:
        raise ValueError("video: drop a clip on the page first (a picture dreams as image or zoom)")
    if kind != "video" and is_clip:
        raise ValueError(f"{kind}: {source.name} is not a picture ({', '.join(IMAGE_SUFFIXES)}); choose the video job for clips")
    dream_values = {name: values.get(name) for name in DREAM_CONTROLS}
    for name in ("octaves", "iterations", "jitter", "seed"):
        if dream_values[name] is not None:
            dream_values[name] = _whole(dream_values[name], name)  # DreamSettings checks the range
    if isinstance(dream_values["objective"], str):
        dream_values["objective"] = dream_values["objective"].strip() or None
    dream = build("dream", preset, dream_values)
    # the zoom and video boxes count only for their own job: a half-typed schedule never blocks a picture
    zoom = build("zoom", preset, {})
    if kind == "zoom":
        boxes = {name: values.get(f"zoom_{name}") for name in ZOOM_CONTROLS}
        zoom_values = {name: _schedule_value(text) for name, text in boxes.items() if name != "fps"}
        zoom = build("zoom", preset, {**zoom_values, "fps": boxes["fps"]})
        # an emptied step or iterations-next box is the field's None: the [dream] value
        emptied = {name: None for name in ("step", "iterations_next") if isinstance(boxes[name], str) and not boxes[name].strip()}
        zoom = replace(zoom, **emptied)
    video = build("video", preset, {name: values.get(f"video_{name}") for name in VIDEO_CONTROLS} if kind == "video" else {})
    encode = build("encode", preset, {})
    side = _whole(values.get("side"), "max-side", 16, MAX_SIDE)
    frames = values.get("frames")
    frames = _whole(frames, "frames", 1, MAX_FRAMES) if frames else None
    bpm = values.get("bpm") or None
    if bpm is not None and not (isinstance(bpm, (int, float)) and math.isfinite(bpm) and bpm > 0):
        raise ValueError(f"--bpm {bpm!r}: expected a positive number of beats per minute")
    audio = folders.upload(values.get("audio"), "--audio") if kind == "zoom" else None
    return Job(kind, source, dream, ComputeSettings(model=model), zoom, video, encode, side, frames, audio, bpm)


# --- previews and renders ------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What a preview or render produced: the file, and one line for the page."""

    path: Path
    message: str


def preview(job: Job, folders: Folders) -> Outcome:
    """A fast look: the picture (or the clip's first frame) at :data:`PREVIEW_SIDE` px, or a few zoom frames as a GIF."""
    from .decode import read_frames
    from .files import save_image
    from .image import NOISE, dream_image
    from .render import work_folder
    from .zoom import dream_zoom

    side = min(job.side, PREVIEW_SIDE)
    start = time.perf_counter()
    if job.kind == "zoom":
        out = folders.previews / "preview.gif"
        shutil.rmtree(work_folder(out), ignore_errors=True)  # a failed preview's frames: never resumed
        frames = min(job.frames or PREVIEW_ZOOM_FRAMES, PREVIEW_ZOOM_FRAMES)
        dream_zoom(
            out, job.dream, job.compute, job.zoom, job.encode, frames=frames, size=job.size(side),
            init=job.source, audio=job.audio, bpm=job.bpm,
        )  # fmt: skip
        what = f"{frames} zoom frames"
    else:
        source = job.source
        if job.kind == "video":  # the clip's first frame stands for the clip
            first = next(read_frames(job.source, max_frames=1, max_side=side))
            source = folders.previews / "first-frame.png"
            save_image(source, first)
        out = folders.previews / "preview.png"
        dream_image(source or NOISE, out, job.dream, job.compute, max_side=side, noise_size=(side, side))
        what = "the first frame" if job.kind == "video" else "the picture"
    w, h = job.size(side)
    return Outcome(out, f"preview of {what} at {w}x{h} in {time.perf_counter() - start:.1f} s")


_counter = itertools.count()


def output_path(job: Job, folders: Folders) -> Path:
    """A new file in the output folder: ``STEM-dream-N.png`` (pictures) or ``.mp4`` (clips, zooms)."""
    from .render import work_folder

    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", job.source.stem)[:40] if job.source else job.kind
    suffix = ".png" if job.kind == "image" else ".mp4"
    while True:
        path = folders.output / f"{stem}-dream-{next(_counter)}{suffix}"
        if not path.exists() and not work_folder(path).exists():
            return path


def render(job: Job, out: Path) -> Outcome:
    """The full render into ``out`` (see :func:`output_path`), with the CLI's job function."""
    from .image import NOISE, dream_image
    from .video import dream_video
    from .zoom import dream_zoom

    if job.kind == "image":
        w, h = job.size()
        result = dream_image(job.source or NOISE, out, job.dream, job.compute, max_side=job.side, noise_size=(w, h))
        return Outcome(out, f"wrote {out.name} ({w}x{h}) in {result.seconds:.1f} s; score {result.score_start:.3g} → {result.score_end:.3g}")
    if job.kind == "video":
        result = dream_video(job.source, out, job.dream, job.compute, job.video, job.encode, max_frames=job.frames, max_side=job.side)
    else:
        result = dream_zoom(
            out, job.dream, job.compute, job.zoom, job.encode, frames=job.frames, size=job.size(),
            init=job.source, audio=job.audio, bpm=job.bpm,
        )  # fmt: skip
    resumed = f" ({result.resumed_from} of them kept from before)" if result.resumed_from else ""
    return Outcome(out, f"wrote {out.name}: {result.frames} frames at {result.fps:g} fps in {result.seconds:.1f} s{resumed}")


def cancelled_line(out: Path) -> str:
    """What a cancelled render left, in one line."""
    from .render import work_folder

    if out.suffix == ".png":
        return f"cancelled: {out.name} was not written"
    return f"cancelled: {out.name} was not written; its finished frames are kept in {work_folder(out).name}, and Render with the same settings resumes from them"


# --- presets and the command line ------------------------------------------------------


def toml_value(value) -> str:
    """One TOML value for a preset: true/false, an integer, a float, or a basic string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # shortest round-tripping form; TOML reads 1e-05, inf and nan too
    if isinstance(value, str):
        # JSON's escapes are TOML's (\" \\ \n \uXXXX ...); TOML also wants DEL escaped
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    raise TypeError(f"a preset holds numbers, strings and true/false, not {type(value).__name__}")


def preset_text(job: Job, description: str) -> str:
    """The preset file of a job: its model and every field of its settings.

    Fields that are None (``[zoom] step``: "use the [dream] value") are left
    out, which TOML reads back as the same default. The text is read back
    with :func:`presets.parse_preset` and compared field by field, so a file
    written here gives exactly these settings.

    Raises:
        ValueError: the description or a value cannot be written as TOML.
    """
    from .presets import build, parse_preset

    lines = [f"description = {toml_value(description)}", f"model = {toml_value(job.compute.model)}"]
    for section, settings in job.sections().items():
        lines += ["", f"[{section}]"]
        lines += [f"{f.name} = {toml_value(getattr(settings, f.name))}" for f in fields(settings) if getattr(settings, f.name) is not None]
    text = "\n".join(lines) + "\n"
    preset = parse_preset(text, name="studio", source="the saved preset")
    for section, settings in job.sections().items():
        if build(section, preset, {}) != settings:
            raise ValueError(f"the [{section}] settings cannot be saved exactly as a preset")
    return text


def save_preset(job: Job, name: str, folders: Folders) -> Path:
    """Write ``presets/NAME.toml`` in the output folder (replacing one of that name).

    Raises:
        ValueError: a name other than letters, digits, ``-`` and ``_`` (at most
            64), or the name of a built-in preset.
    """
    from .files import write_atomically
    from .presets import builtin_names

    name = (name or "").strip()
    if not PRESET_NAME.fullmatch(name):
        raise ValueError(f"preset name {name!r}: use 1 to 64 letters, digits, '-' or '_', starting with a letter or digit")
    if name in builtin_names():
        raise ValueError(f"preset name {name!r} is a built-in preset; choose another name")
    path = folders.presets / f"{name}.toml"
    description = f"Saved from dreamreel studio ({job.kind}, longest side {job.side} px)"
    write_atomically(path, preset_text(job, description).encode("utf-8"))
    return path


def command_line(job: Job, preset_file: Path, output: str, threads: int) -> str:
    """The ``dreamreel`` command that renders ``job`` from the saved preset, as the page would.

    ``threads`` is the studio's torch thread count: the command sets it
    (``OMP_NUM_THREADS=N``) because it changes how torch splits its sums, so
    pictures dreamed on a CPU differ with the thread count (docs/studio.md).
    """
    source = job.source.name if job.source else "noise"
    if job.kind == "image":
        args = ["image", source, output, "--preset", str(preset_file), "--max-side", str(job.side)]
        if job.source is None:
            args += ["--size", "{}x{}".format(*job.size())]
    elif job.kind == "video":
        args = ["video", source, output, "--preset", str(preset_file), "--max-side", str(job.side)]
        args += ["--max-frames", str(job.frames)] if job.frames else []
    else:
        args = ["zoom", output, "--preset", str(preset_file), "--size", "{}x{}".format(*job.size())]
        args += ["--init", source] if job.source else []
        args += ["--frames", str(job.frames)] if job.frames else []
        args += ["--audio", job.audio.name] if job.audio else []
        args += ["--bpm", f"{job.bpm:g}"] if job.bpm else []
    return f"OMP_NUM_THREADS={threads} dreamreel " + shlex.join(args)


# --- schedule plots --------------------------------------------------------------------


def schedule_curves(job: Job) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Values of the zoom schedules and of the song's features over the frames.

    Returns:
        (schedules, audio): each maps a name to its value per frame for frames
        0..N-1 (``"frame"`` holds the frame numbers); N is the job's frame
        count (the song's length, else 5 seconds), at most :data:`MAX_PLOT_POINTS`.
        ``schedules`` holds every schedule of :data:`SCHEDULE_BOXES`; one left
        empty holds the [dream] value it takes (:data:`DREAM_FALLBACKS`).
        ``audio`` is empty without a song.

    Raises:
        ExprError: a schedule is malformed or needs an input the job lacks
            (``b`` without a tempo, ``bass`` without a song), as the render would.
    """
    from .audio import FEATURE_NAMES
    from .schedule import check_inputs, frame_env

    fps = job.zoom.fps
    schedules = job.zoom.schedules()
    features = song_features(job.audio, fps, job.bpm) if job.audio else None
    have_bpm = job.bpm is not None or (features is not None and features.bpm is not None)
    check_inputs(schedules.values(), have_audio=features is not None, have_bpm=have_bpm)
    frames = job.frames or (features.n_frames if features is not None else round(5 * fps))
    frames = min(frames, MAX_PLOT_POINTS)
    envs = [frame_env(t, fps, job.bpm, features) for t in range(frames)]
    curves = {"frame": list(range(frames))}
    for name in SCHEDULE_BOXES:
        if name in schedules:
            curves[name] = [schedules[name](t, env) for t, env in enumerate(envs)]
        else:
            curves[name] = [float(getattr(job.dream, DREAM_FALLBACKS[name]))] * frames
    audio = {"frame": list(range(frames)), **{n: [env[n] for env in envs] for n in FEATURE_NAMES}} if features else {}
    return curves, audio


@functools.lru_cache(maxsize=4)
def song_features(song: Path, fps: float, bpm: float | None):
    """:func:`audio.audio_features` of an uploaded song, kept for the last few: every schedule edit replots them.

    An upload never changes (Gradio stores each in a folder of its own), so its path is its identity.
    """
    from .audio import audio_features

    return audio_features(song, fps=fps, bpm=bpm)


# --- models ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def model_layers(name: str) -> tuple[list[str], str]:
    """(objective choices: aliases then layers, a Markdown list of layers with channel counts)."""
    from .models import WeightsUnavailable, load_model

    try:
        model = load_model(name, offline=True)
    except WeightsUnavailable as exc:
        return ["low", "mid", "high"], f"**{name}**: {exc}"
    channels = model.layer_channels()
    aliases = ", ".join(f"`{alias}` = `{target}`" for alias, target in model.aliases.items())
    layers = ", ".join(f"`{layer}` ({count})" for layer, count in channels.items())
    text = f"**{name}** aliases: {aliases}  \nlayers (channels): {layers}  \nobjectives: `LAYER`, `LAYER:CHANNEL`, `class:NAME`, sums such as `low + 0.5*high`"
    return [*model.aliases, *channels], text


# --- one render at a time ----------------------------------------------------------------


class _Task:
    def __init__(self, fn: Callable[[], object], owner: str, label: str):
        self.fn = fn
        self.owner = owner
        self.label = label
        self.context = contextvars.copy_context()  # the page's progress bar follows the task
        self.done = threading.Event()
        self.value: object = None
        self.error: BaseException | None = None

    def finish(self, value=None, error: BaseException | None = None) -> None:
        if not self.done.is_set():
            self.value, self.error = value, error
            self.done.set()


class RenderWorker:
    """Runs renders one at a time on the main thread, so Cancel is the CLI's Ctrl-C.

    Page threads call :meth:`submit` and wait; the main thread calls
    :meth:`serve_forever`. :meth:`cancel` interrupts the main thread as a
    Ctrl-C would (``_thread.interrupt_main``): zoom and video finish the
    frames in hand and stop, a picture stops at once. A Ctrl-C typed in the
    terminal cancels the render in progress and stops the studio.
    """

    def __init__(self):
        self._tasks: queue.Queue[_Task] = queue.Queue()
        self._lock = threading.Lock()
        self._running: _Task | None = None
        self._cancel_sent = False

    def submit(
        self, fn: Callable[[], object], owner: str, label: str = "", poll: Callable[[], None] | None = None
    ) -> object:
        """Run ``fn`` on the main thread after the renders before it; its value, or its exception.

        ``poll`` is called about once a second while waiting (progress for the page).

        Raises:
            Cancelled: the render was cancelled.
        """
        task = _Task(fn, owner, label)
        self._tasks.put(task)
        while not task.done.wait(POLL_S):
            if poll is not None:
                poll()
        if task.error is not None:
            raise task.error
        return task.value

    def cancel(self, owner: str, wait_s: float = 0.0) -> str | None:
        """Interrupt ``owner``'s render in progress and wait up to ``wait_s`` for it to stop.

        Returns:
            The label of the render interrupted, or None when ``owner`` has none running.
        """
        with self._lock:
            task = self._running
            if task is None or task.owner != owner or self._cancel_sent:
                return None
            self._cancel_sent = True
            _thread.interrupt_main()
        task.done.wait(wait_s)
        return task.label

    def run_next(self, timeout_s: float) -> None:
        """Run the next task, if one arrives within ``timeout_s`` (main thread only)."""
        try:
            try:
                task = self._tasks.get(timeout=timeout_s)
            except queue.Empty:
                return
            with self._lock:
                self._running = task
            try:
                value = task.context.run(task.fn)
            except Exception as exc:  # noqa: BLE001 - shown on the page
                task.finish(error=exc)
            else:
                task.finish(value)
            with self._lock:
                self._running, self._cancel_sent = None, False
        except KeyboardInterrupt:
            with self._lock:
                task, self._running = self._running, None
                by_page, self._cancel_sent = self._cancel_sent, False
            if task is not None:
                task.finish(error=Cancelled("cancelled"))
            if not by_page:
                raise

    def serve_forever(self) -> None:
        """Run renders until Ctrl-C."""
        while True:
            self.run_next(timeout_s=0.5)


def relay_tqdm(progress) -> None:
    """Send the page the counts of the tqdm bars Gradio tracks for this request.

    Gradio's tqdm tracking looks up the page in the context of the thread that
    updates a bar; a zoom or video render counts its frames from the render
    job's saver thread, which has no such context, so the page's bar would
    stay at 0. The page thread waiting for the render copies each tracked
    bar's count (``tqdm.n``) into Gradio's tracker and sends it. Uses Gradio's
    ``Progress.iterables`` (checked on Gradio 6.31); without it, nothing happens.
    """
    tracked = getattr(progress, "iterables", None)
    if not tracked:
        return
    for item in tracked:
        bar = getattr(item, "_tqdm", None)
        if bar is not None and item.index is not None:
            item.index = bar.n
    progress.update(0)


# --- errors ----------------------------------------------------------------------------


def error_line(exc: BaseException) -> str:
    """The one line the command line prints for this error."""
    from dreamreel.cli.main import error_line as cli_error_line

    return cli_error_line(exc)[0]


def page_line(exc: BaseException, folders: Folders) -> str:
    """:func:`error_line` in the page's words: the controls' labels for flags, an upload's name for its path.

    Example: ``--max-side 8: expected a whole number from 16 to 4096`` reads
    ``Longest side 8: expected a whole number from 16 to 4096``.
    """
    line = error_line(exc)
    for uploads in {str(folders.uploads), str(folders.uploads.resolve())}:
        # an upload lives in a folder of its own: uploads/HASH/NAME
        line = re.sub(re.escape(uploads + os.sep) + r"[^/\\\s'\"]+[/\\]", "", line)
    return FLAG.sub(lambda match: LABELS[FLAG_CONTROLS[match[1]]], line)


# --- the page --------------------------------------------------------------------------


def check_port(host: str, port: int) -> None:
    """Raise a one-line ValueError when ``host:port`` cannot be listened on."""
    if not 1 <= port <= 65535:
        raise ValueError(f"--port {port}: expected a port number from 1 to 65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == 98 or "in use" in str(exc).lower():
                raise ValueError(f"--port {port}: {host}:{port} is already in use; choose another with --port") from None
            raise ValueError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None


def import_gradio():
    """Gradio, or a one-line error naming the extra that brings it."""
    try:
        import gradio
    except ImportError:
        raise ValueError("dreamreel studio needs Gradio: pip install 'dreamreel[studio]'") from None
    return gradio


def build_page(folders: Folders, worker: RenderWorker):
    """The Gradio Blocks of the studio (not launched).

    Over 80 lines for a reason: a page is declared widget by widget, and the
    event wiring at the end refers to those widgets; the work behind every
    event is a function of its own above.
    """
    gr = import_gradio()
    import pandas as pd

    from .dream import ComputeSettings
    from .files import IMAGE_SUFFIXES
    from .models import ZOO
    from .presets import build, load_preset
    from .render import work_folder

    default_preset = load_preset(DEFAULT_PRESETS["image"])
    default_dream = build("dream", default_preset, {})
    zoom_defaults = build("zoom", None, {})
    schedule_info = {
        "zoom": "scale per frame: 1.02 = 2% closer", "angle": "degrees per frame, counter-clockwise",
        "translate_x": "px per frame", "translate_y": "px per frame", "step": "dream step per frame; empty: Step size",
        "iterations_next": "steps per octave after frame 0; empty: Steps per octave",
    }  # fmt: skip
    video_defaults = build("video", None, {})
    unfinished: dict[Job, Path] = {}  # outputs of video and zoom renders that stopped with frames to resume

    def page_values(data: dict) -> dict:
        """{component: value} (Gradio's form of a set of inputs) → {control name: value}."""
        return {names[component]: value for component, value in data.items() if component in names}

    def fail(exc: BaseException) -> str:
        return page_line(exc, folders)

    def shown(path: Path) -> str:
        """``path`` for the page to show. Gradio serves files from its upload folder and the
        allowed paths only; the studio allows the files it wrote, one by one."""
        if str(path) not in page.allowed_paths:
            page.allowed_paths.append(str(path))
        return str(path)

    def text(value) -> str:
        """A schedule box's text for a setting's value (None: empty)."""
        return "" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))

    def schedule_frame(curves: dict, name: str):
        """One schedule's plot data."""
        return pd.DataFrame({"frame": curves["frame"], "value": curves[name]})

    initial_curves, _ = schedule_curves(job_from_page({"kind": "zoom", "side": 512}, folders))  # the boxes' defaults

    def on_preset(name, source):
        """Fill the controls from a preset: defaults < preset; the job follows the preset."""
        try:
            chosen = load_page_preset(name, folders)
        except ValueError as exc:
            return {status: fail(exc)}
        if chosen is None:
            return {status: gr.skip()}
        dream, zoom, video = (build(section, chosen, {}) for section in ("dream", "zoom", "video"))
        is_clip = source is not None and Path(source).suffix.lower() not in IMAGE_SUFFIXES
        return {
            kind: "video" if is_clip else chosen.kind, model: chosen.model or ComputeSettings.model,
            objective: dream.objective, octaves: dream.octaves, iterations: dream.iterations, step: dream.step,
            jitter: dream.jitter, seed: dream.seed, zoom_zoom: text(zoom.zoom), zoom_angle: text(zoom.angle),
            zoom_translate_x: text(zoom.translate_x), zoom_translate_y: text(zoom.translate_y),
            zoom_step: text(zoom.step), zoom_iterations_next: text(zoom.iterations_next), zoom_fps: zoom.fps,
            video_blend: video.blend, video_flow: video.flow, preview_view: None,
            status: f"preset {chosen.name}: {chosen.description}",
        }  # fmt: skip

    def on_kind(job_kind, name):
        """Show the job's own sections; a preset made for another job gives way to the job's default preset."""
        try:
            current = load_page_preset(name, folders)
        except ValueError:
            current = None
        updates = {
            zoom_section: gr.Accordion(visible=job_kind == "zoom"), video_section: gr.Accordion(visible=job_kind == "video"),
            frames: gr.Number(visible=job_kind != "image"), result_view: gr.Image(visible=job_kind == "image"),
            result_video: gr.Video(visible=job_kind != "image"), preview_view: None,
        }  # fmt: skip
        if current is None or current.kind != job_kind:
            updates[preset] = DEFAULT_PRESETS[job_kind]
        return updates

    def on_model(name):
        try:
            choices, layer_text = model_layers(name)
        except ValueError as exc:
            return gr.skip(), fail(exc)
        return gr.Dropdown(choices=choices), layer_text

    def on_source(source, job_kind):
        if not source:
            return gr.skip()
        is_clip = Path(source).suffix.lower() not in IMAGE_SUFFIXES
        return "video" if is_clip else ("image" if job_kind == "video" else job_kind)

    def on_song(data):
        """A dropped song fills in bpm with its estimated tempo, which the user can correct."""
        values = page_values(data)
        if values["kind"] != "zoom" or not values["audio"]:
            return gr.skip(), gr.skip()
        try:
            job = job_from_page({**values, "bpm": None}, folders)
            tempo = song_features(job.audio, job.zoom.fps, None).bpm
        except ValueError as exc:
            return gr.skip(), fail(exc)
        if tempo is None:
            return gr.skip(), f"no steady beat found in {job.audio.name}: type its tempo in bpm for schedules of b"
        return round(tempo, 2), f"{job.audio.name}: {tempo:.2f} bpm, estimated; correct it in bpm if it is off"

    def on_schedules(data):
        values = page_values(data)
        if values["kind"] != "zoom":
            return {status: gr.skip()}
        try:
            curves, audio_curves = schedule_curves(job_from_page(values, folders))
        except ValueError as exc:
            return {status: fail(exc)}
        # data only: a Gradio plot that redraws for new settings loses data sent meanwhile (Gradio 6.31)
        updates = {plots[name]: schedule_frame(curves, name) for name in SCHEDULE_BOXES}
        updates[audio_plot] = pd.DataFrame(audio_curves).melt(id_vars="frame", var_name="feature", value_name="value") if audio_curves else None
        changing = ", ".join(name for name in SCHEDULE_BOXES if min(curves[name]) != max(curves[name])) or "none"
        return {**updates, status: f"schedules plotted over {len(curves['frame'])} frames; changing: {changing}"}

    def on_preview(data, progress=gr.Progress(track_tqdm=True)):
        try:
            outcome = preview(job_from_page(page_values(data), folders), folders)
        except Exception as exc:  # noqa: BLE001 - one line on the page
            return None, fail(exc)
        return shown(outcome.path), outcome.message

    def no_result() -> dict:
        return {result_view: None, result_video: None, result_file: None}

    def on_render(data, request: gr.Request, progress=gr.Progress(track_tqdm=True)):
        job = out = None
        try:
            job = job_from_page(page_values(data), folders)
            out = unfinished.pop(job, None) or output_path(job, folders)
            outcome = worker.submit(
                lambda: render(job, out), owner=request.session_hash, label=str(out), poll=lambda: relay_tqdm(progress)
            )
        except Exception as exc:  # noqa: BLE001 - one line on the page (Cancelled too)
            if out is not None and work_folder(out).is_dir():
                unfinished[job] = out  # the same settings resume from its frames
            return {**no_result(), status: cancelled_line(out) if isinstance(exc, Cancelled) else fail(exc)}
        path = shown(outcome.path)
        view = result_view if job.kind == "image" else result_video
        return {**no_result(), view: path, result_file: path, status: outcome.message}

    def on_cancel(request: gr.Request):
        # Gradio may drop the cancelled render's own answer, so this one reports how it ended
        stopped = worker.cancel(request.session_hash, wait_s=CANCEL_WAIT_S)
        if stopped:
            return {**no_result(), status: cancelled_line(Path(stopped))}
        return {status: "nothing of yours is rendering; a queued render of yours was taken off the queue"}

    def on_save(data):
        import torch

        try:
            job = job_from_page(page_values(data), folders)
            path = save_preset(job, data[preset_name], folders)
        except Exception as exc:  # noqa: BLE001 - one line on the page
            return {status: fail(exc)}
        output = "out.png" if job.kind == "image" else "out.mp4"
        return {
            preset_file: shown(path), command: command_line(job, path, output, torch.get_num_threads()),
            preset: gr.Dropdown(choices=page_presets(folders)), status: f"saved preset {path.name}",
        }  # fmt: skip

    with gr.Blocks(title="dreamreel studio", analytics_enabled=False) as page:
        gr.Markdown("## dreamreel studio\nDrop a picture or a clip (or none: start from noise), preview, then render.")
        with gr.Row():
            with gr.Column(scale=1):
                source = gr.File(label=f"{LABELS['source']} (empty: noise)", file_types=["image", "video"], elem_id="source")
                kind = gr.Radio(list(JOBS), value="image", label=LABELS["kind"], elem_id="kind")
                preset = gr.Dropdown(page_presets(folders), value=default_preset.name, label=LABELS["preset"], elem_id="preset")
                model = gr.Dropdown(list(ZOO), value=default_preset.model, label=LABELS["model"], elem_id="model")
                objective = gr.Dropdown(
                    ["low", "mid", "high"], value=default_dream.objective, allow_custom_value=True, label=LABELS["objective"],
                    info="layer, alias, LAYER:CHANNEL, class:NAME, or sums such as low + 0.5*high", elem_id="objective",
                )  # fmt: skip
                layers = gr.Markdown(elem_id="layers")
                # Numbers, not sliders: a slider pulls a typed value into its range without
                # a word; every value here reaches the settings' own check and its one line.
                with gr.Row():
                    octaves = gr.Number(default_dream.octaves, label=LABELS["octaves"], info="1 to 12", elem_id="octaves")
                    iterations = gr.Number(default_dream.iterations, label=LABELS["iterations"], info="0 to 1000", elem_id="iterations")
                    step = gr.Number(default_dream.step, label=LABELS["step"], info="0 to 1", elem_id="step")
                with gr.Row():
                    jitter = gr.Number(default_dream.jitter, label=LABELS["jitter"], info="px, 0 to 1024", elem_id="jitter")
                    seed = gr.Number(default_dream.seed, label=LABELS["seed"], info="same seed, same picture", elem_id="seed")
                    side = gr.Number(512, label=LABELS["side"], info=f"px, 16 to {MAX_SIDE}", elem_id="side")
                frames = gr.Number(
                    None, label=LABELS["frames"], info="zoom: length (0: the song's, else 5 s); video: at most (0: all)",
                    visible=False, elem_id="frames",
                )  # fmt: skip
                with gr.Accordion("Zoom schedules", open=False, visible=False, elem_id="zoom_section") as zoom_section:
                    gr.Markdown("Each box: a number, keyframes such as `0:(1.0), 48:(1.05)`, or a formula of "
                                "`t` (frame), `s` (seconds), `b` (beats) and the song's `bass`, `mid`, `treble`, `rms`, `onset`.")  # fmt: skip
                    # each schedule box above a plot of its own: one series per plot, so each has its own
                    # scale (a zoom of 1.005-1.04 beside an angle of ±0.6) and no colour to keep apart
                    boxes, plots = {}, {}
                    for row in (("zoom", "angle"), ("translate_x", "translate_y"), ("step", "iterations_next")):
                        with gr.Row():
                            for name in row:
                                with gr.Column(min_width=240):
                                    boxes[name] = gr.Textbox(
                                        text(getattr(zoom_defaults, name)), label=LABELS[f"zoom_{name}"],
                                        info=schedule_info[name], elem_id=f"zoom_{name}",
                                    )  # fmt: skip
                                    plots[name] = gr.LinePlot(
                                        schedule_frame(initial_curves, name), x="frame", y="value", y_title=LABELS[f"zoom_{name}"],
                                        show_label=False, height=SCHEDULE_PLOT_HEIGHT, elem_id=f"plot_{name}",
                                    )  # fmt: skip
                    zoom_zoom, zoom_angle, zoom_translate_x, zoom_translate_y, zoom_step, zoom_iterations_next = boxes.values()
                    with gr.Row():
                        audio = gr.File(label=f"{LABELS['audio']} (drives bass, mid, treble, rms, onset)", file_types=["audio"], elem_id="audio", scale=2)
                        with gr.Column(scale=1):
                            bpm = gr.Number(None, label=LABELS["bpm"], info="tempo for b; a dropped song fills it in; 0: none", elem_id="bpm")
                            zoom_fps = gr.Number(zoom_defaults.fps, label=LABELS["zoom_fps"], info="frames per second", elem_id="zoom_fps")
                    audio_plot = gr.LinePlot(x="frame", y="value", color="feature", label="Song features over frames", elem_id="audio_plot")
                with gr.Accordion("Video", visible=False, elem_id="video_section") as video_section:
                    with gr.Row():
                        video_blend = gr.Number(video_defaults.blend, label=LABELS["video_blend"], info="previous dream carried, 0 to 1", elem_id="video_blend")
                        video_flow = gr.Dropdown(["dis", "farneback", "none"], value=video_defaults.flow, label=LABELS["video_flow"], elem_id="video_flow")
            with gr.Column(scale=1):
                with gr.Row():
                    preview_button = gr.Button("Preview", variant="primary", elem_id="preview")
                    render_button = gr.Button("Render", variant="primary", elem_id="render")
                    cancel_button = gr.Button("Cancel", variant="stop", elem_id="cancel")
                status = gr.Textbox(label="Status", interactive=False, elem_id="status")
                preview_view = gr.Image(label="Preview", type="filepath", interactive=False, elem_id="preview_view")
                result_view = gr.Image(label="Render", type="filepath", interactive=False, elem_id="result_view")
                result_video = gr.Video(label="Render", interactive=False, visible=False, elem_id="result_video")
                result_file = gr.File(label="Download", interactive=False, height=80, elem_id="result_file")
                with gr.Row():
                    preset_name = gr.Textbox(label="Save as preset named", placeholder="my-look", elem_id="preset_name", scale=2)
                    save_button = gr.Button("Save preset", elem_id="save")
                preset_file = gr.File(label="Preset file", interactive=False, height=80, elem_id="preset_file")
                command = gr.Textbox(label="The same with the command line", interactive=False, elem_id="command")

        controls = [
            kind, source, preset, model, objective, octaves, iterations, step, jitter, seed, side, frames,
            zoom_zoom, zoom_angle, zoom_translate_x, zoom_translate_y, zoom_step, zoom_iterations_next, zoom_fps,
            video_blend, video_flow, audio, bpm,
        ]  # fmt: skip
        names = dict(zip(controls, CONTROLS))
        inputs = set(controls)  # handlers get {component: value}
        filled = {kind, model, objective, octaves, iterations, step, jitter, seed, zoom_zoom, zoom_angle, zoom_translate_x,
                  zoom_translate_y, zoom_step, zoom_iterations_next, zoom_fps, video_blend, video_flow, preview_view, status}  # fmt: skip
        preset.change(on_preset, [preset, source], filled)
        kind.change(on_kind, [kind, preset], {zoom_section, video_section, frames, result_view, result_video, preview_view, preset})
        model.change(on_model, model, [objective, layers])
        page.load(on_model, model, [objective, layers])
        # the saved presets as they are now, not as they were when the studio started
        page.load(lambda: gr.Dropdown(choices=page_presets(folders)), None, preset)
        source.change(on_source, [source, kind], kind)
        audio.change(on_song, inputs, [bpm, status])
        gr.on(
            [kind.change, zoom_zoom.change, zoom_angle.change, zoom_translate_x.change, zoom_translate_y.change,
             zoom_step.change, zoom_iterations_next.change, zoom_fps.change, frames.change, audio.change, bpm.change],
            on_schedules, inputs, {*plots.values(), audio_plot, status},
        )  # fmt: skip
        preview_button.click(on_preview, inputs, [preview_view, status], concurrency_limit=1, concurrency_id="preview")
        results = {result_view, result_video, result_file, status}
        render_event = render_button.click(on_render, inputs, results, concurrency_limit=1, concurrency_id="render")
        cancel_button.click(on_cancel, None, results, cancels=[render_event], queue=False)
        save_button.click(on_save, inputs | {preset_name}, {preset_file, command, preset, status})
    return page


def serve(*, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, output_dir: str | Path = DEFAULT_OUTPUT_DIR) -> None:
    """Start the studio on ``http://host:port`` and run renders until Ctrl-C.

    Must be called from the main thread (renders run there).

    Raises:
        ValueError: Gradio missing, port taken, output folder not creatable.
    """
    folders = Folders(Path(output_dir).resolve())
    check_port(host, port)
    folders.make()
    # Gradio keeps uploads and the files it shows in its cache: inside the output
    # folder. Set before Gradio is imported, which reads it at import time.
    os.environ["GRADIO_TEMP_DIR"] = str(folders.uploads)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import_gradio()
    worker = RenderWorker()
    page = build_page(folders, worker)
    page.queue(default_concurrency_limit=1)
    # No allowed_paths: the page allows each file it writes as it shows it (build_page),
    # so the rest of the output folder (which may be a home folder) stays unreachable.
    page.launch(
        server_name=host, server_port=port, prevent_thread_lock=True, quiet=True, show_error=False, max_file_size="2gb",
    )  # fmt: skip
    print(f"dreamreel studio on http://{host}:{port} (output folder {folders.output}); Ctrl-C stops it", flush=True)
    try:
        worker.serve_forever()
    finally:
        page.close()
