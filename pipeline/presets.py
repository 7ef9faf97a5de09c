"""Presets: TOML files that fill the settings dataclasses.

A preset is one look, one file::

    description = "Mid-layer eyes and creatures"
    model = "efficientnet-lite0"

    [dream]
    objective = "mid"
    iterations = 12

Sections map onto the settings dataclasses of the stages (``[dream]`` →
:class:`~dreamreel.pipeline.dream.DreamSettings`, ``[video]``, ``[zoom]``,
``[live]``, ``[encode]``). Values are checked against the dataclass: an unknown key or a
wrong type is an error naming the file, the key and what was expected. A
preset is data only: nothing in it is executed (schedule expressions and
objectives are read by :mod:`expr`'s own small parser), and its ``model`` is a
zoo name or ``timm:NAME``, never a file: a TorchScript file is code, so a
model file comes from the command line only.

Precedence: dataclass defaults < preset < command-line flags.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .dream import ConflictingSettings, DreamSettings
from .encode import EncodeSettings
from .live import LiveSettings
from .models import TIMM_PREFIX, ZOO
from .video import VideoSettings
from .zoom import ZoomSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# section → the settings dataclass it fills.
SECTIONS: dict[str, type] = {
    "dream": DreamSettings,
    "video": VideoSettings,
    "zoom": ZoomSettings,
    "live": LiveSettings,
    "encode": EncodeSettings,
}
TOP_LEVEL = {"description": str, "model": str}
MAX_PRESET_BYTES = 64 * 1024  # a preset is a few hundred bytes; refuse anything huge


@dataclass(frozen=True)
class Preset:
    """A loaded preset.

    Attributes:
        name: file stem (``mid-creatures``).
        description: the one line shown by ``dreamreel presets``.
        model: zoo model name or ``timm:NAME``, or None to keep the default.
        sections: section name → {key: value}, already type-checked.
        source: where it came from, for messages.
    """

    name: str
    description: str
    model: str | None = None
    sections: dict[str, dict] = field(default_factory=dict)
    source: str = "<defaults>"

    @property
    def kind(self) -> str:
        """``live`` for presets with a [live] section, else ``zoom`` with [zoom], ``video`` with [video], else ``image``."""
        for kind in ("live", "zoom", "video"):
            if kind in self.sections:
                return kind
        return "image"


def _expected(annotation) -> tuple[type, ...]:
    """Python types a TOML value may have for a dataclass field annotation."""
    args = typing.get_args(annotation) or (annotation,)
    allowed: list[type] = []
    for arg in args:
        if arg is float:
            allowed += [float, int]
        elif arg is type(None):
            continue
        else:
            allowed.append(arg)
    return tuple(allowed)


def _describe(types: tuple[type, ...]) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def check_section(section: str, values: dict, source: str) -> dict:
    """Check keys, value types and values of one section against its dataclass.

    Each value is checked by building the dataclass with it alone (the
    dataclass's own rules), and a refusal is reported as the file's key:
    ``FILE: [section] key = value: what was expected``, not as a CLI flag.
    Settings that conflict (``param = "fft"`` with the default optimizer) are
    judged with the rest of the section, which may set the partner.
    """
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    for key, value in values.items():
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else f"; known keys: {', '.join(known)}"
            raise ValueError(f"{source}: [{section}] unknown key {key!r}{hint}")
        allowed = _expected(hints[key])
        ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
        if not ok:
            raise ValueError(
                f"{source}: [{section}] {key} = {value!r}: expected {_describe(allowed)}"
            )
        try:
            cls(**{key: value})
        except ConflictingSettings:
            pass  # with a default: the section may set the other one
        except ValueError as exc:
            raise ValueError(f"{source}: [{section}] {key} = {value!r}: {_reason(exc)}") from None
    try:
        cls(**values)
    except ConflictingSettings as exc:
        pair = " with ".join(f"{name} = {value!r}" for name, value in (exc.first, exc.second))
        raise ValueError(f"{source}: [{section}] {pair}: {exc.reason}") from None
    return dict(values)


def _reason(error: ValueError) -> str:
    """What a settings dataclass's error says is wrong, without the flag it names.

    Their messages read ``--flag VALUE: expected ...`` (a schedule's,
    ``setting: column C: problem``): the part after the first ": ".
    """
    message = str(error).splitlines()[0]
    return message.split(": ", 1)[1] if ": " in message else message


def parse_preset(text: str, *, name: str, source: str) -> Preset:
    """Read and check a preset from TOML text."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{source}: not valid TOML ({exc})") from None
    sections = {}
    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ValueError(f"{source}: {key} must be a [{key}] table")
            sections[key] = check_section(key, value, source)
        elif key in TOP_LEVEL:
            if not isinstance(value, TOP_LEVEL[key]):
                raise ValueError(f"{source}: {key} = {value!r}: expected a string")
            if key == "model" and value not in ZOO and not value.startswith(TIMM_PREFIX):
                raise ValueError(
                    f"{source}: model = {value!r}: a preset names a zoo model ({', '.join(ZOO)}) or {TIMM_PREFIX}NAME; "
                    f"a model file comes from the command line only: --model FILE"
                )
        else:
            known = [*TOP_LEVEL, *SECTIONS]
            near = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else f"; known: {', '.join(known)}"
            raise ValueError(f"{source}: unknown key or section {key!r}{hint}")
    return Preset(
        name=name,
        description=data.get("description", ""),
        model=data.get("model"),
        sections=sections,
        source=source,
    )


def builtin_names() -> list[str]:
    """Names of the presets shipped with dreamreel, sorted."""
    folder = resources.files("dreamreel.presets")
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_preset(name_or_path: str) -> Preset:
    """A built-in preset by name, or a preset file by path.

    Raises:
        ValueError: unknown name (listing the built-in ones), unreadable or
            invalid file (naming the file, the key and what was expected).
    """
    path = Path(name_or_path)
    if name_or_path.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise ValueError(f"--preset {name_or_path}: no such file")
        if path.stat().st_size > MAX_PRESET_BYTES:
            raise ValueError(f"--preset {name_or_path}: {path.stat().st_size} bytes is too large for a preset")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--preset {name_or_path}: cannot read it ({exc})") from None
        return parse_preset(text, name=path.stem, source=str(path))
    names = builtin_names()
    if name_or_path not in names:
        near = difflib.get_close_matches(name_or_path, names, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ValueError(f"unknown preset {name_or_path!r}: {hint}available: {', '.join(names)}")
    text = resources.files("dreamreel.presets").joinpath(f"{name_or_path}.toml").read_text(encoding="utf-8")
    return parse_preset(text, name=name_or_path, source=f"preset {name_or_path}")


def build(section: str, preset: Preset | None, overrides: dict):
    """The settings dataclass of ``section``: defaults < preset < overrides.

    ``overrides`` holds only what the user set (None values are ignored), so a
    flag left out keeps the preset's value.
    """
    cls = SECTIONS[section]
    values = dict(preset.sections.get(section, {})) if preset else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)
