"""Test-time augmentation end to end: ``Predictor(tta=True)`` over a detector whose detections
are known, at several scales (one capped by ``tta_max_size``), mirrored and not, each scale
with its own size range, against boxes computed by hand in the original image's pixels."""
import logging
import time
import warnings

import numpy as np
import pytest
import torch

from config import load_config
from public.engine.evaluate.inference import Predictor, filter_by_thresholds, predict_tta, tta_passes

H, W = 60, 80   # the original image: its left half bright, its right half dark

# The detector's boxes in original pixels (x1, y1, x2, y2), one set per pass; the fake decoder
# scales them to the pass's input (w / W, h / H), the same whether the input is mirrored or not,
# as if the object were where it finds it: a mirrored pass's boxes are then, in the original,
# at x -> W - x. sqrt(area): small 6.93, large 20.78, b10 10 and b20 20 (exactly).
BOXES = {
    30: {"small": (0, 0, 8, 6), "large": (12, 0, 36, 18)},            # pass at 30 x 40 (x0.5)
    60: {"small": (0, 21, 8, 27), "large": (12, 21, 36, 39),          # pass at 60 x 80 (x1)
         "b10": (0, 25, 10, 35), "b20": (14, 20, 34, 40)},
    75: {"small": (0, 42, 8, 48), "large": (12, 42, 36, 60)},          # tta_scales 90 capped: 75 x 100 (x1.25)
}
BASE_SCORE = {30: 0.9, 60: 0.8, 75: 0.7}     # minus 0.05 if the input reads mirrored, minus 0.01 per box
KEYS = ["tta_scales=(30, 60, 90)", "tta_max_size=100", "tta_scale_ranges=((10, 1000), (10, 20), (0, 10))",
        "tta_merge=nms", "score_thresh=0.0", "detections_per_img=100", "size_divisible=32"]


class Identity(torch.nn.Module):
    def forward(self, images):
        return images


class KnownDetector:
    """The decoder: per image of the batch, the boxes of BOXES[input height] scaled to the input,
    scored by pass, labelled 1 where the image reads mirrored (its right half the brighter) and
    0 where not. Records the input sizes it was given."""

    def __init__(self):
        self.sizes = []

    def __call__(self, images, image_sizes):
        out = []
        for image, (h, w) in zip(images, image_sizes.tolist()):
            self.sizes.append((h, w))
            half = w // 2
            mirrored = image[:, :h, w - half:w].mean() > image[:, :h, :half].mean()
            boxes = torch.tensor(list(BOXES[h].values()), dtype=torch.float32) * torch.tensor([w / W, h / H] * 2)
            scores = BASE_SCORE[h] - 0.05 * mirrored.float() - 0.01 * torch.arange(len(boxes))
            out.append({"boxes": boxes, "scores": scores, "labels": torch.full((len(boxes),), int(mirrored))})
        return out


def image(mirrored=False) -> np.ndarray:
    img = np.full((H, W, 3), 10, np.uint8)
    img[:, :W // 2] = 200
    return np.ascontiguousarray(img[:, ::-1]) if mirrored else img


def by_hand(keep: dict, flip: bool, mirrored_image: bool = False) -> list[tuple]:
    """(x1, y1, x2, y2, score, label) of the kept boxes {pass: [names]}, by decreasing score."""
    rows = []
    for h, names in keep.items():
        for flipped in (False, True) if flip else (False,):
            for j, name in enumerate(BOXES[h]):
                if name not in names:
                    continue
                x1, y1, x2, y2 = BOXES[h][name]
                if flipped:   # found at x1..x2 of the mirrored input: at W - x2 .. W - x1 in the original
                    x1, x2 = W - x2, W - x1
                seen_mirrored = int(flipped != mirrored_image)   # what the detector's input looked like
                rows.append((x1, y1, x2, y2, round(BASE_SCORE[h] - 0.05 * seen_mirrored - 0.01 * j, 6),
                             seen_mirrored))
    return sorted(rows, key=lambda r: -r[4])


def rows_of(det: dict) -> list[tuple]:
    return [(*(round(v, 3) for v in box), round(score, 6), label) for box, score, label in
            zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist())]


def predictor(*keys):
    cfg = load_config("fcos/config_demo.py", [*KEYS, *keys])
    decoder = KnownDetector()
    return Predictor(Identity(), decoder, cfg, "cpu"), decoder


@pytest.mark.parametrize("merge", ["nms", "vote"])
def test_tta_boxes_are_mirrored_back_rescaled_and_kept_by_size_range(merge):
    """Two images in one batch (the second mirrored) through 3 scales x 2 flips. Each pass ran at
    the size asked (90 capped by tta_max_size=100 to 75 x 100), its boxes came back to original
    pixels (divided by the scale, mirrored back where the pass was mirrored: label 1 says the
    detector saw a mirrored image), and each pass kept only the boxes whose sqrt(area) in
    original pixels is in its (min, max] range: scale 30 the large box (20.8 in (10, 1000]),
    scale 60 the 20 x 20 box (20 in (10, 20]; 10 x 10 is out), the capped scale the small one
    (6.9 in (0, 10]). The boxes do not overlap, so every kept one is in the result (nms or vote)."""
    tta, decoder = predictor(f"tta_merge={merge}")
    dets = tta([image(), image(mirrored=True)], tta=True)
    assert decoder.sizes == [(30, 40)] * 4 + [(60, 80)] * 4 + [(75, 100)] * 4   # 2 images per pass
    keep = {30: ["large"], 60: ["b20"], 75: ["small"]}
    assert rows_of(dets[0]) == by_hand(keep, flip=True)
    assert rows_of(dets[1]) == by_hand(keep, flip=True, mirrored_image=True)
    assert tta.num_images == 2


def test_tta_without_flip_or_ranges():
    """tta_flip=False: one pass per scale, none mirrored. No ranges: every box of every pass
    is kept, here at one scale (the boxes of a pass do not overlap each other)."""
    tta, decoder = predictor("tta_flip=False")
    assert rows_of(tta([image()], tta=True)[0]) == by_hand({30: ["large"], 60: ["b20"], 75: ["small"]}, flip=False)
    assert decoder.sizes == [(30, 40), (60, 80), (75, 100)]
    every, _ = predictor("tta_scales=(90,)", "tta_scale_ranges=()", "tta_flip=True")
    assert rows_of(every([image()], tta=True)[0]) == by_hand({75: ["small", "large"]}, flip=True)


def test_tta_size_range_bounds_are_min_exclusive_max_inclusive():
    """At scale 60 (x1, exact) the range (min, max] decides the boundary boxes: (10, 20] keeps
    b20 (20) and not b10 (10); (6, 10] keeps b10 and the small box (6.93), not b20."""
    tta, _ = predictor("tta_scales=(60,)", "tta_flip=False", "tta_scale_ranges=((6, 10),)")
    assert rows_of(tta([image()], tta=True)[0]) == by_hand({60: ["small", "b10"]}, flip=False)


def test_tta_passes_check_the_keys_and_default_to_every_size():
    """tta_passes: one (transforms, flipped, (min, max]) per pass; no ranges is (0, inf) for each
    scale; an empty scale list, a range that is not a pair or an unknown merge is refused."""
    passes = tta_passes(load_config("fcos/config_demo.py", ["tta_scales=(30, 60)", "tta_scale_ranges=()"]))
    assert [(flipped, size_range) for _, flipped, size_range in passes] == [
        (False, (0.0, float("inf"))), (True, (0.0, float("inf")))] * 2
    assert not passes[0][0].transforms[0].square
    square = tta_passes(load_config("fcos/config_demo.py", ["tta_scales=(30,)", "tta_scale_ranges=()",
                                                            "resize_mode=square"]))
    assert square[0][0].transforms[0].square
    for keys, message in ((["tta_scales=()", "tta_scale_ranges=()"], "tta_scales is empty"),
                          (["tta_scales=(30, 60)", "tta_scale_ranges=((0, 10, 20), (0, 10))"], "tta_scale_ranges"),
                          (["tta_scales=(30,)", "tta_scale_ranges=()", "tta_merge='mean'"], "tta_merge")):
        cfg = load_config("fcos/config_demo.py")
        for key in keys:                     # past the keys' own checks: tta_passes checks them again
            name, value = key.split("=", 1)
            object.__setattr__(cfg, name, eval(value))
        with pytest.raises(ValueError, match=message):
            tta_passes(cfg)


class Recording(torch.nn.Module):
    """Identity that records, per call, whether it was in training mode, its input's memory
    format, and autocast's state."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, images):
        self.calls.append((self.training, images.is_contiguous(memory_format=torch.channels_last)
                           and not images.is_contiguous(), torch.is_autocast_enabled("cpu"),
                           torch.get_autocast_dtype("cpu")))
        return images


def test_predictor_runs_model_as_asked_and_times_between_syncs(monkeypatch):
    """channels_last and the autocast dtype reach the model (none by default); the time counted
    is that between two device synchronisations around the model (and the merge, with TTA)."""
    cfg = load_config("fcos/config_demo.py", [*KEYS, "tta_flip=False", "test_min_size=60"])
    model = Recording().eval()
    plain = Predictor(model, KnownDetector(), cfg, "cpu")
    assert plain.seconds_per_image == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")     # no autocast warning without amp: it is off, not float32
        plain([image()])
    assert plain.num_images == 1 and plain.seconds_per_image == plain.seconds > 0
    Predictor(model, KnownDetector(), cfg, "cpu", amp_dtype=torch.float16, channels_last=True)([image()])
    assert model.calls == [(False, False, False, torch.float32), (False, True, True, torch.float16)]
    events = []
    monkeypatch.setattr(Predictor, "_sync", lambda self: events.append("sync"))
    monkeypatch.setattr(Predictor, "_forward", lambda self, batch, f=Predictor._forward: events.append("model") or f(self, batch))
    for tta in (False, True):
        events.clear()
        before = time.perf_counter()
        plain([image(), image()], tta=tta)
        wall = time.perf_counter() - before
        assert events == ["sync"] + ["model"] * (3 if tta else 1) + ["sync"]
    assert plain.num_images == 5 and 0 < plain.seconds < 5 * wall
    assert plain.seconds_per_image == pytest.approx(plain.seconds / 5)
    synced = []
    monkeypatch.undo()
    monkeypatch.setattr(torch.cuda, "synchronize", synced.append)
    gpu = Predictor.__new__(Predictor)
    gpu.device = torch.device("cuda", 1)
    gpu._sync()
    plain._sync()
    assert synced == [torch.device("cuda", 1)]


def test_predictor_resizes_on_the_device_for_torchvision_checkpoints():
    """test_resize="torchvision": the 60 x 80 image reaches the model at 30 x 40 (test_min_size 30),
    and its boxes come back in original pixels (x2)."""
    cfg = load_config("fcos/config_demo.py", [*KEYS, "test_resize=torchvision", "test_min_size=30"])
    decoder = KnownDetector()
    det = Predictor(Identity(), decoder, cfg, "cpu")([image()])[0]
    assert decoder.sizes == [(30, 40)]
    assert det["boxes"].tolist() == [list(box) for box in BOXES[30].values()]


def test_predict_tta_gives_coco_results_in_original_pixels(caplog):
    """predict_tta over a loader of untransformed samples: COCO dicts (image id, category id from
    the contiguous label, xywh in original pixels, score); the model in eval mode meanwhile and
    left as found; a progress line every log_interval batches."""
    cfg = load_config("fcos/config_demo.py", [*KEYS, "tta_flip=False"])
    model = Recording().train()
    tta = Predictor(model, KnownDetector(), cfg, "cpu")
    sample = lambda image_id: {"image": image(), "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64),
                               "image_id": image_id, "orig_size": (H, W), "scale": (1.0, 1.0)}
    loader = [[sample(5)], [sample(6)], [sample(7)], [sample(8)]]
    with caplog.at_level(logging.INFO, logger="densedet"):
        results, seconds = predict_tta(tta, loader, label_to_cat_id=[7, 9], log_interval=3)
    assert model.training and {call[0] for call in model.calls} == {False}
    assert [m for m in caplog.messages if "TTA" in m] == ["evaluating with TTA [3/4]"]
    rows = by_hand({30: ["large"], 60: ["b20"], 75: ["small"]}, flip=False)
    expected = [{"image_id": i, "category_id": 7, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}
                for i in (5, 6, 7, 8) for x1, y1, x2, y2, score, _ in rows]
    assert [{**r, "bbox": [round(v, 3) for v in r["bbox"]], "score": round(r["score"], 6)} for r in results] == expected
    assert seconds == pytest.approx(tta.seconds / 4) and seconds > 0


def test_thresholds_keep_a_score_equal_to_its_class_threshold():
    detections = {"scores": torch.tensor([0.5, 0.49, 0.3]), "labels": torch.tensor([0, 0, 1]),
                  "boxes": torch.zeros(3, 4)}
    kept = filter_by_thresholds(detections, torch.tensor([0.5, 0.3]))
    assert kept["scores"].tolist() == pytest.approx([0.5, 0.3])


def test_tta_size_of_a_thin_box():
    """The size range reads sqrt(w x h) of the box as it is: a 0.25 x 16 box is 2 px, kept by (0, 3]."""
    class Thin:
        def __call__(self, images, image_sizes):
            return [{"boxes": torch.tensor([[10.0, 10, 10.25, 26]]), "scores": torch.tensor([0.9]),
                     "labels": torch.tensor([0])} for _ in images]
    cfg = load_config("fcos/config_demo.py", [*KEYS, "tta_scales=(60,)", "tta_flip=False", "tta_scale_ranges=((0, 3),)"])
    assert Predictor(Identity(), Thin(), cfg, "cpu")([image()], tta=True)[0]["boxes"].tolist() == [[10.0, 10, 10.25, 26]]
