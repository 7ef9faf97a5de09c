"""The studio: page values → the CLI's settings, presets that reproduce, safety, one render at a time,
and the real page driven in headless Chromium."""

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import textured_frame
from dreamreel.cli.main import build_parser, dream_settings, main
from dreamreel.pipeline import studio
from dreamreel.pipeline.files import load_image, save_image
from dreamreel.pipeline.presets import build, load_preset, parse_preset

PAGE = dict(
    kind="image", source=None, preset="mid-creatures", model="efficientnet-lite0", objective="mid", octaves=3,
    iterations=4, step=0.02, jitter=8, seed=5, side=96, frames=None, zoom_zoom="1.02", zoom_angle="0",
    zoom_translate_x="0", zoom_translate_y="0", zoom_iterations_next="3", zoom_fps=24, video_blend=0.6,
    video_flow="dis", audio=None, bpm=None,
)  # fmt: skip


@pytest.fixture
def folders(tmp_path) -> studio.Folders:
    folders = studio.Folders(tmp_path / "out")
    folders.make()
    return folders


@pytest.fixture
def photo(folders) -> Path:
    """A picture dropped on the page: it lives in the upload folder."""
    path = folders.uploads / "abc123" / "photo.png"
    path.parent.mkdir(parents=True)
    save_image(path, textured_frame(60, 80, 3))
    return path


def test_page_values_give_the_cli_settings():
    """The page's controls build the same DreamSettings as the same flags on the command line."""
    job = studio.job_from_page(PAGE, studio.Folders(Path("unused")))
    args = build_parser().parse_args(
        ["image", "noise", "x.png", "--preset", "mid-creatures", "--objective", "mid", "--octaves", "3",
         "--iterations", "4", "--step", "0.02", "--jitter", "8", "--seed", "5"]
    )  # fmt: skip
    assert job.dream == dream_settings(args, load_preset("mid-creatures"))
    assert job.size() == (96, 96)  # noise: square


def test_bad_page_values_are_the_cli_one_line_errors():
    folders = studio.Folders(Path("unused"))
    with pytest.raises(ValueError) as caught:
        studio.job_from_page({**PAGE, "octaves": 20}, folders)
    assert studio.error_line(caught.value) == "dreamreel: error: --octaves 20: expected a value from 1 to 12"
    with pytest.raises(ValueError, match="^--zoom: column 7"):  # a zoom job parses its schedules at once
        studio.job_from_page({**PAGE, "kind": "zoom", "zoom_zoom": "1.02 +"}, folders)
    # the zoom boxes count only for zoom jobs: a half-typed schedule does not block a picture
    assert studio.job_from_page({**PAGE, "zoom_zoom": "1.02 +"}, folders).kind == "image"


def test_the_page_reads_only_its_own_uploads_and_zoo_models(folders, photo, tmp_path):
    assert studio.job_from_page({**PAGE, "source": str(photo)}, folders).source == photo.resolve()
    outside = tmp_path / "secret.png"
    shutil.copy(photo, outside)
    for path in (str(outside), str(folders.uploads / ".." / ".." / "secret.png")):
        with pytest.raises(ValueError, match="not a file dropped on this page"):
            studio.job_from_page({**PAGE, "source": path}, folders)
    with pytest.raises(ValueError, match="zoo models"):
        studio.job_from_page({**PAGE, "model": str(tmp_path / "net.pt")}, folders)
    with pytest.raises(ValueError, match="not a built-in preset"):
        studio.job_from_page({**PAGE, "preset": "../../etc/evil"}, folders)


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden", "x" * 65, "mid-creatures"])
def test_preset_names_cannot_leave_the_presets_folder(folders, name):
    job = studio.job_from_page(PAGE, folders)
    with pytest.raises(ValueError, match="preset name"):
        studio.save_preset(job, name, folders)
    assert list(folders.presets.iterdir()) == []


def test_saved_zoom_preset_reads_back_as_the_same_settings(folders):
    page = {**PAGE, "kind": "zoom", "preset": "zoom-beat-pulse", "objective": 'mid + 0.5*high',
            "zoom_zoom": "1.005 + 0.035*exp(-6*(b - floor(b)))", "zoom_angle": "0:(0), 48:(2.5)", "bpm": 120}  # fmt: skip
    job = studio.job_from_page(page, folders)
    path = studio.save_preset(job, "beat-look", folders)
    assert path == folders.presets / "beat-look.toml"
    preset = load_preset(str(path))
    assert preset.model == "efficientnet-lite0" and preset.kind == "zoom"
    for section, settings in job.sections().items():
        assert build(section, preset, {}) == settings
    # the page lists it and can start from it again
    assert "beat-look" in studio.page_presets(folders)
    assert studio.job_from_page({**page, "preset": "beat-look"}, folders).zoom == job.zoom


def test_toml_values_survive_quotes_and_control_characters():
    text = 'say "hi" \\ tab\t new\nline del\x7f é 🌀'
    assert parse_preset(f"description = {studio.toml_value(text)}", name="t", source="t").description == text
    assert studio.toml_value(1e-05) == "1e-05" and studio.toml_value(True) == "true"


def test_command_line_names_the_preset_and_the_job_inputs(folders, photo):
    job = studio.job_from_page({**PAGE, "source": str(photo), "side": 64}, folders)
    line = studio.command_line(job, folders.presets / "a b.toml", "out.png")
    assert line == f"dreamreel image photo.png out.png --preset '{folders.presets}/a b.toml' --max-side 64"
    zoom = studio.job_from_page({**PAGE, "kind": "zoom", "frames": 30}, folders)
    assert studio.command_line(zoom, Path("p.toml"), "out.mp4") == "dreamreel zoom out.mp4 --preset p.toml --size 96x96 --frames 30"


def test_schedule_plot_shows_the_beat_kick(folders):
    """1.005 + 0.035*exp(-6*(b - floor(b))) at 120 bpm, 24 fps: a kick of 1.04 every 12 frames, decaying."""
    page = {**PAGE, "kind": "zoom", "zoom_zoom": "1.005 + 0.035*exp(-6*(b - floor(b)))", "zoom_angle": "0.5*t",
            "bpm": 120, "frames": 48}  # fmt: skip
    curves, audio = studio.schedule_curves(studio.job_from_page(page, folders))
    assert curves["frame"] == list(range(48)) and audio == {}
    assert set(curves) == {"frame", "zoom", "angle"}  # constant translate_x/y are left out
    zoom = np.array(curves["zoom"])
    assert np.allclose(zoom[[0, 12, 24, 36]], 1.04)
    assert np.all(np.diff(zoom[:12]) < 0) and 1.005 < zoom[11] < 1.01
    assert curves["angle"][10] == 5.0
    with pytest.raises(ValueError, match="bass"):  # as the render would: no song, no bass
        studio.schedule_curves(studio.job_from_page({**page, "zoom_zoom": "1 + 0.1*bass"}, folders))


def test_schedule_plot_shows_the_song(folders):
    """With a song, the plot holds its features: a 60 Hz thump every half second shows in bass every 12 frames."""
    import wave

    song = folders.uploads / "s" / "song.wav"
    song.parent.mkdir(parents=True)
    rate = 22050
    t = np.arange(rate * 2) / rate
    thumps = 0.5 * np.sin(2 * np.pi * 60 * t) * (np.mod(t, 0.5) < 0.1)
    with wave.open(str(song), "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(rate)
        out.writeframes((thumps * 32767).astype(np.int16).tobytes())
    page = {**PAGE, "kind": "zoom", "preset": "zoom-bass-dream", "audio": str(song), "zoom_zoom": None}  # the preset's zoom
    curves, audio = studio.schedule_curves(studio.job_from_page(page, folders))
    assert set(audio) == {"frame", "rms", "bass", "mid", "treble", "onset"} and len(audio["frame"]) == 48  # the song's length
    bass = np.array(audio["bass"])
    assert np.all(bass[[1, 13, 25, 37]] > 3 * bass[[9, 21, 33, 45]])  # loud just after each thump, quiet before the next
    assert len(curves["zoom"]) == 48 and max(curves["zoom"]) > min(curves["zoom"])  # zoom follows the bass


def test_previews_of_a_clip_and_of_a_zoom(folders, make_panning_clip, use_model, tiny_model, one_torch_thread):
    """A clip previews as its dreamed first frame; a zoom as its first frames in a GIF."""
    use_model(tiny_model)
    clip = folders.uploads / "u" / "clip.mp4"
    clip.parent.mkdir(parents=True)
    make_panning_clip(clip, frames=4, size=(64, 48))
    outcome = studio.preview(studio.job_from_page({**PAGE, "kind": "video", "source": str(clip), "side": 64}, folders), folders)
    assert outcome.message.startswith("preview of the first frame at 64x48 in ")
    dreamed, first = load_image(outcome.path), load_image(folders.previews / "first-frame.png")
    assert dreamed.shape == (48, 64, 3) and np.abs(dreamed.astype(int) - first.astype(int)).mean() > 1

    outcome = studio.preview(studio.job_from_page({**PAGE, "kind": "zoom", "side": 48, "iterations": 2}, folders), folders)
    assert outcome.message.startswith(f"preview of {studio.PREVIEW_ZOOM_FRAMES} zoom frames at 48x48 in ")
    import imageio.v3 as iio

    assert iio.imread(outcome.path, index=None).shape == (studio.PREVIEW_ZOOM_FRAMES, 48, 48, 3)


def test_port_in_use_is_one_line(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["studio", "--port", str(port), "--output-dir", str(tmp_path / "out")])
    assert code == 2
    assert capsys.readouterr().err == f"dreamreel: error: --port {port}: 127.0.0.1:{port} is already in use; choose another with --port\n"


def test_missing_gradio_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio now raises ImportError
    with pytest.raises(ValueError, match=r"pip install 'dreamreel\[studio\]'"):
        studio.import_gradio()


def test_one_render_at_a_time_and_cancel_is_ctrl_c():
    """Renders run in order on the main thread; Cancel interrupts only its owner's render."""
    worker = studio.RenderWorker()
    order, results = [], {}
    started = threading.Event()

    def long_render():
        started.set()
        while True:  # stands for a dream loop: stops only when interrupted
            time.sleep(0.01)

    def submit(name, fn, owner, label):
        try:
            results[name] = worker.submit(fn, owner, label)
        except studio.Cancelled as exc:
            results[name] = exc

    first = threading.Thread(target=submit, args=("first", long_render, "alice", "alice's render"))
    second = threading.Thread(target=submit, args=("second", lambda: order.append("second") or "done", "bob", ""))
    first.start()

    def cancel_when_started():
        started.wait(10)
        second.start()  # queued behind the first
        assert worker.cancel("bob") is None  # bob cannot stop alice's render
        assert worker.cancel("alice", wait_s=10) == "alice's render"

    canceller = threading.Thread(target=cancel_when_started)
    canceller.start()
    worker.run_next(timeout_s=10)  # the first render, cancelled
    worker.run_next(timeout_s=10)  # then the queued one
    for thread in (first, second, canceller):
        thread.join(10)
    assert isinstance(results["first"], studio.Cancelled)
    assert results["second"] == "done" and order == ["second"]


# --- the real page in headless Chromium ------------------------------------------------------

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
CLI = "import sys; from dreamreel.cli.main import main; sys.exit(main(sys.argv[1:]))"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sharpness(rgb: np.ndarray) -> float:
    """Mean absolute Laplacian of the grey picture: high-frequency detail."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return float(np.abs(cv2.Laplacian(grey, cv2.CV_32F)).mean())


@pytest.fixture
def studio_server(tmp_path):
    """``dreamreel studio`` on a free local port (torch on one thread): (url, output folder)."""
    pytest.importorskip("gradio", reason="the studio extra is not installed: pip install 'dreamreel[studio]'")
    port, out = free_port(), tmp_path / "studio-output"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-c", CLI, "studio", "--port", str(port), "--output-dir", str(out)],
                              env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"studio did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.3)
    yield url, out
    server.terminate()
    server.wait(10)
    log.close()


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no chromium/chromedriver: apt-get install -y chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install selenium")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1500"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()


def wait_for(what, check, timeout_s=90):
    """``check()``'s first truthy value; elements not on the page yet count as falsy."""
    from selenium.common.exceptions import WebDriverException

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = check()
        except WebDriverException:
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_studio_page_previews_renders_downloads_and_saves_a_preset(studio_server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    url, out = studio_server
    driver = browser
    find = lambda css: driver.find_element(By.CSS_SELECTOR, css)  # noqa: E731
    status = lambda: find("#status textarea").get_attribute("value")  # noqa: E731

    def set_number(element_id: str, value) -> None:
        box = find(f"#{element_id} input[type=number]")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(str(value), Keys.TAB)

    photo = tmp_path / "photo.png"
    save_image(photo, textured_frame(72, 96, 3))
    driver.get(url)
    wait_for("the model's layers", lambda: "blocks.4" in find("#layers").text)
    find("#source input[type=file]").send_keys(str(photo))
    wait_for("the upload", lambda: "photo.png" in find("#source").text.replace("\n", ""))
    for element_id, value in (("side", 96), ("octaves", 2), ("iterations", 4)):
        set_number(element_id, value)

    # a bad value: the CLI's one line, on the page
    set_number("seed", -1)
    find("#preview").click()
    wait_for("the error line", lambda: status() == f"dreamreel: error: --seed -1: expected a value from 0 to {2**63 - 1}")
    set_number("seed", 0)

    find("#preview").click()
    wait_for("the preview", lambda: status().startswith("preview of the picture at 96x72"))
    assert find("#preview_view img").get_attribute("src")

    find("#render").click()
    wait_for("the render", lambda: status().startswith("wrote photo-dream-"))
    link = wait_for("the download link", lambda: driver.find_elements(By.CSS_SELECTOR, "#result_file a[download]"))
    link[0].click()
    downloaded = wait_for("the download", lambda: [p for p in driver.downloads.glob("*.png")])[0]
    dream, original = load_image(downloaded), load_image(photo)
    assert dream.shape == original.shape
    assert np.abs(dream.astype(int) - original.astype(int)).mean() > 3  # changed...
    assert sharpness(dream) > 1.3 * sharpness(original)  # ...by growing fine detail

    find("#preset_name textarea").send_keys("my-look")
    find("#save").click()
    wait_for("the saved preset", lambda: status() == "saved preset my-look.toml")
    command = find("#command textarea").get_attribute("value")
    preset_file = out / "presets" / "my-look.toml"
    assert command == f"dreamreel image photo.png out.png --preset {preset_file} --max-side 96"
    driver.save_screenshot(str(tmp_path / "studio.png"))

    # the command line with the saved preset makes the same picture
    again = tmp_path / "again.png"
    run = subprocess.run(
        [sys.executable, "-c", CLI, "image", str(photo), str(again), "--preset", str(preset_file), "--max-side", "96", "--quiet"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert np.array_equal(load_image(again), dream)
