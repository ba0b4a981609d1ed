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
declaration (``auto=``, a rule of the config and the run's facts); ``cfg.resolve(...)`` is the
one place that applies these rules: it returns the run spec, a frozen copy in which no "auto"
is left and every value says where it came from (``spec.source(key)``). Everything that builds
or runs reads the spec; writing into it raises ``FrozenConfigError``.
Nothing is built at import: datasets, models and optimizers are built from these values by
the engine, through the ``build_*`` methods each model's Config defines with explicit imports
(no registries). ``python -m tools.config_reference`` writes docs/config.md from these
declarations.
"""
from __future__ import annotations

from typing import Any

from public.data.crowns import crowns_paths
from public.data.demo import demo_paths
from public.keys import (REPO_ROOT, FrozenConfigError, Key, KeyedConfig, RunFacts, find_config_file,  # noqa: F401
                         load_config, model_config)
from public.models.backbone import BACKBONES

_DEMO = demo_paths()
# The built-in datasets (generated on first use), by the name the ``data`` key takes.
BUILTIN_DATA = {"demo": demo_paths, "crowns": crowns_paths}


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



class BaseConfig(KeyedConfig):
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
                        integer=True, auto=lambda cfg, run: 1 if trained_weights(cfg) else 0)
    freeze_bn = Key("auto", "Frozen BatchNorm statistics and affine in the backbone (the papers'; the network's "
                    "own eps kept), fixed LayerNorm affine in ConvNeXt; trained BN (SyncBN under DDP on GPUs) if "
                    "False. 'auto': frozen with trained weights, trained from "
                    "random init.", kind=bool, auto=lambda cfg, run: trained_weights(cfg))
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
                    auto=lambda cfg, run: "none" if trained_weights(cfg) else "GN")
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
    time_budget = Key(0.0, "Train for about this many minutes (0: off): epochs is resolved at the start from the "
                      "measured speed of a few training steps and of evaluation on this machine, so that training "
                      "and its evaluations end within the budget; the schedule follows those epochs.", low=0)
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
                         auto=lambda cfg, run: 35.0 if cfg.from_scratch() else 0.0)
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
                  auto=lambda cfg, run: max(1, min(2000, run.total_iters // 4)) if run.total_iters else 2000)
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
    eval_backend = Key("faster_coco_eval", "COCO evaluation: 'faster_coco_eval' (its C++ COCOeval: the same 12 stats "
                       "as pycocotools, 4.7x faster on 5,000 images with 100 detections each) or 'pycocotools'.",
                       choices=("pycocotools", "faster_coco_eval"))

    # Settings a checkpoint must share with the config that loads it (resume, --evaluate,
    # test.py): the model's structure and what its outputs mean. Each model adds its own.
    _decisive_keys = ("backbone", "dcn_stages", "fpn_channels", "p6_from", "num_convs", "head_norm")

    # ------------------------------------------------------------------------------------

    def after_set(self, key: str, value: Any) -> None:
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

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.data:
            given = [k for k, v in BUILTIN_DATA[self.data]().items() if getattr(self, k) != v]
            if given:
                problems.append(f"data={self.data!r} sets the data paths, and {', '.join(given)} "
                                f"{'is' if len(given) == 1 else 'are'} given too: give one or the other")
        return problems

    def from_scratch(self) -> bool:
        """True when no trained weights initialise the backbone (see ``trained_weights``)."""
        return not trained_weights(self)

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


class SmallDataSettings:
    """What each model's ``config_small.py`` changes for a small dataset of real photos (50-500
    labelled images) trained from scratch on a CPU in the minutes a user gives it (mixed in before
    the model's Config: ``class Config(SmallDataSettings, FCOSConfig)``): ResNet-18 from random init
    with every stage and BN trained, a 64-channel FPN and 2-conv towers (about 1/20 of the papers'
    head's FLOPs), 320 px inputs, AdamW with a cosine schedule, an EMA of the weights (its decay
    0.98 averages over ~50 iterations: a smooth last epoch without lagging a short run), and a
    15-minute budget from which the epochs are resolved (docs/results.md, "The small-data race").
    """
    backbone = "resnet18"
    pretrained = False                # from scratch: frozen_stages and freeze_bn "auto" train everything
    fpn_channels = 64
    num_convs = 2
    min_size = (320,)
    max_size = 320
    test_min_size = 320
    batch_size = 4
    num_workers = 2
    optimizer = "adamw"
    lr = 4e-3                         # at a total batch of 16: 1e-3 at a batch of 4
    weight_decay = 0.05
    bias_lr_factor = 1.0              # AdamW's recipe: one lr for all parameters
    scheduler = "cosine"
    warmup_iters = 100
    ema = 0.98
    # Augmentation, each measured alone on the raccoon photos at 15 CPU minutes (docs/results.md):
    # large-scale jitter, then mosaic and the photometric distortions on top of it.
    scale_jitter = (0.5, 1.5)
    mosaic = 0.5
    mosaic_close = 5                  # the last 5 epochs on plain images, as the model will see them
    photometric = 0.5
    time_budget = 15.0
    eval_interval = 2
    log_interval = 10


class DemoSettings(SmallDataSettings):
    """What each model's ``config_demo.py`` changes to train on the built-in demo data on a
    laptop CPU in minutes: the small-data settings at ~160 px (demo images are 128-192 px),
    batches of 8, 24 epochs without a time budget or EMA, and test-time augmentation scales
    around 160 px.
    """
    min_size = (160,)
    max_size = 256
    test_min_size = 160
    batch_size = 8
    epochs = 24
    ema = 0.0
    scale_jitter = (1.0, 1.0)         # the demo's recipe (docs/results.md): no augmentation beyond flips
    mosaic = 0.0
    mosaic_close = 0
    photometric = 0.0
    time_budget = 0.0
    eval_interval = 4
    # The ATSS scale ranges at the corresponding scales, sizes scaled by the image size ratio
    # (~160 px here against ~640 px for COCO).
    tta_scales = (96, 128, 160, 192, 224, 256)
    tta_max_size = 512
    tta_scale_ranges = ((24, 10000), (16, 10000), (0, 10000), (0, 10000), (0, 64), (0, 64))
