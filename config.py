"""BaseConfig: every key shared by all models, declared once with its default, its meaning
and the values it takes.

A model's config is ``class Config(BaseConfig)`` in ``<model>/config.py``; an experiment is a
copy of that file (or a subclass of it) plus ``key=value`` overrides on the command line::

    python train.py --config fcos/config.py backbone=resnet50 pretrained=True lr=0.005

Each key is declared once, as ``name = Key(default, "what it means", <allowed values>)``, in
BaseConfig or in the model's Config; a subclass changes a default with a plain value
(``nms_thresh = 0.5``). Overrides are parsed with ``ast.literal_eval`` and must match the
key's type (an int is accepted for a float, a single value for a tuple); an unknown key, a
wrong type or a value out of range is an error that names the key, raised when the config is
loaded, before anything is built. Keys that take "auto" say what it means in their
declaration (``auto=``), and ``cfg.effective(key)`` is the one place that applies it.
Nothing is built at import: datasets, models and optimizers are built from these values by
the engine, through the ``build_*`` methods each model's Config defines with explicit imports
(no registries). ``python -m tools.config_reference`` writes docs/config.md from these
declarations.
"""
from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any, Callable

from public.data.crowns import crowns_paths
from public.data.demo import demo_paths
from public.engine.command import DEFAULT_CONFIG
from public.models.backbone import BACKBONES

REPO_ROOT = Path(__file__).resolve().parent
_DEMO = demo_paths()
# The built-in datasets (generated on first use), by the name the ``data`` key takes.
BUILTIN_DATA = {"demo": demo_paths, "crowns": crowns_paths}


class Key:
    """The declaration of one config key: default, meaning, type and allowed values.

    Args:
        default: the value when nothing overrides it (its type is the key's, unless ``kind``).
        doc: what the key means, one or two sentences (the configuration reference prints it).
        kind: the type of explicit values, where the default is "auto".
        choices: the allowed values, if a fixed set.
        low, high, low_open, high_open: a number's range (closed unless ``*_open``).
        integer: the number must be whole.
        each: a check of every element of a tuple (``low``/``high``/``integer`` apply to them),
            which must then hold at least one.
        length: a tuple's required length.
        auto: what "auto" means: a function of the config giving the value to use
            (``BaseConfig.effective``); "auto" is allowed only where this is given.
        check: a further rule: a function of the value returning what is wrong, or None.
    """

    def __init__(self, default: Any, doc: str, *, kind: type | None = None, choices: tuple = (),
                 low: float | None = None, high: float | None = None, low_open: bool = False,
                 high_open: bool = False, integer: bool = False, each: bool = False, length: int | None = None,
                 auto: Callable[[Any], Any] | None = None, check: Callable[[Any], str | None] | None = None):
        self.default, self.doc = default, " ".join(doc.split())
        self.kind = kind or type(default)
        self.choices, self.low, self.high, self.low_open, self.high_open = choices, low, high, low_open, high_open
        self.integer, self.each, self.length, self.auto, self.check = integer, each, length, auto, check

    def __get__(self, obj, owner=None):
        return self.default  # the class attribute reads as the plain default

    # ---- checking -------------------------------------------------------------------------------
    def coerce(self, name: str, value: Any) -> Any:
        """``value`` converted to the key's type (int -> float, scalar -> 1-tuple, list -> tuple);
        TypeError naming the key otherwise."""
        if self.auto is not None and isinstance(value, str) and value == "auto":
            return value
        kind = self.kind
        if kind is bool:
            if isinstance(value, bool):
                return value
        elif kind is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif kind is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif kind is tuple:
            if isinstance(value, (list, tuple)):
                return tuple(value)
            if isinstance(value, (int, float, str)) and not isinstance(value, bool):
                return (value,)
        elif isinstance(value, kind):
            return value
        also = " or 'auto'" if self.auto is not None else ""
        raise TypeError(f"config key '{name}' expects {kind.__name__}{also} (default {self.default!r}), "
                        f"got {type(value).__name__} {value!r}")

    def problem(self, name: str, value: Any) -> str | None:
        """What is wrong with ``value`` for this key ("name=value must be ..."), or None."""
        if self.auto is not None and isinstance(value, str) and value == "auto":
            return None
        if self.choices and value not in self.choices:
            return f"{name}={value!r} must be one of {', '.join(map(repr, self.choices))}"
        if self.length is not None and len(value) != self.length:
            return f"{name}={value!r} must hold {self.length} values"
        if self.each:
            numbers_ok = len(value) > 0 and all(self._number_ok(v) for v in value)
            if not numbers_ok:
                return f"{name}={value!r} must be a non-empty tuple of {self._range_words()}, e.g. {name}={(self.default[0],) if self.default else ()!r}"
        elif self.low is not None or self.high is not None or self.integer:
            if not self._number_ok(value):
                return f"{name}={value!r} must be {self._range_words()}"
        return self.check(value) if self.check is not None else None

    def _number_ok(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.integer and value != int(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def _range_words(self) -> str:
        """e.g. "an integer >= 1", "a number > 0 and <= 1"."""
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high}")
        many = self.each
        kind = ("integers" if many else "an integer") if self.integer else ("numbers" if many else "a number")
        return f"{kind} {' and '.join(parts)}".strip()

    def allowed(self) -> str:
        """The allowed values in words, for the configuration reference ("" when any of the type)."""
        if self.choices:
            words = ", ".join(map(repr, self.choices))
        elif self.each:
            words = f"tuple of {self._range_words()}"
        elif self.low is not None or self.high is not None or self.integer:
            words = self._range_words()
        else:
            words = ""
        if self.length is not None:
            words = (words + "; " if words else "") + f"{self.length} values"
        if self.auto is not None and "'auto'" not in words:
            words = (words + " or " if words else "") + "'auto'"
        return words


def trained_weights(cfg) -> bool:
    """Whether the backbone starts from trained weights (``pretrained``, ``backbone_weights`` or
    ``init_from``) rather than random init: what the "auto" keys follow."""
    return bool(cfg.pretrained or cfg.backbone_weights or cfg.init_from)


def _lr_steps_problem(steps: tuple) -> str | None:
    if any(not isinstance(s, (int, float)) or isinstance(s, bool) or s <= 0 for s in steps):
        return f"lr_steps={steps!r} must be positive (fractions of the run below 1, or epochs)"
    fractions = [s for s in steps if s < 1]
    if fractions and len(fractions) != len(steps):
        return (f"lr_steps={steps!r} mixes fractions of the run and epochs: give all as fractions "
                f"(e.g. (0.667, 0.917)) or all as epochs (e.g. (8, 11))")
    if not fractions and any(float(s) != int(s) for s in steps):
        return f"lr_steps={steps!r}: values of 1 or more are epochs and must be whole numbers"
    return None


def _tta_ranges_problem(ranges: tuple) -> str | None:
    if not all(isinstance(r, (tuple, list)) and len(r) == 2 and r[0] < r[1] for r in ranges):
        return f"tta_scale_ranges={ranges!r} must hold one (min, max) pair per scale, min < max"
    return None


def increasing(name: str):
    def problem(values: tuple) -> str | None:
        if any(a >= b for a, b in zip(values, values[1:])):
            return f"{name}={values!r} must be increasing"
        return None
    return problem


class BaseConfig:
    # ---- data ---------------------------------------------------------------------------
    data = Key("", "A built-in dataset by name, generated on first use, instead of the four paths below: 'demo' "
               "(five shape classes, 128-192 px images) or 'crowns' (aerial tree crowns: 400 px tiles, ~15 small "
               "objects of two classes each, 48 train and 16 val tiles).", choices=("", *BUILTIN_DATA))
    train_images = Key(_DEMO["train_images"], "Folder of the training images (default: the built-in demo data, "
                       "generated on first use).")
    train_annotations = Key(_DEMO["train_annotations"], "COCO-format json of the training images.")
    val_images = Key(_DEMO["val_images"], "Folder of the validation images.")
    val_annotations = Key(_DEMO["val_annotations"], "COCO-format json of the validation images.")
    min_size = Key((800,), "Shorter side at training; several values = multi-scale training (see "
                   "multiscale_mode).", low=1, integer=True, each=True)
    multiscale_mode = Key("choice", "How min_size picks a size per image: 'choice' (one of its values) or "
                          "'range' (any integer between its smallest and largest).", choices=("choice", "range"))
    max_size = Key(1333, "Cap on the longer side, at training and evaluation.", low=1, integer=True)
    test_min_size = Key(800, "Shorter side at evaluation.", low=1, integer=True)
    resize_mode = Key("keep_ratio", "'keep_ratio' (the papers': shorter side to the size, longer side capped) or "
                      "'square' (min_size x min_size).", choices=("keep_ratio", "square"))
    test_resize = Key("opencv", "How evaluation images are resized: 'opencv' (bilinear on the uint8 image in the "
                      "loader, sizes rounded) or 'torchvision' (its GeneralizedRCNNTransform on the device: "
                      "normalised float, sizes floored), which torchvision checkpoints are scored with.",
                      choices=("opencv", "torchvision"))
    hflip_prob = Key(0.5, "Probability of a horizontal flip at training.", low=0, high=1)
    # Augmentations for small datasets (public/data/augment.py); all off, as in the papers.
    vflip_prob = Key(0.0, "Probability of a vertical flip at training (imagery without an up: aerial, "
                     "microscopy).", low=0, high=1)
    rot90 = Key(False, "Rotate each training image by k x 90 degrees, k uniform in 0..3 (imagery without an "
                "up). With hflip_prob=0.5 all 8 flips and rotations are equally likely and vflip_prob adds "
                "nothing.")
    scale_jitter = Key((1.0, 1.0), "Large-scale jitter at training: (low, high) of a random factor on the "
                       "training size (min_size, max_size); an image larger than the min_size x max_size box "
                       "is randomly cropped to it, a smaller one stays smaller. (1.0, 1.0) is off; e.g. "
                       "(0.5, 2.0).", low=0, low_open=True, each=True, length=2,
                       check=lambda r: None if r[0] <= r[1] else f"scale_jitter={r!r} must be (low, high) "
                                                                 f"with low <= high")
    crop_min_visibility = Key(0.3, "With scale_jitter: a box cut by the crop is kept (clipped) when at least "
                              "this fraction of its area is inside and it is at least 1 px wide and high; "
                              "otherwise it is dropped with its label.", low=0, high=1)
    photometric = Key(0.0, "Probability of each of SSD's photometric distortions at training (brightness "
                      "x[0.875, 1.125], contrast and saturation x[0.5, 1.5], hue +-0.05 turn); 0 is off, "
                      "0.5 is SSD's.", low=0, high=1)
    mosaic = Key(0.0, "Probability that a training sample is a mosaic of four images (its own and three "
                 "random others) around a random centre of a square canvas of the training size, at one random "
                 "scale (mosaic_scale); boxes cut by the canvas follow crop_min_visibility; the flips, rotations "
                 "and photometric distortion then apply to the canvas (public/data/mosaic.py). 0 is off; 1.0 is "
                 "Ultralytics' and YOLOX's.", low=0, high=1)
    mosaic_scale = Key((0.5, 1.5), "With mosaic: (low, high) of the random factor on the four images' plain "
                       "training size ((0.5, 1.5) is Ultralytics' scale=0.5).", low=0, low_open=True, each=True,
                       length=2, check=lambda r: None if r[0] <= r[1] else f"mosaic_scale={r!r} must be "
                                                                           f"(low, high) with low <= high")
    mosaic_close = Key(0, "With mosaic: the last N epochs train without it, on plain images as the model will see "
                       "them (Ultralytics' close_mosaic, 10 of its 100+ epochs); 0 keeps it to the end.",
                       low=0, integer=True)
    size_divisible = Key(32, "Batches are padded to a multiple of this.", low=1, integer=True)
    aspect_ratio_grouping = Key(True, "Training batches of landscape or of portrait images only (less padding).")
    num_workers = Key(4, "Data-loading processes per training process (capped at the CPU count).",
                      low=0, integer=True)
    batch_size = Key(16, "Images per process (per GPU) and step.", low=1, integer=True)
    check_images = Key("header", "Image files checked when a dataset is loaded: 'header' (size, format and end "
                       "marker of every file), 'decode' (decode every image once; slower), 'off' (trust the json).",
                       choices=("header", "decode", "off"))

    # ---- model --------------------------------------------------------------------------
    backbone = Key("resnet50", "The backbone network (torchvision's): ResNet/ResNeXt, MobileNetV3, EfficientNet, "
                   "RegNet or ConvNeXt; C3-C5 are its last feature maps at strides 8, 16 and 32 "
                   "(docs/benchmarks.md compares their cost).", choices=BACKBONES)
    pretrained = Key(False, "Start the backbone from ImageNet weights (torchvision's weight enums; downloads).")
    backbone_weights = Key("", "A local file with the backbone's ImageNet state dict (instead of downloading).")
    frozen_stages = Key("auto", "Backbone stages kept frozen: 0 trains all, 1 freezes the stem and stage 1 (the "
                        "papers'), up to 4; stage k ends at stride 2**(k+1) in every family (ResNet: layer k). "
                        "'auto': 1 when the backbone starts from trained weights (pretrained, "
                        "backbone_weights or init_from), 0 from random init.", kind=int, low=0, high=4,
                        integer=True, auto=lambda cfg: 1 if trained_weights(cfg) else 0)
    freeze_bn = Key("auto", "Frozen BatchNorm statistics and affine in the backbone (the papers'; the network's "
                    "own eps kept), fixed LayerNorm affine in ConvNeXt; trained BN (SyncBN under DDP on GPUs) if "
                    "False. 'auto': frozen with trained weights, trained from "
                    "random init.", kind=bool, auto=trained_weights)
    dcn_stages = Key((False, False, False, False), "Modulated deformable conv (DCNv2) for the 3x3 conv of every "
                     "block of layer1..layer4 (ResNet backbones); (False, True, True, True) is the DCNv2 paper's and the "
                     "ATSS 'dcnv2' models' choice.", length=4)
    fpn_channels = Key(256, "Channels of every FPN level and head conv.", low=1, integer=True)
    p6_from = Key("p5", "Where P6 is computed from: 'p5' (FCOS, ATSS, torchvision) or 'c5' (the RetinaNet paper).",
                  choices=("p5", "c5"))
    num_convs = Key(4, "Convs in each head tower.", low=0, integer=True)
    head_norm = Key("GN", "Normalisation in the head's conv towers: 'GN' (GroupNorm(32)) or 'none' (plain convs, "
                    "the RetinaNet paper's). 'auto': plain with trained weights (pretrained, backbone_weights or "
                    "init_from), GN from random init, where plain towers do not learn to classify; loading a "
                    "checkpoint takes the checkpoint's value.", kind=str, choices=("GN", "none", "auto"),
                    auto=lambda cfg: "none" if trained_weights(cfg) else "GN")
    prior_prob = Key(0.01, "Initial foreground probability of the classifier (RetinaNet paper, Sec. 4.1).",
                     low=0, high=1, low_open=True, high_open=True)
    focal_alpha = Key(0.25, "Focal loss alpha (the weight of the positives; below 0 disables the weighting).",
                      high=1)
    focal_gamma = Key(2.0, "Focal loss gamma (Lin et al., 2017).", low=0)
    init_from = Key("", "Fine-tune from a checkpoint (ours or torchvision's): classes matched by name, the class "
                    "layer re-initialised where they differ.")

    # ---- decoding -----------------------------------------------------------------------
    score_thresh = Key(0.05, "Candidates below this score are dropped before NMS.", low=0, high=1, high_open=True)
    topk_candidates = Key(1000, "Candidates kept per level before NMS.", low=1, integer=True)
    nms_thresh = Key(0.6, "IoU above which NMS suppresses a box of the same class (1 keeps every box).",
                     low=0, high=1, low_open=True)
    detections_per_img = Key(100, "Detections kept per image after NMS, best first.", low=1, integer=True)
    class_agnostic_nms = Key(False, "NMS across classes: where boxes of two classes overlap above nms_thresh, only "
                             "the best-scoring one is kept (the papers' NMS is per class).")

    # ---- test-time augmentation (test.py --tta) ------------------------------------------
    tta_scales = Key((400, 500, 600, 700, 800, 900, 1000, 1100, 1200), "Shorter sides of the test-time "
                     "augmentation passes (test.py --tta), the longer side capped at tta_max_size.",
                     low=1, integer=True, each=True)
    tta_max_size = Key(2000, "Cap on the longer side of every TTA pass.", low=1, integer=True)
    tta_flip = Key(True, "Run every TTA scale mirrored too.")
    tta_scale_ranges = Key(((96, 10000), (96, 10000), (64, 10000), (64, 10000), (0, 10000), (0, 10000),
                            (0, 10000), (0, 256), (0, 256)),
                           "Per TTA scale, the (min, max] sqrt(area) in original pixels of the boxes it keeps: "
                           "small scales keep the large objects, large scales the small ones (the ATSS paper's "
                           "multi-scale testing).", check=_tta_ranges_problem)
    tta_merge = Key("vote", "How the pooled TTA boxes are merged: 'vote' (NMS, then each kept box = score-weighted "
                    "mean of its class's boxes with IoU >= tta_vote_iou), 'soft_vote' (the FCOS/ATSS code's soft "
                    "box voting) or 'nms'.", choices=("vote", "soft_vote", "nms"))
    tta_vote_iou = Key(0.66, "IoU at which boxes vote in tta_merge='vote'.", low=0, high=1)

    # ---- optimisation -------------------------------------------------------------------
    epochs = Key(12, "Training epochs (12 = the '1x' schedule on COCO).", low=1, integer=True)
    optimizer = Key("sgd", "'sgd' (with momentum, the papers') or 'adamw'.", choices=("sgd", "adamw"))
    lr = Key(0.01, "The lr at a total batch of reference_batch; scaled to the run's total batch if scale_lr.",
             low=0, low_open=True)
    scale_lr = Key(True, "Scale lr by (batch_size x processes) / reference_batch (the linear scaling rule); "
                   "False: lr as given.")
    reference_batch = Key(16, "The total batch that lr is meant for (the papers': 16).", low=1, integer=True)
    momentum = Key(0.9, "SGD momentum.", low=0, high=1, high_open=True)
    weight_decay = Key(1e-4, "Weight decay of conv and linear weights (not of norm layers, biases and Scales "
                       "unless weight_decay_1d).", low=0)
    weight_decay_1d = Key(False, "Also decay biases, norm layers and Scales (torchvision's reference scripts).")
    bias_lr_factor = Key(1.0, "Biases train at this multiple of the lr (the official FCOS / ATSS code and "
                         "Detectron's RetinaNet: 2, with no weight decay on biases).", low=0)
    scheduler = Key("multistep", "The lr schedule after warmup: 'multistep', 'cosine' or 'plateau' "
                    "(ReduceLROnPlateau on mAP).", choices=("multistep", "cosine", "plateau"))
    lr_steps = Key((0.667, 0.917), "Epochs at which multistep multiplies the lr by lr_gamma: values below 1 are "
                   "fractions of epochs (the default is 8/12 and 11/12: the 1x recipe at 12 epochs, the 2x at "
                   "24), whole numbers are epochs, e.g. (8, 11).", check=_lr_steps_problem)
    lr_gamma = Key(0.1, "lr multiplier of multistep and plateau.", low=0, low_open=True)
    plateau_patience = Key(2, "Evaluations without improvement before plateau lowers the lr.", low=0, integer=True)
    warmup_iters = Key(500, "Linear warmup iterations at the start (capped by warmup_max_fraction).",
                       low=0, integer=True)
    warmup_max_fraction = Key(0.25, "Warmup is at most this fraction of the run's iterations (1.0: no cap).",
                              low=0, high=1)
    warmup_factor = Key(0.001, "lr multiplier at iteration 0 of the linear warmup.", low=0, high=1)
    clip_grad_norm = Key("auto", "Clip the gradients' total norm at this value; 0 disables clipping. 'auto': "
                         "35 from random init (mmdetection's FCOS value; from scratch, unclipped runs on small "
                         "data spiked and collapsed), 0 with trained weights (the papers').", kind=float, low=0,
                         auto=lambda cfg: 35.0 if cfg.from_scratch() else 0.0)
    on_spike = Key("skip", "What a training step does when its loss spikes (over spike_factor x the median "
                   "of the last 100 steps) or is not finite: 'skip' (no update from that batch; the run stops "
                   "after 10 in a row), 'warn' (update anyway; a non-finite loss stops the run) or 'stop' (stop; "
                   "resume=auto continues from the last epoch). Every spike is logged with its loss parts.",
                   choices=("skip", "warn", "stop"))
    spike_factor = Key(10.0, "A step's loss over this multiple of the running median is a spike (on_spike).",
                       low=1, low_open=True)
    ema = Key(0.0, "Keep an exponential moving average of the weights with this decay (e.g. 0.9998; 0: off), "
              "evaluated and saved as the model (best.pth, latest.pth's 'model'; the raw weights are kept for "
              "resume). The decay warms up as ema x (1 - exp(-updates / ema_tau)) (YOLOX, mmdetection's "
              "ExpMomentumEMA).", low=0, high=1, high_open=True)
    ema_tau = Key("auto", "Iterations over which the EMA decay warms up. 'auto': 2000 (YOLOX), at most a quarter "
                  "of the run's iterations.", kind=int, low=1, integer=True,
                  auto=lambda cfg: 2000)
    amp = Key(False, "Mixed precision with torch.amp (a GradScaler for float16).")
    amp_dtype = Key("float16", "The autocast dtype of amp: 'float16' or 'bfloat16'.",
                    choices=("float16", "bfloat16"))
    channels_last = Key(False, "NHWC memory format (faster convs with AMP on recent GPUs).")

    # ---- run ----------------------------------------------------------------------------
    work_dir = Key("", "Where the run writes its log, metrics and checkpoints (default: work_dirs/<config name>).")
    resume = Key("", "A latest.pth to resume from, or 'auto' for work_dir/latest.pth.")
    overwrite = Key(False, "Start afresh in a work_dir that holds another run (deletes its run files).")
    allow_mismatch = Key(False, "Resume or evaluate a checkpoint of another model, settings or classes (warns).")
    eval_interval = Key(1, "Evaluate every N epochs (and always after the last).", low=1, integer=True)
    log_interval = Key(20, "Iterations between log lines.", low=1, integer=True)
    seed = Key(42, "Random seed (each process adds its rank).", integer=True)
    device = Key("auto", "'auto' (cuda if available), 'cuda' or 'cpu'.", choices=("auto", "cuda", "cpu"))
    flops = Key(True, "Count FLOPs and parameters at start.")
    tensorboard = Key(False, "Write TensorBoard scalars to work_dir/tensorboard (needs tensorboard).")
    eval_backend = Key("pycocotools", "COCO evaluation: 'pycocotools' or 'faster_coco_eval' (same stats, faster).",
                       choices=("pycocotools", "faster_coco_eval"))

    # Settings a checkpoint must share with the config that loads it (resume, --evaluate,
    # test.py): the model's structure and what its outputs mean. Each model adds its own.
    _decisive_keys = ("backbone", "dcn_stages", "fpn_channels", "p6_from", "num_convs", "head_norm")

    # ------------------------------------------------------------------------------------
    def __init__(self, **overrides: Any) -> None:
        for key, default in self.fields().items():
            setattr(self, key, default)
        for key, value in overrides.items():
            self.set(key, value)
        self.check()

    @classmethod
    def keys(cls) -> dict[str, Key]:
        """Every key's declaration, base class first, in declaration order."""
        out: dict[str, Key] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if isinstance(value, Key):
                    out.setdefault(name, value)
        return out

    @classmethod
    def fields(cls) -> dict[str, Any]:
        """Every key with this class's default, base class first, in declaration order.

        A plain class attribute sets the default of a declared key; one that declares nothing
        is an error naming it (a typo would otherwise be a silent no-op)."""
        keys = cls.keys()
        out = {name: key.default for name, key in keys.items()}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if name.startswith("_") or isinstance(value, Key) or callable(value) \
                        or isinstance(value, (classmethod, staticmethod, property)):
                    continue
                if name not in keys:
                    close = difflib.get_close_matches(name, list(keys), n=3)
                    hint = f"; did you mean {', '.join(close)}?" if close else ""
                    raise TypeError(f"{klass.__name__}.{name} is not a config key{hint} (declare a new key as "
                                    f"{name} = Key(default, \"what it means\"), or start the name with _)")
                out[name] = keys[name].coerce(name, value)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.fields()}

    def changed(self) -> dict[str, Any]:
        """The keys whose value differs from this config class's default (the command's overrides
        and the values resolved at the start of a run)."""
        return {key: value for key, value in self.to_dict().items() if value != self.fields()[key]}

    def set(self, key: str, value: Any) -> None:
        """Set ``key`` after checking its type and allowed values (cross-key rules: ``check``)."""
        keys = self.keys()
        if key not in keys:
            close = difflib.get_close_matches(key, list(keys), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"unknown config key '{key}'{hint}")
        value = keys[key].coerce(key, value)
        problem = keys[key].problem(key, value)
        if problem:
            raise ValueError(f"bad config value: {problem}")
        setattr(self, key, value)
        if key == "data" and value:
            self._use_builtin_data(value)

    def _use_builtin_data(self, name: str) -> None:
        """``data=name``: the four data paths become the built-in dataset's; a path already given
        otherwise is an error (one or the other)."""
        paths, defaults = BUILTIN_DATA[name](), self.fields()
        given = [k for k, v in paths.items() if getattr(self, k) not in (v, defaults[k])]
        if given:
            raise ValueError(f"bad config value: data={name!r} sets the data paths, and {', '.join(given)} "
                             f"{'is' if len(given) == 1 else 'are'} given too: give one or the other")
        for key, path in paths.items():
            setattr(self, key, path)

    def check(self) -> None:
        """Raise one ValueError listing every value out of its key's range or choices, and every
        broken rule between keys."""
        problems = [p for name, key in self.keys().items() if (p := key.problem(name, getattr(self, name)))]
        problems += self.rules_between_keys()
        if self.data:
            given = [k for k, v in BUILTIN_DATA[self.data]().items() if getattr(self, k) != v]
            if given:
                problems.append(f"data={self.data!r} sets the data paths, and {', '.join(given)} "
                                f"{'is' if len(given) == 1 else 'are'} given too: give one or the other")
        if problems:
            raise ValueError("bad config value" + ("s" if len(problems) > 1 else "") + ": " + "; ".join(problems))

    def rules_between_keys(self) -> list[str]:
        """What is wrong between keys (a model's Config adds its rules); [] when nothing is."""
        return []

    def from_scratch(self) -> bool:
        """True when no trained weights initialise the backbone (see ``trained_weights``)."""
        return not trained_weights(self)

    def effective(self, key: str) -> Any:
        """The value a run uses for ``key``: its own, or what "auto" means for it (its declaration's
        ``auto``). The one place where "auto" is turned into a value."""
        value = getattr(self, key)
        if isinstance(value, str) and value == "auto":
            auto = self.keys()[key].auto
            if auto is not None:
                return auto(self)
        return value

    def apply_overrides(self, items: list[str]) -> None:
        """Apply ``key=value`` strings; values are Python literals (strings may be bare)."""
        for item in items:
            if "=" not in item:
                raise ValueError(f"override '{item}' is not of the form key=value")
            key, text = item.split("=", 1)
            key = key.strip().lstrip("-")
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text  # a bare string such as backbone=resnet18
            self.set(key, value)

    def update(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            self.set(key, value)

    def __repr__(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    # Each model's Config builds its own pieces with explicit imports.
    def build_model(self, num_classes: int):
        raise NotImplementedError(f"{type(self).__name__} does not define build_model")

    def build_loss(self):
        raise NotImplementedError(f"{type(self).__name__} does not define build_loss")

    def build_decoder(self):
        raise NotImplementedError(f"{type(self).__name__} does not define build_decoder")

    def level_rule(self):
        """Which FPN level each box goes to under this model's assignment
        (``public.data.levels.LevelRule``), for the dataset check and the warnings at start;
        None for a model without one."""
        return None

    def convert_state_dict(self, state_dict: dict, category_ids: list[int],
                           class_names: list[str] | None = None) -> tuple[dict, dict] | None:
        """Recognise a foreign (torchvision) state dict and convert it; None if not recognised.
        ``class_names`` (of ``category_ids``) let a COCO model's class rows be matched by name.

        Returns (our state dict, config overrides that reproduce the foreign model's behaviour).
        """
        return None


def iou_thresholds_rule(cfg) -> list[str]:
    """Max-IoU matching: background below bg_iou_thresh, foreground from fg_iou_thresh."""
    if cfg.bg_iou_thresh > cfg.fg_iou_thresh:
        return [f"bg_iou_thresh={cfg.bg_iou_thresh!r} must be <= fg_iou_thresh={cfg.fg_iou_thresh!r} (anchors "
                f"between them are ignored)"]
    return []


def load_config(path: str | Path, overrides: list[str] | tuple = ()) -> BaseConfig:
    """Import the config file at ``path``, instantiate its ``Config`` and apply overrides.

    A file inside the repository is imported as its package module (``fcos/config.py`` ->
    ``fcos.config``) so that it shares classes with the rest of the code; a file elsewhere
    is imported from its path.
    """
    path = find_config_file(path)
    try:
        module_name = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
        module = importlib.import_module(module_name)
    except ValueError:  # outside the repository
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    if not hasattr(module, "Config"):
        raise AttributeError(f"{path} defines no class Config")
    cfg = module.Config()
    cfg.apply_overrides(list(overrides))
    cfg.check()
    if not cfg.work_dir:
        cfg.work_dir = str(Path("work_dirs") / _config_name(path))
    return cfg


def find_config_file(path: str | Path) -> Path:
    """The config file at ``path``: as given (absolute, or relative to the current folder), else
    relative to the repository root (``--config fcos/config.py`` works from any folder)."""
    given = Path(path)
    for candidate in (given, REPO_ROOT / given) if not given.is_absolute() else (given,):
        if candidate.is_file():
            return candidate.resolve()
    where = "" if given.is_absolute() else f" (nor {REPO_ROOT / given})"
    raise FileNotFoundError(f"config file not found: {given.resolve()}{where}")


# What a run's checkpoint decides even under an explicit --config (unless given as key=value):
# the data it was evaluated on and how evaluation resizes its images.
RUN_EVAL_KEYS = ("val_images", "val_annotations", "test_min_size", "max_size", "resize_mode", "test_resize",
                 "size_divisible")
# Stored values that describe where and how the run ran, not the model: never taken from it.
_RUN_PLACE_KEYS = ("device", "work_dir", "resume", "overwrite")


def _announce(line: str) -> None:
    """Print on the main process only (RANK 0, or no torchrun)."""
    if os.environ.get("RANK", "0") == "0":
        print(line, flush=True)


def stored_run(checkpoint_path: str | Path) -> dict | None:
    """What ``checkpoint_path`` says about its run: {"config": dict, "model_type": str | None,
    "source": "checkpoint" | "onnx"}; None for a foreign state dict, an older ``.onnx`` without a
    config, or a file that cannot be read (its loader reports that when the job runs)."""
    from public.engine.runs.checkpoint import is_densedet, load_checkpoint

    path = Path(checkpoint_path)
    if path.suffix.lower() == ".onnx":
        from public.engine.export.runtime import read_metadata
        try:
            meta = read_metadata(path)
        except (ImportError, OSError, ValueError, RuntimeError):
            return None
        if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
            return None
        return {"config": meta["config"], "model_type": meta.get("model_type"), "source": "onnx"}
    try:
        checkpoint = load_checkpoint(path)
    except (OSError, ValueError, RuntimeError):
        return None
    if not is_densedet(checkpoint) or not isinstance(checkpoint.get("config"), dict):
        return None
    return {"config": checkpoint["config"], "model_type": checkpoint.get("model_type"), "source": "checkpoint"}


def _stored_path(value: Any) -> Any:
    """A relative data path of a stored config: from the current folder if it is there, else from
    the repository root if it is there, else as stored."""
    if not isinstance(value, str) or not value or Path(value).is_absolute() or Path(value).exists():
        return value
    return str(REPO_ROOT / value) if (REPO_ROOT / value).exists() else value


def _override_keys(overrides) -> set[str]:
    return {item.split("=", 1)[0].strip().lstrip("-") for item in overrides if "=" in item}


def load_run_config(checkpoint_path: str | Path, config_path: str | Path | None = None,
                    overrides: list[str] | tuple = (), announce: Callable[[str], Any] | None = _announce) -> BaseConfig:
    """The config to evaluate, detect with or export the checkpoint (or exported ``.onnx``) at
    ``checkpoint_path``: "the checkpoint carries its run".

    Without ``config_path``: the Config class of the checkpoint's model (``model_type``, e.g.
    ``fcos.config``) updated with the config stored in it (keys the class declares; others are
    ignored with a note), then ``overrides``. With ``config_path``: that file and ``overrides``
    (``load_config``), except that ``RUN_EVAL_KEYS`` (evaluation data and sizes) still come
    from the checkpoint unless overridden. A file that stores no config (a torchvision state
    dict) takes the config file (default ``DEFAULT_CONFIG``) as ``load_config`` does; an
    ``.onnx`` from an older export needs ``config_path``. ``work_dir`` is the checkpoint's
    folder unless overridden. ``announce`` gets one line: the run's values used, what was
    overridden.
    """
    run = stored_run(checkpoint_path)
    if run is None:
        if config_path is None and str(checkpoint_path).lower().endswith(".onnx") and Path(checkpoint_path).is_file():
            raise ValueError(f"{checkpoint_path} holds no config (exported before export.py stored the run's "
                             f"config): pass --config CFG (e.g. --config fcos/config.py) with val_images=DIR "
                             f"val_annotations=FILE, or export the checkpoint again")
        return load_config(config_path or DEFAULT_CONFIG, overrides)
    stored = {k: (_stored_path(v) if k in ("val_images", "val_annotations", "train_images", "train_annotations")
                  else v) for k, v in run["config"].items()}
    given = _override_keys(overrides)
    if stored.get("data"):   # a built-in dataset: its paths follow the code's place, unless paths are given
        data_keys = ("val_images", "val_annotations", "train_images", "train_annotations")
        drop = data_keys if not given & set(data_keys) else ("data",)
        stored = {k: v for k, v in stored.items() if k not in drop}
    notes = []
    if config_path is None:
        module_name = run["model_type"] or ".".join(Path(DEFAULT_CONFIG).with_suffix("").parts)
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise ValueError(f"{checkpoint_path} is a {module_name} model, which this code does not define "
                             f"({error}): pass --config CFG") from error
        cfg = module.Config()
        declared = cfg.keys()
        unknown = sorted(k for k in stored if k not in declared)
        for key, value in stored.items():
            if key in declared and key not in _RUN_PLACE_KEYS and key not in given:
                try:
                    cfg.set(key, value)
                except (KeyError, TypeError, ValueError) as error:
                    unknown.append(f"{key} ({error})")
        if unknown:
            notes.append(f"ignored stored keys this code does not take: {', '.join(unknown)}")
        cfg.apply_overrides(list(overrides))
        cfg.check()
        model = module_name.split(".")[0]
    else:
        cfg = load_config(config_path, overrides)
        taken = [k for k in RUN_EVAL_KEYS if k in stored and k not in given and hasattr(cfg, k)]
        for key in taken:
            cfg.set(key, stored[key])
        cfg.check()
        model = (run["model_type"] or "").split(".")[0] or type(cfg).__module__.split(".")[0]
        notes.append(f"config {config_path} with the run's data and eval sizes")
    if "work_dir" not in given:
        cfg.work_dir = str(Path(checkpoint_path).resolve().parent)
    if announce is not None:
        shown = ", ".join(item for item in overrides if "=" in item) or "nothing"
        announce(f"run of {checkpoint_path}: {model}, val data {cfg.val_annotations}, test_min_size="
                 f"{cfg.test_min_size} max_size={cfg.max_size}; overridden: {shown}"
                 + "".join(f"; {note}" for note in notes))
    return cfg


def _config_name(path: Path) -> str:
    """Run name: the model folder for its configs, else the file name (my_exps/r50.py -> r50)."""
    if path.stem.startswith("config"):  # fcos/config.py -> fcos, fcos/config_demo.py -> fcos_demo
        return path.parent.name + path.stem[len("config"):]
    return path.stem


class DemoSettings:
    """What each model's ``config_demo.py`` changes to train on the built-in demo data on a
    laptop CPU in minutes (mixed in before the model's Config: ``class Config(DemoSettings,
    FCOSConfig)``): ResNet-18 from random init (nothing to download) with every stage and BN
    trained, a 64-channel FPN and 2-conv towers, ~160 px inputs (demo images are 128-192 px),
    AdamW with a cosine schedule (converges faster from scratch than SGD's 1x), and test-time
    augmentation scales around 160 px.
    """
    backbone = "resnet18"
    pretrained = False                # from scratch: frozen_stages and freeze_bn "auto" train everything
    fpn_channels = 64
    num_convs = 2
    min_size = (160,)
    max_size = 256
    test_min_size = 160
    batch_size = 8
    num_workers = 2
    epochs = 24
    optimizer = "adamw"
    lr = 4e-3                         # at a total batch of 16: 2e-3 at the demo's batch of 8
    weight_decay = 0.05
    bias_lr_factor = 1.0              # AdamW's recipe: one lr for all parameters
    scheduler = "cosine"
    warmup_iters = 100
    eval_interval = 4
    log_interval = 10
    # The ATSS scale ranges at the corresponding scales, sizes scaled by the image size ratio
    # (~160 px here against ~640 px for COCO).
    tta_scales = (96, 128, 160, 192, 224, 256)
    tta_max_size = 512
    tta_scale_ranges = ((24, 10000), (16, 10000), (0, 10000), (0, 10000), (0, 64), (0, 64))
