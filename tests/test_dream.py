import os

import pytest
import torch

from dreamreel.pipeline import dream as D
from dreamreel.pipeline import objectives
from dreamreel.pipeline.dream import ConflictingSettings, DreamSettings
from dreamreel.pipeline.models import PICTURE
from dreamreel.pipeline.objectives import parse_objective


def run(model, x, **kw):
    settings = DreamSettings(**{"objective": "mid", "octaves": 2, "iterations": 4, "jitter": 4, **kw})
    scores = []
    out = D.dream(model, x, parse_objective(settings.objective, model), settings, on_step=lambda s: scores.append(s))
    return out, scores


def test_objective_rises_during_ascent(tiny_model, textured):
    settings = DreamSettings(objective="mid", octaves=1, iterations=8, jitter=0)
    obj = parse_objective("mid", tiny_model)
    scores = []
    D.dream(tiny_model, textured, obj, settings, on_step=lambda s: scores.append(float(s)))
    assert scores[-1] > scores[0] * 1.2


def test_output_keeps_shape_range_and_changes_the_picture(tiny_model, textured):
    out, _ = run(tiny_model, textured)
    assert out.shape == textured.shape and out.dtype == textured.dtype
    assert 0 <= out.min() and out.max() <= 1
    assert (out - textured).abs().mean() > 0.01


def test_batch_equals_one_by_one(tiny_model, textured):
    other = torch.rand_like(textured)
    batch, _ = run(tiny_model, torch.cat([textured, other]))
    one, _ = run(tiny_model, textured)
    two, _ = run(tiny_model, other)
    diff = (batch - torch.cat([one, two])).abs()
    # conv kernels round differently by batch size, and a ReLU near zero can
    # amplify that at a few pixels: equal to well within one 8-bit level
    assert diff.mean() < 1e-5 and diff.max() < 1 / 255


def test_same_seed_same_dream_other_seed_other_dream(tiny_model, textured):
    a, _ = run(tiny_model, textured, seed=3)
    b, _ = run(tiny_model, textured, seed=3)
    c, _ = run(tiny_model, textured, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_tiled_gradient_matches_untiled_away_from_borders(tiny_model):
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    obj = parse_objective("conv1", tiny_model)  # 3x3 receptive field: only 1 px near a border differs
    full, s_full = D.objective_gradient(tiny_model, x, obj, tile=512, autocast_dtype=None)
    tiled, s_tiled = D.objective_gradient(tiny_model, x, obj, tile=64, autocast_dtype=None)
    interior = torch.ones(128, 128, dtype=torch.bool)
    interior[62:66, :] = interior[:, 62:66] = False
    assert torch.allclose(full[..., interior], tiled[..., interior], atol=1e-6)
    assert torch.allclose(s_full, s_tiled, rtol=0.05)


def test_tiled_dream_has_no_seams(tiny_model):
    x = D.gaussian_blur(torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0)), 2.0)
    out, _ = run(tiny_model, x, tile=64, octaves=1, iterations=12, objective="high")
    d = out - x
    step_x = (d[..., :, 1:] - d[..., :, :-1]).abs().mean(dim=(0, 1, 2))  # per column boundary
    step_y = (d[..., 1:, :] - d[..., :-1, :]).abs().mean(dim=(0, 1, 3))
    # the boundary between columns 63|64 is a tile border: no jump larger than elsewhere
    assert step_x[63] < 1.5 * step_x.mean() and step_y[63] < 1.5 * step_y.mean()


def test_gaussian_blur_keeps_constants_and_shapes():
    x = torch.full((2, 3, 9, 11), 0.3, dtype=torch.float64)
    y = D.gaussian_blur(x, 1.5)
    assert y.shape == x.shape and y.dtype == torch.float64 and torch.allclose(y, x)
    assert D.gaussian_blur(x, 0) is x


def test_octave_sizes_end_at_full_size_and_skip_tiny_levels():
    assert D.MIN_OCTAVE_SIDE == 32  # the sizes below are chosen around it
    # every level at least 32 px: all kept, smallest first
    assert D.octave_sizes(128, 256, 3, 2.0) == [(32, 64), (64, 128), (128, 256)]
    # 25x50 falls below 32 px and is dropped; the full size always stays
    assert D.octave_sizes(100, 200, 3, 2.0) == [(50, 100), (100, 200)]
    assert D.octave_sizes(20, 20, 4, 1.5) == [(20, 20)]
    assert all(min(s) >= D.MIN_OCTAVE_SIDE for s in D.octave_sizes(40, 40, 6, 1.5)[:-1])


@pytest.mark.parametrize(
    "field, value, message",
    [("iterations", -1, "--iterations -1"), ("octave_scale", 0.5, "--octave-scale"), ("tile", 8, "--tile 8"),
     ("step", "big", "--step: expected a number"), ("octaves", 2.5, "--octaves: expected a number"),
     ("optimizer", "newton", "--optimizer 'newton': expected one of step, adam, lbfgs"),
     ("param", "wavelet", "--param 'wavelet': expected one of pixel, fft"), ("param", 1, "--param: expected a string"),
     ("gain", 0.0, "--gain 0.0: expected a value from 0.1 to 10"), ("gain", float("nan"), "--gain nan"),
     ("gain", "2", "--gain: expected a number"), ("scale_jitter", 0.9, "--scale-jitter 0.9: expected a value from 0.0 to 0.5"),
     ("rotate_jitter", -5.0, "--rotate-jitter -5.0: expected a value from 0.0 to 180")],
)
def test_settings_errors_name_the_flag(field, value, message):
    with pytest.raises((ValueError, TypeError), match=message):
        DreamSettings(**{field: value})


@pytest.mark.parametrize(
    "values, message",
    [({"param": "fft"}, "--param fft with --optimizer step: the normalised step works on pixels only"),
     ({"scale_jitter": 0.1}, "--scale-jitter 0.1 with --optimizer step: random scale and rotation need"),
     ({"rotate_jitter": 5.0, "param": "fft", "optimizer": "step"}, "--param fft with --optimizer step")],
)
def test_settings_that_cannot_work_together_name_both_flags(values, message):
    with pytest.raises(ConflictingSettings, match=message):
        DreamSettings(**values)
    DreamSettings(**{**values, "optimizer": "adam"})  # each is fine with an optimizer that can follow it


def test_uint8_round_trip():
    import numpy as np

    rgb = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    assert np.array_equal(D.to_uint8(D.to_tensor(rgb))[0], rgb)


def test_noise_image_is_seeded_and_mid_grey():
    a, b = D.noise_image(64, 32, seed=1), D.noise_image(64, 32, seed=1)
    assert a.shape == (1, 3, 32, 64) and torch.equal(a, b)
    assert abs(float(a.mean()) - 0.5) < 0.05


def test_per_image_generators_make_a_batch_equal_to_each_image_alone(tiny_model, textured):
    settings = DreamSettings(objective="mid", octaves=1, iterations=3, jitter=6)
    obj = parse_objective("mid", tiny_model)
    other = torch.rand_like(textured)
    batch = D.dream(tiny_model, torch.cat([textured, other]), obj, settings,
                    generator=[D.frame_generator(0, 1), D.frame_generator(0, 2)])
    alone = D.dream(tiny_model, other, obj, settings, generator=[D.frame_generator(0, 2)])
    assert (batch[1:] - alone).abs().max() < 1 / 255


def test_gaussian_blur_spreads_an_impulse_into_a_normalised_gaussian():
    x = torch.zeros(1, 1, 21, 21)
    x[0, 0, 10, 10] = 1.0
    y = D.gaussian_blur(x, 1.0)[0, 0]
    assert torch.isclose(y.sum(), torch.tensor(1.0), atol=1e-6)
    t = torch.arange(-3, 4, dtype=torch.float32)
    k = torch.exp(-0.5 * t**2)
    expected = torch.outer(k, k) / k.sum() ** 2
    assert torch.allclose(y[7:14, 7:14], expected, atol=1e-6)
    assert torch.allclose(y, y.t())  # separable and symmetric


def test_batched_tiles_give_the_same_gradient_as_one_tile_at_a_time(tiny_model):
    x = torch.rand(2, 3, 150, 130, generator=torch.Generator().manual_seed(0))  # tiles 64, 64, 22 by 64, 64, 2
    looks = objectives.per_image([parse_objective("conv1", tiny_model), parse_objective("conv3:2", tiny_model)])
    for obj in (parse_objective("conv2", tiny_model), looks):
        one, s_one = D.objective_gradient(tiny_model, x, obj, tile=64, autocast_dtype=None)
        for tile_batch in (2, 4, 9):
            many, s_many = D.objective_gradient(tiny_model, x, obj, tile=64, autocast_dtype=None, tile_batch=tile_batch)
            assert torch.allclose(one, many, atol=1e-6) and torch.allclose(s_one, s_many, atol=1e-6)


def test_tile_batches_cover_every_pixel_once():
    x = torch.arange(2 * 1 * 150 * 130, dtype=torch.float32).view(2, 1, 150, 130)
    covered = torch.zeros_like(x)
    stacks = list(D.tile_batches(x, 64, 4))
    assert max(len(corners) for _, corners in stacks) == 4
    for stack, corners in stacks:
        th, tw = stack.shape[-2:]
        for k, (y0, x0) in enumerate(corners):
            assert torch.equal(stack[2 * k : 2 * k + 2], x[:, :, y0 : y0 + th, x0 : x0 + tw])
            covered[:, :, y0 : y0 + th, x0 : x0 + tw] += 1
    assert torch.all(covered == 1)


def test_frame_generators_take_any_seed_and_keep_small_seeds_streams():
    # seed * 1_000_003 passes 2**64 from about 1.8e13 on: manual_seed refused it
    for seed in (18_446_744_073_709, 2**63, 2**80, -5):
        assert D.frame_generator(seed, 3).initial_seed() == (seed * 1_000_003 + 3) % 2**64
    assert torch.equal(torch.rand(4, generator=D.frame_generator(7, 2)),
                       torch.rand(4, generator=torch.Generator().manual_seed(7 * 1_000_003 + 2)))  # fmt: skip


# --- devices, captured steps, precision ---------------------------------------------


def test_roll_matches_torch_roll_per_image():
    x = torch.rand(3, 2, 5, 7, generator=torch.Generator().manual_seed(0))
    shifts = torch.tensor([[1, -2], [0, 9], [-6, 3]])
    rolled = D.roll(x, shifts)
    for img, out, (dy, dx) in zip(x, rolled, shifts.tolist()):
        assert torch.equal(out, torch.roll(img, (dy, dx), dims=(1, 2)))
    assert torch.equal(D.roll(rolled, shifts, sign=-1), x)
    assert torch.equal(D.roll(x, torch.tensor([[2, 3]])), torch.roll(x, (2, 3), dims=(2, 3)))


def test_jitter_shifts_are_those_of_each_image_alone():
    together = D.jitter_shifts([D.frame_generator(0, 1), D.frame_generator(0, 2)], 3, 8)
    alone = D.jitter_shifts([D.frame_generator(0, 2)], 3, 8)
    assert together.shape == (3, 2, 2) and torch.equal(together[:, 1:], alone)
    assert together.abs().max() <= 8 and D.jitter_shifts([D.frame_generator(0, 1)], 0, 8).shape == (0, 1, 2)


def test_dream_on_each_device_matches_the_cpu(tiny_model, textured, device):
    """The CPU path and the GPU path (steps captured as CUDA graphs) dream the same picture."""
    settings = DreamSettings(objective="mid", octaves=2, iterations=4, jitter=4)
    obj = parse_objective("mid", tiny_model)
    on_cpu = D.dream(tiny_model, textured, obj, settings, generator=[D.frame_generator(0, 0)])
    model = tiny_model.to(device)
    graphs = D.StepGraphs()
    scores = []
    out = D.dream(model, textured.to(device), parse_objective("mid", model), settings, generator=[D.frame_generator(0, 0)],
                  graphs=graphs, on_step=scores.append)
    again = D.dream(model, textured.to(device), parse_objective("mid", model), settings, generator=[D.frame_generator(0, 0)],
                    graphs=graphs)
    assert out.device.type == device and len(scores) == 8
    assert (out.cpu() - on_cpu).abs().max() < 2 / 255
    assert torch.allclose(out, again, atol=1e-6)  # a replayed graph repeats itself


def test_temporal_anchor_pulls_towards_it_where_weighted(tiny_model, textured, device):
    model = tiny_model.to(device)
    x = textured.to(device)
    settings = DreamSettings(objective="mid", octaves=1, iterations=6, jitter=2)
    anchor = torch.zeros_like(x)
    weight = torch.zeros_like(x[:, :1])
    weight[..., :, :32] = 1  # left half: trusted
    run = lambda a: D.dream(model, x, parse_objective("mid", model), settings, generator=[D.frame_generator(0, 0)], anchor=a,  # noqa: E731
                            graphs=D.StepGraphs())
    free, pulled, off = run(None), run((anchor, weight, 0.5)), run((anchor, weight, 0.0))
    assert torch.allclose(free, off, atol=1e-6)  # strength 0 is no anchor
    assert pulled[..., :32].mean() < 0.5 * free[..., :32].mean()  # pulled to black where trusted
    assert (pulled[..., 40:] - free[..., 40:]).abs().mean() < 0.5 * (pulled[..., :32] - free[..., :32]).abs().mean()


# --- compiled steps --------------------------------------------------------------------


@pytest.fixture
def kernel_cache(tmp_path, monkeypatch):
    """A fresh DREAMREEL_CACHE folder; inductor's own variable unset, so compiled steps put it there."""
    monkeypatch.setenv(D.KERNEL_CACHE_ENV, str(tmp_path / "cache"))
    unset(monkeypatch, "TORCHINDUCTOR_CACHE_DIR", "CUDA_CACHE_PATH")
    return tmp_path / "cache"


def unset(monkeypatch, *names: str) -> None:
    """Unset environment variables for a test, restoring them after, even those that are set only during it."""
    for name in names:
        monkeypatch.setenv(name, "")  # recorded, so the variable is put back as it was
        monkeypatch.delenv(name)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["mid", "enhance:mid - 0.1*tv"])
def test_compiled_steps_dream_what_eager_steps_dream(objective, tiny_model, textured, device, kernel_cache, capsys):
    """One size, two steps, with the temporal anchor (and priors and enhance's start picture): compiled (inside the captured graph on CUDA) equals eager."""
    model = tiny_model.to(device)
    x = torch.cat([textured, textured.flip(-1)]).to(device)
    obj = parse_objective(objective, model)
    settings = DreamSettings(objective=objective, octaves=1, iterations=2, jitter=4, gain=2.0)
    anchor = (x.flip(-2), torch.full_like(x[:, :1], 0.5), 0.4)
    graphs = D.StepGraphs if device == "cuda" else lambda: None
    run = lambda compiled: D.dream(model, x, obj, settings, generator=[D.frame_generator(0, k) for k in range(2)],  # noqa: E731
                                   anchor=anchor, graphs=graphs(), compiled=compiled)
    eager = run(None)
    compiled = D.CompiledSteps(required=True)
    first, again = run(compiled), run(compiled)
    # on CUDA both paths convolve in TF32 but may pick other kernels: equal within an 8-bit level there
    assert (first - eager).abs().max() < (1e-4 if device == "cpu" else 1 / 255) and torch.equal(first, again)
    assert (eager - x).abs().mean() > 0.01  # it dreamed
    line = capsys.readouterr().err
    assert line.count("dreamreel: compiling kernels for 64x48 x 2 (first run only") == 1, line  # once, not per call
    assert any(kernel_cache.joinpath("inductor").rglob("*.py"))  # the kernels are kept in the dreamreel cache


def test_a_step_that_fails_to_compile_is_an_error_with_compile_on_and_eager_with_auto(tiny_model, textured, monkeypatch):
    def no_compiler(fn, **kwargs):
        def fail(*args, **kw):
            raise RuntimeError("no C++ compiler\nmore detail")
        return fail

    monkeypatch.setattr(torch, "compile", no_compiler)
    obj = parse_objective("mid", tiny_model)
    settings = DreamSettings(objective="mid", octaves=1, iterations=2, jitter=4)
    run = lambda compiled: D.dream(tiny_model, textured, obj, settings, generator=[D.frame_generator(0, 0)], compiled=compiled)  # noqa: E731
    refused = r"--compile on: torch.compile failed for a 64x48 step \(RuntimeError: no C\+\+ compiler\); use --compile off"
    with pytest.raises(ValueError, match=refused):
        run(D.CompiledSteps(required=True))
    with pytest.warns(UserWarning, match="compiling the ascent step failed"):
        fallen_back = run(D.CompiledSteps(required=False))
    assert torch.equal(fallen_back, run(None))


def test_kernel_cache_folder_follows_dreamreel_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv(D.KERNEL_CACHE_ENV, str(tmp_path / "mine"))
    assert D.kernel_cache_folder() == tmp_path / "mine"
    monkeypatch.delenv(D.KERNEL_CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert D.kernel_cache_folder() == tmp_path / "xdg" / "dreamreel"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "user's own"))
    unset(monkeypatch, "CUDA_CACHE_PATH")
    D.use_kernel_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "user's own")  # a folder the user chose stays
    assert os.environ["CUDA_CACHE_PATH"] == str(tmp_path / "xdg" / "dreamreel" / "cuda")


def test_fp16_gradient_of_small_tiles_does_not_underflow(tiny_model):
    """A tile's area weight times 1/N per activation is below fp16's range; the loss scale keeps it."""
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    obj = parse_objective("conv1", tiny_model)
    fp32, _ = D.objective_gradient(tiny_model, x, obj, tile=64, autocast_dtype=None)
    fp16, _ = D.objective_gradient(tiny_model, x, obj, tile=64, autocast_dtype=torch.float16)
    assert (fp16 != 0).float().mean() > 0.95
    assert torch.nn.functional.cosine_similarity(fp16.flatten(), fp32.flatten(), dim=0) > 0.99


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_host_buffers_are_reused_while_the_gpu_queue_stays_full():
    """A loop like the video's: a reader thread stages frames, the loop uploads each, queues GPU work
    behind it and downloads the frame before; a few buffers serve 60 frames up and 60 down."""
    import queue
    import threading

    import numpy as np

    buffers = D.HostBuffers("cuda")
    taken = set()
    take = buffers.take
    buffers.take = lambda shape, dtype: taken.add((t := take(shape, dtype)).data_ptr()) or t
    frames = [np.full((72, 128, 3), k, np.uint8) for k in range(60)]
    staged: queue.Queue = queue.Queue(maxsize=4)
    reader = threading.Thread(target=lambda: [staged.put(buffers.copy_of(f[None])) for f in frames])
    reader.start()
    in_flight = None
    for k in range(60):
        x = D.to_tensor(staged.get(), "cuda", buffers=buffers)
        torch.cuda._sleep(1_000_000)  # GPU work queued behind every copy: the queue never runs dry
        pending = (k, D.Download(x, buffers))
        if in_flight is not None:
            j, download = in_flight
            assert (download.wait() == j).all()  # each buffer holds what it should when it is read
        in_flight = pending
    reader.join()
    j, download = in_flight
    assert (download.wait() == j).all()
    assert len(taken) <= 16, len(taken)  # not one per copy (120)


def test_a_dream_whose_score_overflows_stops_saying_why_instead_of_saving_black(tiny_model, textured, device, use_model):
    """A score beyond float32 makes NaN gradients and a black picture (exit 0, before); the download refuses it."""
    use_model(tiny_model)
    dreamer = D.Dreamer(DreamSettings(octaves=1, iterations=2, jitter=0), D.ComputeSettings(device=device, precision="fp32"))
    overflowing = 1e39 * objectives.layer("conv2")  # as parsing "1e39*conv2" now refuses to build
    dreamed = dreamer(textured, objective=overflowing)
    with pytest.raises(ValueError, match=r"^the dream's score overflowed \(inf or NaN\), which would save a black picture: "
                                         r"lower the objective's weights, or dream in --precision fp32$"):
        D.Download(dreamed).wait()
    assert D.to_uint8(dreamer(textured)).shape == (1, 48, 64, 3)  # a finite dream downloads as ever


# --- priors, enhance and the other optimizers -----------------------------------


def noisy(textured):
    """The texture with pixel noise on top: something for a smoothing prior to remove."""
    return (textured + 0.1 * torch.rand(textured.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)


@pytest.mark.parametrize(
    "prior, optimizer, weights",
    [("tv", "step", (0, 1e-5, 1e-4, 1e-3)), ("tv", "adam", (0, 1e-5, 1e-4, 1e-3)), ("norm", "adam", (0, 0.01, 0.1, 1))],
)
def test_a_prior_lowers_its_own_measure_as_its_weight_grows(tiny_model, textured, prior, optimizer, weights):
    x = noisy(textured)
    measure = parse_objective(prior, tiny_model)
    measured = []
    for weight in weights:
        settings = DreamSettings(objective=f"mid - {weight}*{prior}", octaves=1, iterations=8, jitter=4, optimizer=optimizer, step=0.02)
        out = D.dream(tiny_model, x, parse_objective(settings.objective, tiny_model), settings)
        measured.append(float(measure({PICTURE: out})))
    assert all(later < earlier for earlier, later in zip(measured, measured[1:])), measured
    assert measured[-1] < 0.5 * measured[0], measured


def test_lbfgs_reduces_the_enhance_loss_monotonically_on_a_fixed_picture(tiny_model, textured):
    settings = DreamSettings(objective="enhance:mid", octaves=1, iterations=8, jitter=0, optimizer="lbfgs", gain=2.0)
    scores = []
    D.dream(tiny_model, textured, parse_objective(settings.objective, tiny_model), settings, on_step=lambda s: scores.append(float(s)))
    # the score when each iteration starts: minus the relative squared distance to 2x the start's activations
    assert scores[0] == pytest.approx(-0.25, abs=1e-4)
    assert all(later >= earlier for earlier, later in zip(scores, scores[1:])), scores
    assert scores[-1] > 0.2 * scores[0], scores


def test_enhance_aims_at_the_start_picture_rolled_and_tiled_like_the_dream(tiny_model):
    """At gain 1 the start picture is the target itself: every roll and tile of it scores 0 and moves nothing."""
    x = D.gaussian_blur(torch.rand(1, 3, 80, 96, generator=torch.Generator().manual_seed(0)), 1.0)
    for optimizer in ("step", "adam"):
        settings = DreamSettings(objective="enhance:mid", octaves=2, iterations=3, jitter=7, tile=64, optimizer=optimizer, gain=1.0)
        scores = []
        out = D.dream(tiny_model, x, parse_objective(settings.objective, tiny_model), settings, on_step=lambda s: scores.append(float(s)))
        assert max(abs(s) for s in scores) < 1e-9 and (out - x).abs().max() < 1e-5


@pytest.mark.parametrize("param, optimizer", [("pixel", "adam"), ("fft", "adam"), ("pixel", "lbfgs"), ("fft", "lbfgs")])
def test_adam_and_lbfgs_dream_on_pixels_and_on_the_spectrum(tiny_model, textured, param, optimizer):
    settings = DreamSettings(objective="enhance:mid" if optimizer == "lbfgs" else "mid", octaves=2, iterations=6, jitter=4,
                             optimizer=optimizer, param=param, step=0.05, scale_jitter=0.1, rotate_jitter=10.0)  # fmt: skip
    scores = []
    x = textured.contiguous(memory_format=torch.channels_last)  # as a video frame arrives: L-BFGS flattens a copy of it
    out = D.dream(tiny_model, x, parse_objective(settings.objective, tiny_model), settings, on_step=lambda s: scores.append(float(s)))
    assert out.shape == textured.shape and 0 <= out.min() and out.max() <= 1
    assert len(scores) == 12 and scores[5] > scores[0] and scores[11] > scores[6]  # each octave climbs
    assert (out - textured).abs().mean() > 0.005


def test_a_picture_goes_through_the_spectrum_unchanged_without_steps(tiny_model, textured):
    settings = DreamSettings(objective="mid", octaves=3, iterations=0, optimizer="adam", param="fft")
    out = D.dream(tiny_model, textured, parse_objective("mid", tiny_model), settings)
    assert (out - textured).abs().max() < 1 / 255


def test_adam_dreams_a_batch_as_its_images_alone(tiny_model, textured):
    settings = DreamSettings(objective="mid", octaves=2, iterations=3, jitter=6, optimizer="adam", param="fft",
                             step=0.05, scale_jitter=0.1, rotate_jitter=10.0)  # fmt: skip
    obj = parse_objective("mid", tiny_model)
    other = torch.rand_like(textured)
    batch = D.dream(tiny_model, torch.cat([textured, other]), obj, settings,
                    generator=[D.frame_generator(0, 1), D.frame_generator(0, 2)], step=[0.05, 0.02])
    alone = D.dream(tiny_model, other, obj, settings, generator=[D.frame_generator(0, 2)], step=[0.02])
    assert (batch[1:] - alone).abs().max() < 1 / 255
    first = D.dream(tiny_model, textured, obj, settings, generator=[D.frame_generator(0, 1)], step=[0.05])
    assert (batch[:1] - first).abs().max() < 1 / 255


def test_temporal_anchor_pulls_adam_on_the_spectrum_too(tiny_model, textured):
    settings = DreamSettings(objective="mid", octaves=1, iterations=6, jitter=2, optimizer="adam", param="fft", step=0.05)
    weight = torch.zeros_like(textured[:, :1])
    weight[..., :, :32] = 1
    run = lambda a: D.dream(tiny_model, textured, parse_objective("mid", tiny_model), settings,  # noqa: E731
                            generator=[D.frame_generator(0, 0)], anchor=a)
    free, pulled = run(None), run((torch.zeros_like(textured), weight, 0.5))
    assert pulled[..., :32].mean() < 0.5 * free[..., :32].mean()
    assert (pulled[..., 40:] - free[..., 40:]).abs().mean() < 0.5 * (pulled[..., :32] - free[..., :32]).abs().mean()


@pytest.mark.parametrize("objective", ["mid - 0.0001*tv - 0.01*norm", "enhance:mid"])
def test_priors_and_enhance_dream_alike_on_each_device(tiny_model, textured, device, objective):
    """On CUDA the prior terms and enhance's target run inside the captured step, with the CPU's result."""
    settings = DreamSettings(objective=objective, octaves=2, iterations=4, jitter=4, tile=64)
    on_cpu = D.dream(tiny_model, textured, parse_objective(objective, tiny_model), settings, generator=[D.frame_generator(0, 0)])
    model = tiny_model.to(device)
    graphs = D.StepGraphs()
    out = D.dream(model, textured.to(device), parse_objective(objective, model), settings, generator=[D.frame_generator(0, 0)],
                  graphs=graphs)
    assert (out.cpu() - on_cpu).abs().max() < 2 / 255 and (on_cpu - textured).abs().mean() > 0.005
    if device != "cpu":
        assert all(step is not None for step in graphs._steps.values())  # captured, not run eagerly
