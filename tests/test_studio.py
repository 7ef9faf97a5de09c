"""The studio: page values → the CLI's settings, presets that reproduce, safety, one render at a time,
and the real page driven in headless Chromium."""

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
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
    zoom_translate_x="0", zoom_translate_y="0", zoom_step="", zoom_iterations_next="3", zoom_fps=24, video_blend=0.6,
    video_flow="dis", audio=None, bpm=None,
)  # fmt: skip
DATA = Path(__file__).parent / "data"


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


def test_page_errors_name_the_page_labels_and_the_uploads_name(folders, photo):
    """The page has no flags and no upload paths: its Status line names the control and the file the user dropped."""
    for values, expected in (
        ({"side": 8}, "Longest side 8: expected a whole number from 16 to 4096"),
        ({"iterations": 100000}, "Steps per octave 100000: expected a value from 0 to 1000"),
        ({"step": -0.5}, "Step size -0.5: expected a value from 0.0 to 1.0"),
        ({"kind": "zoom", "zoom_fps": 0}, "fps 0: expected a number from 1 to 240"),
        ({"kind": "zoom", "zoom_translate_x": "1 +"}, "translate-x: column 4: expected a number, a name or '(' but found the end"),
    ):
        with pytest.raises(ValueError) as caught:
            studio.job_from_page({**PAGE, **values}, folders)
        assert studio.page_line(caught.value, folders) == f"dreamreel: error: {expected}"
    with pytest.raises(ValueError) as caught:  # the song's messages name it by the page's label too
        studio.schedule_curves(studio.job_from_page({**PAGE, "kind": "zoom", "zoom_zoom": "1 + 0.1*bass"}, folders))
    assert studio.page_line(caught.value, folders) == "dreamreel: error: zoom: uses 'bass' but no Song was given"
    photo.write_bytes(b"not a picture")
    with pytest.raises(ValueError) as caught:
        studio.preview(studio.job_from_page({**PAGE, "source": str(photo)}, folders), folders)
    line = studio.page_line(caught.value, folders)
    assert "photo.png" in line and str(folders.uploads) not in line and ".uploads" not in line, line
    assert studio.LABELS.keys() == set(studio.CONTROLS)


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


def test_the_step_box_is_the_zoom_step_schedule(folders):
    """An empty step box is the [dream] Step size (the field's None); a formula is the step schedule."""
    zoom = dict(PAGE, kind="zoom", preset="zoom-bass-dream", zoom_zoom="1.01", zoom_angle="0")
    assert studio.job_from_page(zoom, folders).zoom.step is None
    assert studio.job_from_page({**zoom, "zoom_step": "0.004 + 0.001*t"}, folders).zoom.step == "0.004 + 0.001*t"
    assert studio.job_from_page({**zoom, "zoom_step": "0.02"}, folders).zoom.step == 0.02
    assert studio.job_from_page({**zoom, "zoom_step": None}, folders).zoom.step == "0.004 + 0.008*clamp(bass, 0, 3)"
    with pytest.raises(ValueError, match="^step: 5 is out of range"):
        studio.job_from_page({**zoom, "zoom_step": "5"}, folders)


def test_saved_zoom_preset_reads_back_as_the_same_settings(folders):
    page = {**PAGE, "kind": "zoom", "preset": "zoom-beat-pulse", "objective": 'mid + 0.5*high',
            "zoom_zoom": "1.005 + 0.035*exp(-6*(b - floor(b)))", "zoom_angle": "0:(0), 48:(2.5)", "bpm": 120}  # fmt: skip
    job = studio.job_from_page(page, folders)
    path = studio.save_preset(job, "beat-look", folders)
    assert path == folders.presets / "beat-look.toml"
    preset = load_preset(str(path))
    assert preset.model == "efficientnet-lite0" and preset.kind == "zoom"
    assert preset.description == "Saved from dreamreel studio (zoom, longest side 96 px)"
    for section, settings in job.sections().items():
        assert build(section, preset, {}) == settings
    # the page lists it and can start from it again
    assert "beat-look" in studio.page_presets(folders)
    assert studio.job_from_page({**page, "preset": "beat-look"}, folders).zoom == job.zoom


def test_toml_values_survive_quotes_and_control_characters():
    text = 'say "hi" \\ tab\t new\nline del\x7f é 🌀'
    assert parse_preset(f"description = {studio.toml_value(text)}", name="t", source="t").description == text
    assert studio.toml_value(1e-05) == "1e-05" and studio.toml_value(True) == "true"


def test_command_line_names_the_preset_the_job_inputs_and_the_threads(folders, photo):
    job = studio.job_from_page({**PAGE, "source": str(photo), "side": 64}, folders)
    line = studio.command_line(job, folders.presets / "a b.toml", "out.png", threads=1)
    assert line == f"OMP_NUM_THREADS=1 dreamreel image photo.png out.png --preset '{folders.presets}/a b.toml' --max-side 64"
    zoom = studio.job_from_page({**PAGE, "kind": "zoom", "frames": 30}, folders)
    line = studio.command_line(zoom, Path("p.toml"), "out.mp4", threads=4)
    assert line == "OMP_NUM_THREADS=4 dreamreel zoom out.mp4 --preset p.toml --size 96x96 --frames 30"


def test_schedule_plot_shows_the_beat_kick(folders):
    """1.005 + 0.035*exp(-6*(b - floor(b))) at 120 bpm, 24 fps: a kick of 1.04 every 12 frames, decaying."""
    page = {**PAGE, "kind": "zoom", "zoom_zoom": "1.005 + 0.035*exp(-6*(b - floor(b)))", "zoom_angle": "0.5*t",
            "bpm": 120, "frames": 48}  # fmt: skip
    curves, audio = studio.schedule_curves(studio.job_from_page(page, folders))
    assert curves["frame"] == list(range(48)) and audio == {}
    assert list(curves) == ["frame", "zoom", "angle", "translate_x", "translate_y", "step", "iterations_next"]  # a plot per box
    assert curves["translate_x"] == [0.0] * 48 and curves["iterations_next"] == [3.0] * 48
    assert curves["step"] == [0.02] * 48  # no step schedule: the [dream] step
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
    order, results, cancels = [], {}, {}
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

    def cancel_when_started():  # what it sees is checked on this thread (an assert in a thread only warns)
        started.wait(10)
        second.start()  # queued behind the first
        cancels["bob"] = worker.cancel("bob")
        cancels["alice"] = worker.cancel("alice", wait_s=10)

    canceller = threading.Thread(target=cancel_when_started)
    canceller.start()
    worker.run_next(timeout_s=10)  # the first render, cancelled
    worker.run_next(timeout_s=10)  # then the queued one
    for thread in (first, second, canceller):
        thread.join(10)
    assert cancels == {"bob": None, "alice": "alice's render"}  # bob cannot stop alice's render; alice can
    assert isinstance(results["first"], studio.Cancelled)
    assert results["second"] == "done" and order == ["second"]


# --- the real page in headless Chromium ------------------------------------------------------
# One studio and one browser for these tests (starting them takes seconds); each test loads the page afresh.

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


@pytest.fixture(scope="module")
def studio_server(tmp_path_factory):
    """``dreamreel studio`` on a free local port (torch on one thread): (url, output folder)."""
    pytest.importorskip("gradio", reason="the studio extra is not installed: pip install 'dreamreel[studio]'")
    tmp_path = tmp_path_factory.mktemp("studio")
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


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no chromium/chromedriver: apt-get install -y chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install selenium")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1500"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    downloads = tmp_path_factory.mktemp("downloads")
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


class Page:
    """The studio page in the browser, driven as a user would: by the controls' element ids."""

    def __init__(self, driver, url: str):
        from selenium.webdriver.common.by import By

        self.driver, self.by = driver, By
        driver.get(url)
        wait_for("the model's layers", lambda: "blocks.4" in self.find("#layers").text)

    def find(self, css: str):
        return self.driver.find_element(self.by.CSS_SELECTOR, css)

    def all(self, css: str) -> list:
        return self.driver.find_elements(self.by.CSS_SELECTOR, css)

    def shown(self, element_id: str) -> bool:
        """Whether the element is on the page and visible (Gradio leaves hidden sections out)."""
        return any(element.is_displayed() for element in self.all(f"#{element_id}"))

    def status(self) -> str:
        return self.find("#status textarea").get_attribute("value")

    def value(self, element_id: str) -> str:
        return self.find(f"#{element_id} input, #{element_id} textarea").get_attribute("value")

    def set_number(self, element_id: str, value) -> None:
        from selenium.webdriver.common.keys import Keys

        box = self.find(f"#{element_id} input[type=number]")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(str(value), Keys.TAB)

    def pick(self, element_id: str, choice: str) -> None:
        """Choose in a dropdown (typed, then Enter) or a radio (clicked)."""
        from selenium.webdriver.common.keys import Keys

        labels = [label for label in self.all(f"#{element_id} label") if label.text.strip() == choice]
        if labels:
            labels[0].click()
            return
        box = self.find(f"#{element_id} input")
        box.click()
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(choice, Keys.ENTER)

    def click(self, element_id: str) -> None:
        self.find(f"#{element_id}").click()

    def open_schedules(self) -> None:
        wait_for("the zoom section", lambda: self.shown("zoom_section"))
        self.find("#zoom_section button").click()
        wait_for("the schedule boxes", lambda: self.shown("zoom_iterations_next"))

    def type_text(self, element_id: str, text: str) -> None:
        box = self.find(f"#{element_id} textarea")
        box.clear()
        box.send_keys(text)

    def wait_status(self, what: str, check) -> str:
        return wait_for(f"{what} (status {self.status()!r})", lambda: check(self.status()) and self.status())

    def picture(self, element_id: str) -> str | None:
        """The src of the picture shown in an image pane, or None when it is empty."""
        images = self.all(f"#{element_id} img")
        return images[0].get_attribute("src") if images else None


def fetch_status(url: str, path: Path) -> int:
    """The HTTP status of fetching a local file through the studio, as any page or script on the network could."""
    try:
        return urllib.request.urlopen(f"{url}gradio_api/file={path}", timeout=10).status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
def test_studio_page_previews_renders_downloads_and_saves_a_preset(studio_server, browser, tmp_path):
    url, out = studio_server
    page = Page(browser, url)
    page.find("#source input[type=file]").send_keys(str(DATA / "chelsea.jpg"))
    wait_for("the upload", lambda: "chelsea.jpg" in page.find("#source").text.replace("\n", ""))
    # 256 px: large enough that torch's thread count shows in the pixels
    for element_id, value in (("side", 256), ("octaves", 2), ("iterations", 4), ("seed", 3)):
        page.set_number(element_id, value)

    # out-of-range numbers: the settings' own one line in Status, naming the page's controls
    for element_id, value, good, line in (
        ("step", 5, 0.01, "Step size 5: expected a value from 0.0 to 1.0"),
        ("octaves", 0, 2, "Octaves 0: expected a value from 1 to 12"),
        ("side", 8, 256, "Longest side 8: expected a whole number from 16 to 4096"),
    ):
        page.set_number(element_id, value)
        page.click("preview")
        page.wait_status("the error line", lambda status: status == f"dreamreel: error: {line}")
        page.set_number(element_id, good)

    page.click("preview")
    page.wait_status("the preview", lambda status: status.startswith("preview of the picture at 192x128"))
    assert page.picture("preview_view")
    page.set_number("jitter", -4)  # an error leaves no stale preview behind
    page.click("preview")
    page.wait_status("the error line", lambda status: status == "dreamreel: error: Jitter -4: expected a value from 0 to 1024")
    assert page.picture("preview_view") is None
    page.set_number("jitter", 32)

    page.click("render")
    page.wait_status("the render", lambda status: status.startswith("wrote chelsea-dream-"))
    link = wait_for("the download link", lambda: page.all("#result_file a[download]"))
    link[0].click()
    downloaded = wait_for("the download", lambda: [p for p in browser.downloads.glob("chelsea-dream-*.png")])[0]
    dream, original = load_image(downloaded), load_image(DATA / "chelsea.jpg")
    assert dream.shape == (170, 256, 3)
    original = cv2.resize(original, (256, 170), interpolation=cv2.INTER_AREA)
    assert np.abs(dream.astype(int) - original.astype(int)).mean() > 3  # changed...
    assert sharpness(dream) > 1.3 * sharpness(original)  # ...by growing fine detail

    # the page serves the files the studio wrote, and nothing else in its output folder
    (out / "secret.txt").write_text("not for the network")
    assert fetch_status(url, out / "secret.txt") == 403
    assert fetch_status(url, out / downloaded.name) == 200

    page.find("#preset_name textarea").send_keys("my-look")
    page.click("save")
    page.wait_status("the saved preset", lambda status: status == "saved preset my-look.toml")
    command = page.value("command")
    preset_file = out / "presets" / "my-look.toml"
    assert command == f"OMP_NUM_THREADS=1 dreamreel image chelsea.jpg out.png --preset {preset_file} --max-side 256"
    browser.save_screenshot(str(tmp_path / "studio.png"))

    # the command as shown, in a shell with torch's default threads, makes the same picture
    shutil.copy(DATA / "chelsea.jpg", tmp_path)
    env = {name: value for name, value in os.environ.items() if name not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    run = subprocess.run(["bash", "-c", f"{command} --quiet"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert np.array_equal(load_image(tmp_path / "out.png"), dream)

    # a reloaded page lists the saved preset, and picking a preset sets Seed too
    page = Page(browser, url)
    page.pick("preset", "low-ornaments")
    page.wait_status("the preset", lambda status: status.startswith("preset low-ornaments"))
    assert page.value("seed") == "0"
    page.pick("preset", "my-look")
    page.wait_status("the saved preset", lambda status: status.startswith("preset my-look: Saved from dreamreel studio (image, longest side 256 px)"))
    assert (page.value("seed"), page.value("octaves"), page.value("iterations")) == ("3", "2", "4")


@pytest.mark.slow
def test_studio_page_follows_the_job_and_plots_every_schedule(studio_server, browser, tmp_path):
    import wave

    url, _ = studio_server
    page = Page(browser, url)
    assert not any(map(page.shown, ("video_section", "zoom_section", "frames")))  # an image job has none of them

    # each job starts from its own default preset, and shows its own section only
    page.pick("preset", "class-target")
    page.wait_status("the preset", lambda status: status.startswith("preset class-target"))
    page.pick("kind", "video")
    wait_for("the video preset", lambda: page.value("preset") == "video-flow")
    assert wait_for("the Video section", lambda: page.shown("video_section")) and not page.shown("zoom_section")
    assert page.shown("frames")
    assert (page.value("octaves"), page.value("video_blend")) == ("3", "0.99")
    page.pick("kind", "zoom")
    wait_for("the zoom preset", lambda: page.value("preset") == "zoom-drift")
    assert wait_for("the zoom section", lambda: page.shown("zoom_section")) and not page.shown("video_section")
    page.pick("preset", "zoom-spiral")  # a preset of the job's kind stays
    page.wait_status("the spiral's plots", lambda status: status == "schedules plotted over 120 frames; changing: angle")
    assert page.value("preset") == "zoom-spiral"

    # a song: its tempo fills bpm; each schedule box, step too, has a plot that follows the next preset
    song = tmp_path / "song.wav"
    rate = 22050
    t = np.arange(rate * 8) / rate
    thumps = 0.5 * np.sin(2 * np.pi * 60 * t) * (np.mod(t, 0.5) < 0.1)  # 120 bpm
    with wave.open(str(song), "wb") as wav:
        wav.setnchannels(1), wav.setsampwidth(2), wav.setframerate(rate)
        wav.writeframes((thumps * 32767).astype(np.int16).tobytes())
    page.open_schedules()
    page.find("#audio input[type=file]").send_keys(str(song))
    bpm = wait_for("the song's tempo", lambda: float(page.value("bpm") or 0))
    assert abs(bpm - 120) < 1
    page.pick("preset", "zoom-bass-dream")
    page.wait_status("the bass preset's plots", lambda status: status == "schedules plotted over 192 frames; changing: zoom, step")
    assert page.value("zoom_step") == "0.004 + 0.008*clamp(bass, 0, 3)"
    plots = {name: plot_marks(browser, f"plot_{name}") for name in studio.SCHEDULE_BOXES}
    for name, plot in plots.items():  # one line each, drawn, over every frame
        assert plot["strokes"] and all(plot["strokes"]) and len(plot["values"]) == 192, (name, plot)
    step = np.array(plots["step"]["values"])
    assert 0.004 <= step.min() < 0.006 and 0.012 < step.max() <= 0.028  # 0.004 + 0.008*bass, the bass thumping
    assert set(plots["angle"]["values"]) == {-0.6} and set(plots["translate_x"]["values"]) == {0}  # no treble; no shift
    audio = plot_marks(browser, "audio_plot")
    assert len(audio["strokes"]) == len(audio["legend"]) == 5 and all(audio["strokes"]) and audio["legend_inside"]
    browser.save_screenshot(str(tmp_path / "schedules.png"))


def plot_marks(driver, element_id: str) -> dict:
    """A plot as drawn: {"strokes": each line's colour, "values": each point's value (``frame: 3; step: 0.01``),
    "legend": its entries, "legend_inside": whether the legend lies within the plot's box}."""
    return driver.execute_script(
        """
        const plot = document.getElementById(arguments[0]), box = plot.getBoundingClientRect();
        const strokes = [...plot.querySelectorAll('path[aria-roledescription="line mark"]')].map(m => m.getAttribute('stroke'));
        const values = [...plot.querySelectorAll('path[aria-roledescription="point"]')]
            .map(p => parseFloat(p.getAttribute('aria-label').split('; ')[1].split(': ')[1].replace('\u2212', '-')));
        const legend = [...plot.querySelectorAll('.role-legend-label text')].map(text => text.textContent);
        const inside = [...plot.querySelectorAll('.role-legend *')].every(e => e.getBoundingClientRect().bottom <= box.bottom);
        return {strokes: strokes, values: values, legend: legend, legend_inside: legend.length > 0 && inside};
        """,
        element_id,
    )


@pytest.mark.slow
def test_studio_zoom_render_shows_cancels_and_resumes(studio_server, browser, tmp_path):
    url, out = studio_server
    page = Page(browser, url)
    page.pick("kind", "zoom")
    wait_for("the zoom preset", lambda: page.value("preset") == "zoom-drift")
    for element_id, value in (("side", 32), ("octaves", 1), ("iterations", 1), ("frames", 3)):
        page.set_number(element_id, value)
    page.click("render")
    first = page.wait_status("the first render", lambda status: status.startswith("wrote zoom-dream-")).split(":")[0][len("wrote "):]
    assert wait_for("the video in the Render pane", lambda: page.find("#result_video video").get_attribute("src")).endswith(first)
    assert page.all("#result_file a[download]")

    # a long render, cancelled once frames are done: no stale result; the same settings resume its frames
    page.set_number("frames", 300)
    page.open_schedules()
    page.type_text("zoom_iterations_next", "1")
    page.click("render")
    frames = lambda: list(out.glob("zoom-dream-*.mp4.dreamreel/frames/*.png"))  # noqa: E731
    wait_for("some frames", lambda: len(frames()) >= 3)
    page.click("cancel")
    cancelled = page.wait_status("the cancel", lambda status: status.startswith("cancelled: zoom-dream-"))
    name = cancelled.split(" ")[1]
    assert not page.all("#result_file a[download]") and not page.all("#result_video video")
    kept = len(frames())
    assert 0 < kept < 300
    page.click("render")
    done = page.wait_status("the resumed render", lambda status: status.startswith("wrote "))
    assert done.startswith(f"wrote {name}: 300 frames at ") and f"({kept} of them kept from before)" in done
    assert not list(out.glob("*.dreamreel"))  # the work folder is gone with the finished render
    browser.save_screenshot(str(tmp_path / "zoom.png"))
