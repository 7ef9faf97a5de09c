import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dreamreel.pipeline import presets
from dreamreel.pipeline.dream import DreamSettings


def test_every_builtin_preset_loads_and_has_a_description():
    names = presets.builtin_names()
    kinds = {presets.load_preset(n).kind for n in names}
    assert {"image", "video", "zoom"} <= kinds
    assert sum(presets.load_preset(n).kind == "image" for n in names) >= 4
    assert sum(presets.load_preset(n).kind == "zoom" for n in names) >= 5
    for name in names:
        preset = presets.load_preset(name)
        assert preset.description and "\n" not in preset.description
        for section in preset.sections:
            presets.build(section, preset, {})  # every section builds its dataclass


def test_flags_override_the_preset_and_the_preset_overrides_defaults():
    preset = presets.load_preset("high-objects")
    built = presets.build("dream", preset, {"iterations": 3, "step": None})
    assert built.iterations == 3  # flag
    assert built.objective == "high" and built.octaves == 5  # preset
    assert built.tile == DreamSettings().tile  # default


def write(tmp_path, text):
    path = tmp_path / "mine.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[dream]\niteratons = 3\n", r"mine.toml: \[dream\] unknown key 'iteratons' \(did you mean 'iterations'\?\)"),
        ("[dream]\niterations = 'many'\n", r"\[dream\] iterations = 'many': expected an integer"),
        ("[dream]\nstep = true\n", r"\[dream\] step = True: expected a number"),
        ("[drema]\n", r"unknown key or section 'drema' \(did you mean 'dream'\?\)"),
        ("dream = 3\n", r"dream must be a \[dream\] table"),
        ("[dream\n", "not valid TOML"),
        ("model = 5\n", "model = 5: expected a string"),
        ("[dream]\niterations = -4\n", r"mine.toml: \[dream\] iterations = -4: expected a value from 0 to 1000$"),
        ("[video]\nblend = 2\n", r"mine.toml: \[video\] blend = 2: expected a number from 0 to 1$"),
        ("[zoom]\nzoom = \"0:(1.0\"\n", r"mine.toml: \[zoom\] zoom = '0:\(1.0': column \d+: "),
        ("[zoom]\niterations = 3\n", r"\[zoom\] unknown key 'iterations' \(did you mean 'iterations_next'\?\)"),
        ("[encode]\nspeed = \"fastest\"\n", r"mine.toml: \[encode\] speed = 'fastest': expected one of ultrafast, "),
        ("[encode]\npreset = \"fast\"\n", r"\[encode\] unknown key 'preset'"),
        ("[dream]\nparam = \"fft\"\n",
         r"mine.toml: \[dream\] param = 'fft' with optimizer = 'step': the normalised step works on pixels only"),
        ("[dream]\noptimizer = \"adam\"\nparam = \"fft\"\nrotate_jitter = 400\n",
         r"mine.toml: \[dream\] rotate_jitter = 400: expected a value from 0.0 to 180.0$"),
        ("[dream]\noptimizer = \"lbfgs \"\n", r"\[dream\] optimizer = 'lbfgs ': expected one of step, adam, lbfgs$"),
    ],
)
def test_bad_presets_name_the_file_the_key_and_what_was_expected(tmp_path, text, message):
    with pytest.raises(ValueError, match=message) as error:
        presets.load_preset(write(tmp_path, text))  # refused on loading, before any flag is applied
    assert "--" not in str(error.value)  # the file's key, not a command-line flag


def test_settings_that_need_each_other_may_come_in_either_order(tmp_path):
    for text in ('[dream]\nparam = "fft"\noptimizer = "adam"\n', '[dream]\nscale_jitter = 0.1\noptimizer = "lbfgs"\n'):
        preset = presets.load_preset(write(tmp_path, text))
        assert presets.build("dream", preset, {}).optimizer in ("adam", "lbfgs")


def test_sections_are_the_stages_settings_classes():
    from dreamreel.pipeline.encode import EncodeSettings
    from dreamreel.pipeline.live import LiveSettings
    from dreamreel.pipeline.video import VideoSettings
    from dreamreel.pipeline.zoom import ZoomSettings

    assert presets.SECTIONS == {"dream": DreamSettings, "video": VideoSettings, "zoom": ZoomSettings,
                                "live": LiveSettings, "encode": EncodeSettings}  # fmt: skip
    preset = presets.parse_preset("[encode]\nspeed = \"faster\"\ncrf = 20\n", name="mine", source="mine.toml")
    assert presets.build("encode", preset, {"crf": None}) == EncodeSettings(speed="faster", crf=20)


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ValueError, match=r"unknown preset 'mid-creature': did you mean 'mid-creatures'\? available: .*zoom-drift"):
        presets.load_preset("mid-creature")


def test_a_preset_cannot_run_code(tmp_path):
    text = '[zoom]\nzoom = "__import__(\'os\').system(\'touch pwned\')"\n'
    with pytest.raises(ValueError):
        preset = presets.load_preset(write(tmp_path, text))
        presets.build("zoom", preset, {})
    assert not (tmp_path / "pwned").exists()


def test_a_preset_names_a_zoo_or_timm_model_never_a_file(tmp_path, monkeypatch):
    """A model file is code (TorchScript) or a graph (ONNX): it comes from the command line, not from a preset someone sent."""
    import torch

    monkeypatch.chdir(tmp_path)
    torch.jit.script(torch.nn.Linear(3, 3)).save("ts.pt")  # a file the preset could reach, relative to the working folder
    for model in ("ts.pt", str(tmp_path / "ts.pt"), "net.onnx", "googlenet.pt"):
        with pytest.raises(ValueError, match=rf"mine\.toml: model = '{re.escape(model)}': a preset names a zoo model "
                                             r"\(efficientnet-lite0, googlenet, .*\) or timm:NAME; a model file comes "
                                             r"from the command line only: --model FILE"):
            presets.load_preset(write(tmp_path, f'model = "{model}"\n'))
    for model in ("googlenet", "timm:convnext_atto"):
        assert presets.load_preset(write(tmp_path, f'model = "{model}"\n')).model == model


def test_huge_preset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="too large"):
        presets.load_preset(write(tmp_path, "#" * (presets.MAX_PRESET_BYTES + 1)))


TOML_VALUES = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False), st.text(max_size=30), st.booleans())
SECTION = st.dictionaries(st.sampled_from(["objective", "iterations", "step", "zoom", "angle", "blend", "fps", "crf", "bogus"]),
                          TOML_VALUES, max_size=4)


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return repr(float(v)) if isinstance(v, float) else str(v)


@settings(max_examples=150, deadline=2000)
@given(st.dictionaries(st.sampled_from(["dream", "video", "zoom", "encode"]), SECTION, max_size=3) | st.text(max_size=60))
def test_any_preset_loads_or_raises_a_value_error(content):
    if isinstance(content, dict):
        text = "".join(f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in body.items())
                       for name, body in content.items())
    else:
        text = content
    try:
        preset = presets.parse_preset(text, name="fuzz", source="fuzz.toml")
        built = [presets.build(section, preset, {}) for section in preset.sections]
    except (ValueError, TypeError):
        return
    assert len(built) == len(preset.sections) <= len(presets.SECTIONS)
