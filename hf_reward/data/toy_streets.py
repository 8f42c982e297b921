"""Toy streets: a procedural street-scene dataset that needs no download.

Each image is drawn from a seeded generator, so ``(seed, split, index)`` fixes it exactly and
any number of images at any size can be made on the fly (about 1 ms for 128 x 128).

The class statistics imitate real street scenes: road, sidewalk, building, sky and vegetation
cover most pixels; cars are medium; poles (1-3 px wide), signs and persons are thin or rare
and look like their surroundings (grey poles in front of grey buildings, sign colours shared
with cars), so a model trained by plain pixel cross-entropy under-segments them, as it does on
Cityscapes. Textures (windows, tiles, lane marks, foliage) and pixel noise keep colour alone
from identifying a class.

Example::

    >>> image, labels = make_scene(0, size=(64, 96), seed=0)
    >>> image.shape, image.dtype, labels.shape, int(labels.max()) < len(ID2LABEL)
    ((64, 96, 3), dtype('uint8'), (64, 96), True)
    >>> from hf_reward.data import train_transform
    >>> ds, id2label = load_toy_streets("train", num_images=100, size=128, transform=train_transform(96, seed=0))
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import numpy as np

from .loading import SegmentationDataset, prepare_segmentation_dataset
from .transforms import _size2

ID2LABEL = {
    0: "road",
    1: "sidewalk",
    2: "building",
    3: "sky",
    4: "vegetation",
    5: "car",
    6: "pole",
    7: "person",
    8: "sign",
}
ROAD, SIDEWALK, BUILDING, SKY, VEGETATION, CAR, POLE, PERSON, SIGN = range(9)
THING_CLASSES = ("car", "person")  # the classes whose connected components are objects (hf_reward.mask_scores)
# Different splits draw from different streams of the same seed, so they never share images.
_SPLITS = {"train": 0, "validation": 1, "test": 2}
_SIGN_COLOURS = np.array([[0.8, 0.1, 0.1], [0.1, 0.25, 0.75], [0.9, 0.8, 0.1], [0.9, 0.9, 0.9]])


class _Canvas:
    """Label map and float RGB image painted object by object; later paint occludes earlier."""

    def __init__(self, labels: np.ndarray, rgb: np.ndarray):
        self.labels, self.rgb = labels, rgb  # (H, W) uint8, (H, W, 3) float32
        self.height, self.width = labels.shape

    def box(self, y0: float, y1: float, x0: float, x1: float):
        """Clipped integer box and its coordinate grids (ys (h, 1), xs (1, w)), or None if empty."""
        y0, y1 = max(int(y0), 0), min(int(np.ceil(y1)), self.height)
        x0, x1 = max(int(x0), 0), min(int(np.ceil(x1)), self.width)
        if y0 >= y1 or x0 >= x1:
            return None
        return (slice(y0, y1), slice(x0, x1)), np.arange(y0, y1)[:, None] + 0.5, np.arange(x0, x1)[None, :] + 0.5

    def paint(self, where, mask: np.ndarray, cls: int, rgb) -> None:
        self.labels[where][mask] = cls
        image = self.rgb[where]
        if np.ndim(rgb) == 3:  # a texture (h, w, 3)
            image[...] = np.where(mask[..., None], rgb, image)
        else:  # one colour
            image[mask] = rgb


def make_scene(
    index: int, size: int | Sequence[int] = 128, seed: int = 0, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Image ``(H, W, 3)`` uint8 and class-index labels ``(H, W)`` uint8 of scene ``index``.

    >>> a, _ = make_scene(3, 64, seed=1); b, _ = make_scene(3, 64, seed=1)
    >>> bool((a == b).all())
    True
    """
    if split not in _SPLITS:
        raise ValueError(f"toy streets has splits {list(_SPLITS)}, not {split!r}")
    height, width = _size2(size)
    rng = np.random.default_rng([seed, _SPLITS[split], index])
    ys = np.arange(height, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(width, dtype=np.float32)[None, :] + 0.5
    horizon = float(rng.uniform(0.35, 0.55) * height)

    # Background layout: sky, a skyline of building blocks (some gaps), the ground with a road
    # in perspective and sidewalk on both sides. Colours come from one palette gather,
    # textures from one shade map, which keeps the full-image work to a few vector operations.
    edges = np.cumsum(rng.integers(max(width // 8, 2), max(width // 3, 3), size=width))
    edges = np.concatenate([[0], edges[edges < width], [width]])
    block = np.searchsorted(edges, np.arange(width), side="right") - 1  # block index of each column
    n_blocks = len(edges) - 1
    tops = horizon - rng.uniform(0.1, 0.4, n_blocks) * height
    tops[rng.random(n_blocks) < 0.15] = height  # a gap: sky shows through
    sky = ys < horizon
    building = (ys >= tops[block].astype(np.float32)[None, :]) & sky

    depth = np.clip((ys - horizon) / max(height - horizon, 1.0), 0, 1)  # 0 at horizon, 1 at bottom
    road_x = float(rng.uniform(0.35, 0.65) * width) + float(rng.uniform(-0.2, 0.2) * width) * depth
    half = (0.02 + float(rng.uniform(0.3, 0.45)) * depth) * width
    road = ~sky & (np.abs(xs - road_x) < half)
    labels = np.where(sky, np.where(building, BUILDING, SKY), np.where(road, ROAD, SIDEWALK)).astype(np.uint8)

    # Palette: one sky colour per row (gradient to a hazy horizon), one per building, sidewalk, road.
    sky_top, haze = rng.uniform([0.25, 0.4, 0.7], [0.5, 0.65, 0.95]), rng.uniform(0.75, 0.95)
    t = np.clip(ys / max(horizon, 1.0), 0, 1)
    facades = rng.uniform(0.35, 0.7, n_blocks)[:, None] * rng.uniform(0.85, 1.15, (n_blocks, 3))
    paving = rng.uniform(0.5, 0.7) * np.array([[1.0, 0.95, 0.9]])
    asphalt = rng.uniform(0.2, 0.35) * np.ones((1, 3))
    palette = np.concatenate([(1 - t) * sky_top + t * haze, facades, paving, asphalt]).astype(np.float32)
    rows = np.arange(height)[:, None]
    index = np.where(
        sky,
        np.where(building, height + block[None, :], rows),
        np.where(road, height + n_blocks + 1, height + n_blocks),
    )

    period, tile = max(height // 16, 3), max(height // 24, 2)
    shade = np.ones((height, width), dtype=np.float32)
    shade[building & ((ys % period) < period * 0.45) & ((xs % period) < period * 0.5)] = 0.55  # windows
    shade[~sky & ~road & (((ys % tile) < 1) | ((xs % tile) < 1))] = 0.8  # paving joints
    dash = (np.abs(xs - road_x) < 0.01 * width * (1 + 2 * depth)) & ((ys * (1.5 - depth)) % (2 * tile) < tile)
    shade[road & dash] = 3.0  # lane marks
    c = _Canvas(labels, palette[index] * shade[..., None])

    # Vegetation: tree crowns with foliage noise on the skyline.
    for _ in range(rng.integers(0, 4)):
        cy, cx = horizon - rng.uniform(0.0, 0.15) * height, rng.uniform(0, width)
        ry, rx = rng.uniform(0.06, 0.16) * height, rng.uniform(0.05, 0.14) * width
        got = c.box(cy - ry, cy + ry, cx - rx, cx + rx)
        if got is None:
            continue
        where, by, bx = got
        crown = ((by - cy) / ry) ** 2 + ((bx - cx) / rx) ** 2 <= 1
        leaves = rng.uniform([0.1, 0.35, 0.05], [0.25, 0.55, 0.2]) * rng.uniform(0.6, 1.3, crown.shape + (1,))
        c.paint(where, crown, VEGETATION, leaves.astype(np.float32))

    def ground_point(on_road: bool) -> tuple[float, float, float]:
        """(bottom y, x, perspective scale) of an object standing on the road or the sidewalk."""
        bottom = horizon + rng.uniform(0.08, 1.0) * (height - horizon)
        s = (bottom - horizon) / max(height - horizon, 1.0)
        rx = road_x[min(int(bottom), height - 1), 0]
        hw = half[min(int(bottom), height - 1), 0]
        if on_road:
            return bottom, rx + rng.uniform(-0.7, 0.7) * hw, s
        side = rng.choice([-1.0, 1.0])
        return bottom, rx + side * (hw + rng.uniform(0.02, 0.15) * width), s

    # Objects, drawn far to near so that nearer ones occlude.
    objects = [("car", *ground_point(True)) for _ in range(rng.integers(0, 4))]
    objects += [("pole", *ground_point(False)) for _ in range(rng.integers(1, 5))]
    objects += [("person", *ground_point(False)) for _ in range(rng.integers(0, 3))]
    for kind, bottom, x, s in sorted(objects, key=lambda o: o[1]):
        if kind == "car":
            w = (0.08 + 0.3 * s) * width
            h = 0.45 * w
            got = c.box(bottom - h, bottom, x - w / 2, x + w / 2)
            if got is None:
                continue
            where, by, bx = got
            cabin = (by - (bottom - h)) < 0.4 * h
            body = ~cabin | (np.abs(bx - x) < 0.35 * w)
            paint = rng.choice([rng.uniform(0.1, 0.9, 3), _SIGN_COLOURS[rng.integers(len(_SIGN_COLOURS))]])
            glass = cabin & (np.abs(bx - x) < 0.3 * w)
            rgb = np.where(glass[..., None], 0.15, paint).astype(np.float32)
            c.paint(where, body, CAR, rgb)
        elif kind == "pole":
            pole_h = (0.25 + 0.35 * s) * height
            pw = max(1.0, round((0.006 + 0.012 * s) * width))
            got = c.box(bottom - pole_h, bottom, x - pw / 2, x + pw / 2)
            if got is None:
                continue
            where, by, bx = got
            grey = rng.uniform(0.35, 0.6)  # the building greys: hard to tell apart
            c.paint(where, np.ones((by.size, bx.size), bool), POLE, grey)
            if rng.random() < 0.6:
                r = max(1.5, (0.015 + 0.03 * s) * width)
                sy = bottom - pole_h + r
                got = c.box(sy - r, sy + r, x - r, x + r)
                if got is not None:
                    where, by, bx = got
                    disc = np.ones((by.size, bx.size), bool)
                    if rng.random() < 0.5:  # a round sign, else a square one
                        disc = (by - sy) ** 2 + (bx - x) ** 2 <= r * r
                    c.paint(where, disc, SIGN, _SIGN_COLOURS[rng.integers(len(_SIGN_COLOURS))])
        else:
            ph = (0.06 + 0.2 * s) * height
            pw = 0.3 * ph
            got = c.box(bottom - ph, bottom, x - pw / 2, x + pw / 2)
            if got is None:
                continue
            where, by, bx = got
            head_r = 0.12 * ph
            head = (by - (bottom - ph + head_r)) ** 2 + ((bx - x) * 1.2) ** 2 <= head_r**2
            body_cy, body_ry = bottom - 0.42 * ph, 0.42 * ph
            body = ((by - body_cy) / body_ry) ** 2 + ((bx - x) / (pw / 2)) ** 2 <= 1
            clothes = rng.uniform(0.05, 0.8, 3)
            rgb = np.where(head[..., None], np.array([0.8, 0.6, 0.5]), clothes).astype(np.float32)
            c.paint(where, head | body, PERSON, rgb)

    # Lighting, colour cast and sensor noise.
    gain = (255 * rng.uniform(0.7, 1.2) * rng.uniform(0.9, 1.1, 3)).astype(np.float32)
    image = c.rgb * gain
    image += rng.standard_normal((height, width, 3), dtype=np.float32) * np.float32(255 * 0.04)
    image = np.clip(image, 0, 255, out=image).astype(np.uint8)
    return image, c.labels


def _generate(indices: list[int], size: tuple[int, int], seed: int, split: str):
    for i in indices:
        image, labels = make_scene(i, size, seed, split)
        yield {"image": image, "label": labels, "file": f"toy_streets/{split}/{i:06d}"}


def toy_streets(
    num_images: int = 1000,
    size: int | Sequence[int] = 128,
    seed: int = 0,
    split: str = "train",
    streaming: bool = True,
) -> datasets.IterableDataset | datasets.Dataset:
    """The raw dataset: columns ``image`` (H, W, 3), ``label`` (H, W, class indices), ``file``.

    Streaming generates images on the fly (one shard per image, so ``split_dataset_by_node``
    and DataLoader workers split it evenly); ``streaming=False`` renders them once into memory
    as PNG-encoded ``datasets.Image`` columns.

    >>> raw = toy_streets(num_images=8, size=(64, 128), seed=0)
    >>> next(iter(raw))["file"]
    'toy_streets/train/000000'
    """
    size = _size2(size)
    kwargs = {"indices": list(range(num_images)), "size": size, "seed": seed, "split": split}
    if streaming:
        return datasets.IterableDataset.from_generator(_generate, gen_kwargs=kwargs)
    rows = list(_generate(**kwargs))
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.Image(), "file": datasets.Value("string")}
    )
    return datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in features}, features=features)


def load_toy_streets(
    split: str = "train",
    *,
    num_images: int = 1000,
    size: int | Sequence[int] = 128,
    seed: int = 0,
    streaming: bool = True,
    **pipeline,
) -> tuple[datasets.IterableDataset | SegmentationDataset, dict[int, str]]:
    """Toy streets, ready for a model, and its ``id2label``.

    ``pipeline`` takes the keyword arguments of :func:`prepare_segmentation_dataset`
    (``transform``, ``shuffle_buffer``, ...); ``seed`` fixes the images and the shuffle.

    >>> ds, id2label = load_toy_streets("validation", num_images=50, size=(128, 256))
    >>> next(iter(ds))["labels"].shape
    torch.Size([128, 256])
    """
    raw = toy_streets(num_images, size, seed, split, streaming)
    pipeline.setdefault("seed", seed)
    return prepare_segmentation_dataset(raw, num_classes=len(ID2LABEL), split=split, **pipeline), dict(ID2LABEL)
