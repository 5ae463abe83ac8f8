"""Label reading and training augmentation parity: yolo-prune's functions against YOLOv7's own, on the same inputs.

YOLOv7's functions are imported from a checkout given by ``--yolov7`` (its extra dependencies in ``--deps``, as for
``test_py_parity.py``); each check feeds both sides the same inputs and, where YOLOv7 draws from Python's
``random``, answers yolo-prune's generator calls from the same ``random`` stream in YOLOv7's call order, so the
outputs must be identical, not just alike:

1. label files -> float32 boxes (YOLOv7's ``cache_labels`` reading): box rows written with 6 decimals, many touching
   an edge; polygon rows (``segments2boxes``) written with 6 decimals as the official COCO labels are, some files
   with a 5-field row among the polygons;
2. the 9-image mosaic's canvas and labels before its warp (``load_mosaic9``), random tile sizes;
3. the box of a warped polygon (``resample_segments`` + ``segment2box``), random polygons and affine matrices;
4. cut-outs (``sample_segments``) and paste-in (``pastein``) on random canvases, polygons and labels;
5. copy-paste (``copy_paste``, the objects mirrored within a mosaic canvas) on random canvases and polygons.

Autoanchor (``kmean_anchors``) is compared by what it finds, not draw for draw (scipy's k-means and the genetic
search draw their own random numbers): the fitness and best possible recall of the anchors each side evolves on the
same labels, over 5 seeds a side.

    .venv/bin/python benchmarks/augment_parity.py --yolov7 ~/yolov7 --deps ~/yolov7-deps           # print
    .venv/bin/python benchmarks/augment_parity.py --yolov7 ~/yolov7 --deps ~/yolov7-deps --write   # BENCHMARKS.md

Exits with status 1 when any output differs.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import random
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

from _report import machine, provenance, publish

SECTION = "## Label reading and augmentation parity"


class OfficialDraws:
    """A numpy-Generator stand-in answering from Python's ``random`` as YOLOv7 draws: ``integers(a, b)`` is
    ``randint(a, b - 1)``, ``choice(seq, k, replace=False)`` is ``random.sample``, ``uniform`` is ``uniform``."""

    def random(self) -> float:
        return random.random()

    def integers(self, low: int, high: int) -> int:
        return random.randint(low, high - 1)

    def uniform(self, low: float, high: float) -> float:
        return random.uniform(low, high)

    def choice(self, seq, size: int, replace: bool = True) -> np.ndarray:
        return np.array(random.sample(list(seq), k=size))


def check_polygon_labels(rng: np.random.Generator, files: int) -> tuple[int, float]:
    """(files compared, largest difference) between YOLOv7's and our boxes from polygon label files."""
    import warnings

    from utils.general import segments2boxes

    from yolo_prune.data.dataset import read_label_file

    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 5-field rows among polygons are warned about; read alike
        for k in range(files):
            rows = []
            for _ in range(int(rng.integers(1, 8))):
                n = int(rng.integers(2, 30)) if rows else int(rng.integers(4, 30))  # the first row makes it polygons
                centre, radius = rng.uniform(0.1, 0.9, 2), rng.uniform(0.005, 0.2, 2)
                points = np.clip(centre + rng.uniform(-1, 1, (n, 2)) * radius, 0, 1)
                rows.append(" ".join([str(rng.integers(0, 80)), *(f"{v:.6f}" for v in points.ravel())]))
            path = Path(tmp) / f"{k}.txt"
            path.write_text("\n".join(rows) + "\n")
            fields = [x.split() for x in path.read_text().strip().splitlines()]  # YOLOv7's cache_labels
            classes = np.array([x[0] for x in fields], dtype=np.float32)
            segments = [np.array(x[1:], dtype=np.float32).reshape(-1, 2) for x in fields]
            official = np.array(np.concatenate((classes.reshape(-1, 1), segments2boxes(segments)), 1), np.float32)
            ours = read_label_file(str(path), 80)[0]
            if (official[:, 3:] <= 0).any():
                continue  # a degenerate polygon YOLOv7 keeps and we refuse (a clear error); not generated here
            worst = max(worst, float(np.abs(official - ours).max()))
    return files, worst


def check_box_labels(rng: np.random.Generator, files: int) -> tuple[int, float]:
    """(files compared, largest difference) between YOLOv7's float32 box rows and ours, many touching an edge."""
    from yolo_prune.data.dataset import read_label_file

    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(files):
            rows = []
            for _ in range(int(rng.integers(1, 8))):
                x1, y1 = rng.uniform(0, 0.9, 2) * (rng.random(2) > 0.3)
                x2, y2 = np.where(rng.random(2) > 0.3, rng.uniform((x1, y1), 1), 1.0)
                if min(x2 - x1, y2 - y1) < 2e-6:
                    continue
                values = ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)
                rows.append(" ".join([str(rng.integers(0, 80)), *(f"{v:.6f}" for v in values)]))
            path = Path(tmp) / f"{k}.txt"
            path.write_text("\n".join(rows) + "\n")
            official = np.array([x.split() for x in path.read_text().strip().splitlines()], dtype=np.float32)
            ours = read_label_file(str(path), 80)[0]
            worst = max(worst, float(np.abs(official.reshape(-1, 5) - ours).max()) if len(ours) else 0.0)
    return files, worst


def check_mosaic9(rng: np.random.Generator, trials: int) -> tuple[int, float]:
    """(mosaics compared, largest pixel/label difference) of the 9-image mosaic before its warp."""
    import utils.datasets as official

    import yolo_prune.data.augment as ours

    worst = 0.0
    original = (official.load_image, official.random_perspective, random.choices, ours.random_perspective)
    try:
        for trial in range(trials):
            s = int(rng.choice([64, 96, 128]))
            tiles = []
            for i in range(9):
                h, w = int(rng.integers(s // 3, s + 1)), int(rng.integers(s // 3, s + 1))
                long_side = max(h, w)
                h, w = max(1, round(h * s / long_side)), max(1, round(w * s / long_side))
                tiles.append((rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
                              np.array([[i % 5, 0.5, 0.5, 0.6, 0.4], [i % 3, 0.2, 0.3, 0.2, 0.2]], np.float32)))
            captured = {}
            official.load_image = lambda _, i: (tiles[i][0], None, tiles[i][0].shape[:2])
            official.random_perspective = lambda img, labels, segments=(), **_: (
                captured.update(img=img.copy(), labels=labels.copy()) or (img, labels))
            random.choices = lambda seq, k: list(range(1, 9))
            owner = types.SimpleNamespace(img_size=s, indices=list(range(9)), mosaic_border=[-s // 2, -s // 2],
                                          labels=[t[1] for t in tiles], segments=[[] for _ in tiles],
                                          hyp={"copy_paste": 0.0, "degrees": 0, "translate": 0, "scale": 0,
                                               "shear": 0, "perspective": 0})
            random.seed(trial)
            official.load_mosaic9(owner, 0)
            ours.random_perspective = lambda img, labels, *_, **__: (img, labels)
            random.seed(trial)
            img, labels = ours.mosaic9(lambda i: (tiles[i][0], tiles[i][1], ()), list(range(9)), s, {},
                                       OfficialDraws())
            if img.shape != captured["img"].shape:
                return trials, float("inf")
            worst = max(worst, float(np.abs(img.astype(int) - captured["img"]).max()),
                        float(np.abs(labels - captured["labels"]).max()))
    finally:
        official.load_image, official.random_perspective, random.choices, ours.random_perspective = original
    return trials, worst


def check_polygon_warp(rng: np.random.Generator, trials: int) -> tuple[int, float]:
    """(polygons compared, largest difference) of warped polygons' boxes."""
    from utils.general import resample_segments, segment2box

    from yolo_prune.data.augment import polygon_box

    worst = 0.0
    for _ in range(trials):
        points = rng.uniform(-20, 150, (int(rng.integers(3, 30)), 2))
        angle, scale = np.deg2rad(rng.uniform(-40, 40)), rng.uniform(0.5, 1.5)
        matrix = np.array([[scale * np.cos(angle), scale * np.sin(angle), rng.uniform(-30, 30)],
                           [-scale * np.sin(angle), scale * np.cos(angle), rng.uniform(-30, 30)], [0, 0, 1]])
        segment = resample_segments([points.copy()])[0]
        xy = np.ones((len(segment), 3))
        xy[:, :2] = segment
        official = np.asarray(segment2box((xy @ matrix.T)[:, :2], 128, 100)).reshape(-1)
        worst = max(worst, float(np.abs(official - polygon_box(points, matrix, (100, 128))).max()))
    return trials, worst


def polygon_scene(rng: np.random.Generator, max_objects: int, centres: tuple[float, float],
                  radii: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """A 128x128 canvas (5 % black pixels, which cut-outs treat as outside the object) and 1..max_objects-1
    random star-shaped polygons: (canvas, labels [n, 5] cls x1 y1 x2 y2 pixels, polygons)."""
    canvas = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    canvas[rng.random((128, 128)) < 0.05] = 0
    polygons, labels = [], []
    for k in range(int(rng.integers(1, max_objects))):
        centre, radius = rng.uniform(*centres, 2), rng.uniform(*radii)
        angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(4, 12))))
        ring = np.stack([np.cos(angles), np.sin(angles)], 1) * radius * rng.uniform(0.5, 1, (len(angles), 1))
        points = np.clip(centre + ring, 0, 128)
        polygons.append(points)
        labels.append([k % 5, *points.min(0), *points.max(0)])
    return canvas, np.array(labels), polygons


def compare_autoanchor(rng: np.random.Generator, n_images: int = 400, seeds: int = 5) -> list[str]:
    """Autoanchor side by side: YOLOv7's ``kmean_anchors`` and ``evolve_anchors`` on the same labels (640 px, 9
    anchors, anchor_t 4), ``seeds`` runs each. Each side draws its own random numbers, so the anchors differ; their
    fitness (YOLOv7's mean best ratio above 1/4) and best possible recall are what to compare."""
    import utils.autoanchor as official

    from yolo_prune.engine.anchors import evolve_anchors, label_sizes, recall_of

    class Labels:  # what kmean_anchors reads of a LoadImagesAndLabels
        shapes = rng.integers(200, 1000, (n_images, 2)).astype(np.float64)  # (w, h)
        labels = [np.concatenate([rng.integers(0, 5, (k, 1)), rng.uniform(0.2, 0.8, (k, 2)),
                                  np.exp(rng.normal(-2.5, 0.9, (k, 2))).clip(0.003, 0.9)], 1).astype(np.float32)
                  for k in rng.integers(1, 12, n_images)]

    wh = label_sizes(Labels.labels, Labels.shapes[:, ::-1], 640)
    filtered = wh[(wh >= 2.0).any(1)]

    def scores(k: np.ndarray) -> tuple[float, float]:
        r = filtered[:, None] / np.asarray(k, np.float32)[None]
        best = np.minimum(r, 1 / r).min(2).max(1)
        return float((best * (best > 0.25)).mean()), recall_of(wh, np.asarray(k, np.float32), 4.0)

    theirs, ours = [], []
    for seed in range(seeds):
        np.random.seed(seed)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            theirs.append(scores(official.kmean_anchors(Labels, n=9, img_size=640, thr=4.0, gen=1000, verbose=False)))
        ours.append(scores(evolve_anchors(wh, 9, 4.0, seed=seed)))

    def shown(runs: list[tuple[float, float]]) -> str:
        f, b = np.array(runs).T
        return (f"fitness {f.mean():.4f} ({f.min():.4f}-{f.max():.4f}), best possible recall {b.mean():.4f} "
                f"({b.min():.4f}-{b.max():.4f})")

    return [f"Autoanchor on {len(wh)} boxes of {n_images} images (640 px, 9 anchors, anchor_t 4; {seeds} seeds a "
            f"side, mean (min-max); each side draws its own random numbers, so the anchors differ): YOLOv7's "
            f"`kmean_anchors` {shown(theirs)}; yolo-prune's `evolve_anchors` {shown(ours)}."]


def check_paste_in(rng: np.random.Generator, trials: int) -> tuple[int, int, float]:
    """(canvases compared, objects pasted, largest difference) of cut-outs and paste-in."""
    import utils.datasets as official

    from yolo_prune.data.paste_in import cut_out_objects, paste_in

    pasted, worst = 0, 0.0
    for trial in range(trials):
        canvas, labels, polygons = polygon_scene(rng, 8, (10, 118), (4, 30))
        random.seed(trial)
        classes, images, masks = official.sample_segments(canvas, labels, [p.copy() for p in polygons], 0.5)
        random.seed(trial)
        cutouts = cut_out_objects(canvas, labels, polygons, OfficialDraws())
        if [c.cls for c in cutouts] != list(classes):
            return trials, pasted, float("inf")
        for cutout, image in zip(cutouts, images):
            worst = max(worst, float(np.abs(cutout.pixels.astype(int) - image).max()))
        if not cutouts:
            continue
        img = rng.integers(0, 256, (96, 112, 3), dtype=np.uint8)
        boxes = np.array([[0, 10, 10, 40, 50], [1, 60, 20, 100, 90]], np.float64)
        random.seed(1000 + trial)
        official_img = img.copy()
        official_labels = np.asarray(official.pastein(official_img, boxes.copy(), list(classes), list(images),
                                                      list(masks)), np.float64)
        random.seed(1000 + trial)
        our_img, our_labels = paste_in(img, boxes.copy(), cutouts, OfficialDraws())
        if our_labels.shape != official_labels.shape:
            return trials, pasted, float("inf")
        worst = max(worst, float(np.abs(our_img.astype(int) - official_img).max()),
                    float(np.abs(our_labels - official_labels).max()))
        pasted += len(our_labels) - len(boxes)
    return trials, pasted, worst


def check_copy_paste(rng: np.random.Generator, trials: int) -> tuple[int, int, float]:
    """(canvases compared, objects mirrored, largest difference) of copy-paste on a mosaic canvas."""
    import utils.datasets as official

    from yolo_prune.data.paste_in import copy_paste

    mirrored, worst = 0, 0.0
    for trial in range(trials):
        canvas, labels, polygons = polygon_scene(rng, 10, (5, 123), (3, 25))
        random.seed(trial)
        official_img, official_labels, official_polygons = official.copy_paste(
            canvas.copy(), labels.copy(), [p.copy() for p in polygons], probability=0.5)
        random.seed(trial)
        img, our_labels, our_polygons = copy_paste(canvas.copy(), labels.copy(), polygons, 0.5, OfficialDraws())
        if our_labels.shape != official_labels.shape or len(our_polygons) != len(official_polygons):
            return trials, mirrored, float("inf")
        worst = max(worst, float(np.abs(img.astype(int) - official_img).max()),
                    float(np.abs(our_labels - official_labels).max()),
                    max(float(np.abs(a - b).max()) for a, b in zip(our_polygons, official_polygons)))
        mirrored += len(our_labels) - len(labels)
    return trials, mirrored, worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--yolov7", required=True, help="checkout of github.com/WongKinYiu/yolov7")
    parser.add_argument("--deps", default=None, help="folder with the official code's extra dependencies")
    parser.add_argument("--trials", type=int, default=500, help="random cases per check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help=f"(re)write '{SECTION}' in BENCHMARKS.md")
    args = parser.parse_args(argv)
    sys.path[:0] = [str(Path(args.yolov7).resolve())] + ([str(Path(args.deps).resolve())] if args.deps else [])
    rng = np.random.default_rng(args.seed)
    n0, d0 = check_box_labels(rng, args.trials)
    n1, d1 = check_polygon_labels(rng, args.trials)
    n2, d2 = check_mosaic9(rng, args.trials // 5)
    n3, d3 = check_polygon_warp(rng, args.trials)
    n4, pasted, d4 = check_paste_in(rng, args.trials)
    n5, mirrored, d5 = check_copy_paste(rng, args.trials)
    rows = [("box label files (6 decimals, many boxes touching an edge)", "`cache_labels`", f"{n0} files", d0),
            ("polygon label files -> boxes", "`cache_labels` + `segments2boxes`", f"{n1} files", d1),
            ("9-image mosaic before the warp (pixels, labels)", "`load_mosaic9`", f"{n2} mosaics", d2),
            ("box of a warped polygon", "`resample_segments` + `segment2box`", f"{n3} polygons", d3),
            ("cut-outs and paste-in (pixels, labels)", "`sample_segments` + `pastein`",
             f"{n4} canvases, {pasted} objects pasted", d4),
            ("copy-paste on a mosaic canvas (pixels, labels, polygons)", "`copy_paste`",
             f"{n5} canvases, {mirrored} objects mirrored", d5)]
    ok = all(d == 0 for *_, d in rows)
    table = ["| what | YOLOv7's | cases | largest difference |", "|---|---|---|---:|"]
    table += [f"| {what} | {theirs} | {cases} | {diff:g} |" for what, theirs, cases, diff in rows]
    env = machine(["numpy", "opencv-python-headless"])
    anchors = compare_autoanchor(rng)
    text = "\n".join([SECTION, "", __doc__.split("\n\n")[1].replace("\n", " "), "", *table, "",
                      f"Identical: **{'yes' if ok else 'NO'}**.", "", *anchors, "",
                      *provenance(sys.argv[1:] if argv is None else argv, env, ["numpy", "opencv-python-headless"])])
    publish(text, args.write)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
