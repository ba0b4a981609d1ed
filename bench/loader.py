"""Training-loader benchmark: images/s of the training loader with each augmentation of
public/data/augment.py and the mosaic (public/data/mosaic.py: four images read per mosaic) against
the plain pipeline (Resize + horizontal flip), in one run.

    python bench/loader.py                                   # demo sizes: min_size 160, max_size 256
    python bench/loader.py --min-size 400 --max-size 667     # the 400 px CPU training size
    python bench/loader.py --image-size 640 480 --images 32 --repeats 5

The images are JPEGs written to a temporary folder (random shapes on noise, 12 boxes each), read
through the real path: CocoDetection (decode), the config's training transforms, collate, the
training loader (EpochSamples seeding, grouped batches) with num_workers 0 and one torch and
OpenCV thread, as in a data-loader worker. Variants are measured in turns (every variant once per
repeat) and each variant's median is reported, so that the load of a shared machine drifts into
all of them alike. "decode only" is the loader without transforms (images collated as read).
The peer row wraps torchvision's ``v2.RandomPhotometricDistort`` (SSD's, the same ranges, plus
its channel shuffle) in our sample format, in place of ours.

The loader keeps up with training when one process's images/s exceeds what a step consumes: a
CPU step of ResNet-18 at 400 px and batch 4 takes about 1-2 s (2-4 images/s); on a GPU, divide
the step's images/s by the workers.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fcos.config_demo import Config as DemoConfig  # noqa: E402
from public.data.loaders import build_dataset, build_loader  # noqa: E402
from public.data.transforms import Compose, build_transforms  # noqa: E402

VARIANTS = {
    "plain (resize + hflip)": {},
    "vflip_prob=0.5": {"vflip_prob": 0.5},
    "rot90=True": {"rot90": True},
    "scale_jitter=(0.5, 2.0)": {"scale_jitter": (0.5, 2.0)},
    "scale_jitter=(0.1, 2.0)": {"scale_jitter": (0.1, 2.0)},
    "photometric=0.5": {"photometric": 0.5},
    "photometric=1.0": {"photometric": 1.0},
    "mosaic=0.5": {"mosaic": 0.5},
    "mosaic=1.0": {"mosaic": 1.0},
    "all (jitter 0.5-2, vflip, rot90, photometric 0.5)": {"scale_jitter": (0.5, 2.0), "vflip_prob": 0.5,
                                                          "rot90": True, "photometric": 0.5},
    "all + mosaic=1.0": {"scale_jitter": (0.5, 2.0), "vflip_prob": 0.5, "rot90": True, "photometric": 0.5,
                         "mosaic": 1.0},
}


PEER = "peer: torchvision v2.RandomPhotometricDistort(p=0.5)"


class TorchvisionPhotometric:
    """torchvision's RandomPhotometricDistort on our sample dicts (uint8 [H, W, 3] numpy)."""

    def __init__(self, prob: float):
        from torchvision.transforms import v2
        self.transform = v2.RandomPhotometricDistort(p=prob)

    def __call__(self, sample: dict) -> dict:
        image = self.transform(torch.from_numpy(sample["image"]).permute(2, 0, 1))  # [3, H, W]
        return {**sample, "image": np.ascontiguousarray(image.permute(1, 2, 0).numpy())}


def write_dataset(folder: Path, count: int, width: int, height: int, seed: int = 0) -> tuple[str, str]:
    """`count` JPEGs of width x height with 12 filled boxes each, and their COCO json."""
    generator = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, count + 1):
        image = cv2.GaussianBlur(generator.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 3)
        for _ in range(12):
            w, h = generator.integers(8, max(9, width // 3)), generator.integers(8, max(9, height // 3))
            x, y = generator.integers(0, width - w), generator.integers(0, height - h)
            image[y:y + h, x:x + w] = generator.integers(0, 256, 3)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "bbox": [int(x), int(y), int(w), int(h)], "area": int(w * h), "iscrowd": 0})
        name = f"{image_id:05d}.jpg"
        cv2.imwrite(str(folder / name), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
    annotations_file = folder / "train.json"
    annotations_file.write_text(json.dumps({"images": images, "annotations": annotations,
                                            "categories": [{"id": 1, "name": "object"}]}))
    return str(folder), str(annotations_file)


def images_per_second(loader, epoch: int) -> float:
    """Images/s over one pass of the loader (epoch `epoch`: other augmentations each time)."""
    loader.batch_sampler.set_epoch(epoch)
    count, start = 0, time.perf_counter()
    for batch in loader:
        count += len(batch)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, nargs=2, default=(400, 400), metavar=("W", "H"))
    parser.add_argument("--images", type=int, default=48, help="images per pass")
    parser.add_argument("--min-size", type=int, default=DemoConfig.min_size[0], help="training min_size")
    parser.add_argument("--max-size", type=int, default=DemoConfig.max_size, help="training max_size")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="passes per variant (median reported)")
    args = parser.parse_args()
    torch.set_num_threads(1)   # as in a data-loader worker
    cv2.setNumThreads(1)

    with tempfile.TemporaryDirectory() as folder:
        images_dir, annotations = write_dataset(Path(folder), args.images, *args.image_size)
        loaders = {}
        for name, overrides in {"decode only": {}, **VARIANTS, PEER: {}}.items():
            cfg = DemoConfig(train_images=images_dir, train_annotations=annotations, num_workers=0,
                             batch_size=args.batch_size, check_images="off", min_size=(args.min_size,),
                             max_size=args.max_size, **overrides)
            dataset = build_dataset(cfg, train=True)
            if name == "decode only":
                dataset.transforms = Compose([])
            if name == PEER:
                dataset.transforms = Compose(build_transforms(cfg, train=True).transforms + [TorchvisionPhotometric(0.5)])
            loaders[name] = build_loader(cfg, dataset, train=True, device=torch.device("cpu"))
        for loader in loaders.values():   # warm-up: file cache, first calls
            images_per_second(loader, 0)
        rates = {name: [] for name in loaders}
        for repeat in range(args.repeats):
            for name, loader in loaders.items():
                rates[name].append(images_per_second(loader, repeat + 1))

    plain = statistics.median(rates["plain (resize + hflip)"])
    width, height = args.image_size
    print(f"training loader, {args.images} JPEGs of {width}x{height}, min_size {args.min_size}, max_size "
          f"{args.max_size}, batch {args.batch_size}, num_workers 0, 1 thread, median of {args.repeats}")
    print(f"{'variant':52s} {'img/s':>8s} {'ms/img':>8s} {'vs plain':>9s}")
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"{name:52s} {rate:8.1f} {1000 / rate:8.2f} {rate / plain:9.2f}")


if __name__ == "__main__":
    main()
