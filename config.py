"""BaseConfig: every field shared by all models, with its default.

A model's config is ``class Config(BaseConfig)`` in ``<model>/config.py``; an experiment is a
copy of that file (or a subclass of it) plus ``key=value`` overrides on the command line::

    python train.py --config fcos/config.py backbone=resnet50 pretrained=True lr=0.005

Fields are plain class attributes (numbers, strings, booleans, tuples). Overrides are parsed
with ``ast.literal_eval`` and must match the type of the default (an int is accepted for a
float field, and a single number for a tuple field); an unknown key is an error that names
the key and suggests close matches. Nothing is built at import: datasets, models and
optimizers are built from these values by the engine, through the three ``build_*`` methods
that each model's Config defines with explicit imports (no registries).
"""
from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import json
from pathlib import Path
from typing import Any

from public.data.demo import demo_paths

REPO_ROOT = Path(__file__).resolve().parent
_DEMO = demo_paths()


class BaseConfig:
    # ---- data ---------------------------------------------------------------------------
    # Paths of a COCO-format dataset. The defaults point at the built-in demo data, which is
    # generated on first use.
    train_images: str = _DEMO["train_images"]            # folder of the training images
    train_annotations: str = _DEMO["train_annotations"]  # COCO json of the training images
    val_images: str = _DEMO["val_images"]                # folder of the validation images
    val_annotations: str = _DEMO["val_annotations"]      # COCO json of the validation images
    min_size: tuple = (800,)          # shorter side at training; several values = multi-scale
    multiscale_mode: str = "choice"   # "choice": one of min_size; "range": any int in [min, max]
    max_size: int = 1333              # longer side cap
    test_min_size: int = 800          # shorter side at evaluation
    resize_mode: str = "keep_ratio"   # "keep_ratio" (paper) or "square" (min_size x min_size)
    # How evaluation images are resized: "opencv" (bilinear on the uint8 image in the loader,
    # sizes rounded) or "torchvision" (its GeneralizedRCNNTransform on the device: normalised
    # float, bilinear interpolation, sizes floored), which torchvision checkpoints are scored with.
    test_resize: str = "opencv"
    hflip_prob: float = 0.5           # probability of a horizontal flip at training
    size_divisible: int = 32          # batches are padded to a multiple of this
    aspect_ratio_grouping: bool = True  # training batches of landscape or of portrait images only (less padding)
    num_workers: int = 4              # data-loading processes per training process
    batch_size: int = 16              # per process (per GPU)
    # Image files checked when a dataset is loaded: "header" (size, format and end marker of
    # every file: finds unreadable, truncated and mis-sized images before the first step),
    # "decode" (decode every image once; slower), "off" (trust the json).
    check_images: str = "header"

    # ---- model --------------------------------------------------------------------------
    backbone: str = "resnet50"        # resnet18/34/50/101/152, resnext50_32x4d, resnext101_32x8d, resnext101_64x4d
    pretrained: bool = False          # ImageNet weights through torchvision's weight enums
    backbone_weights: str = ""        # a local file with the backbone's ImageNet state dict (overrides download)
    # "auto": the paper's fine-tuning recipe (frozen_stages=1, freeze_bn=True) when the backbone
    # starts from trained weights (pretrained, backbone_weights or init_from), everything trained
    # (0, False) from random init. An explicit value always wins.
    frozen_stages: int = "auto"       # 0: train all; 1: freeze stem + stage 1 (paper); up to 4; or "auto"
    freeze_bn: bool = "auto"          # frozen BatchNorm statistics and affine (paper); SyncBN under DDP if False; or "auto"
    # Modulated deformable conv (DCNv2) for the 3x3 conv of every block of layer1..layer4;
    # (False, True, True, True) is the DCNv2 paper's and the ATSS "dcnv2" models' choice.
    dcn_stages: tuple = (False, False, False, False)
    fpn_channels: int = 256           # channels of every FPN level and head conv
    p6_from: str = "p5"               # "p5" (FCOS imprv, torchvision) or "c5" (RetinaNet paper)
    num_convs: int = 4                # convs in each head tower
    # Normalisation in the head's conv towers: "GN" (GroupNorm(32), FCOS/ATSS), "none" (plain
    # convs, the RetinaNet paper's) or "auto": plain with trained weights (pretrained,
    # backbone_weights or init_from), GN from random init, where plain towers do not learn to
    # classify. Loading a checkpoint with "auto" takes the checkpoint's value.
    head_norm: str = "GN"
    prior_prob: float = 0.01          # initial foreground probability of the classifier
    init_from: str = ""               # fine-tune from a checkpoint (ours or torchvision's); classes matched by name, the class layer re-initialised where they differ

    # ---- decoding -----------------------------------------------------------------------
    score_thresh: float = 0.05        # candidates below this score are dropped before NMS
    topk_candidates: int = 1000       # per level, before NMS
    nms_thresh: float = 0.6           # IoU above which NMS suppresses a box of the same class
    detections_per_img: int = 100     # kept after NMS, best first

    # ---- test-time augmentation (test.py --tta) ------------------------------------------
    # Each scale (shorter side, longer side capped at tta_max_size) is run as is and, with
    # tta_flip, mirrored. A scale keeps only the boxes whose sqrt(area) in original pixels lies
    # in its range (min, max]: small scales keep the large objects, large scales the small
    # ones (the ATSS paper's multi-scale testing; ranges follow its 12-scale SCALE_RANGES
    # at the same scales). The pooled boxes are merged by tta_merge: "vote" (NMS, then each
    # kept box = score-weighted mean of its class's boxes with IoU >= tta_vote_iou), "soft_vote"
    # (the FCOS/ATSS code's soft box voting) or "nms".
    tta_scales: tuple = (400, 500, 600, 700, 800, 900, 1000, 1100, 1200)
    tta_max_size: int = 2000
    tta_flip: bool = True
    tta_scale_ranges: tuple = ((96, 10000), (96, 10000), (64, 10000), (64, 10000), (0, 10000),
                               (0, 10000), (0, 10000), (0, 256), (0, 256))
    tta_merge: str = "vote"
    tta_vote_iou: float = 0.66

    # ---- optimisation -------------------------------------------------------------------
    epochs: int = 12                  # 12 = the "1x" schedule on COCO
    optimizer: str = "sgd"            # "sgd" or "adamw"
    lr: float = 0.01                  # the lr at a total batch of reference_batch (16); scaled to the run's total batch if scale_lr
    scale_lr: bool = True             # lr x (batch_size x processes) / reference_batch (linear scaling rule); False: lr as given
    reference_batch: int = 16         # the total batch that lr is meant for (the papers': 16)
    momentum: float = 0.9             # SGD momentum
    weight_decay: float = 1e-4        # not applied to norm layers and biases
    weight_decay_1d: bool = False     # also decay biases, norm layers and Scales (torchvision's reference scripts)
    scheduler: str = "multistep"      # "multistep", "cosine" or "plateau" (ReduceLROnPlateau on mAP)
    # Epochs at which multistep multiplies the lr by lr_gamma: values below 1 are fractions of
    # `epochs` (the default is 8/12 and 11/12: the 1x recipe at 12 epochs, the 2x at 24), whole
    # numbers are epochs, e.g. (8, 11).
    lr_steps: tuple = (0.667, 0.917)
    lr_gamma: float = 0.1             # lr multiplier of multistep and plateau
    plateau_patience: int = 2         # evaluations without improvement before plateau lowers the lr
    warmup_iters: int = 500           # linear warmup iterations at the start (capped by warmup_max_fraction)
    warmup_max_fraction: float = 0.25 # warmup is at most this fraction of the run's iterations (1.0: no cap)
    warmup_factor: float = 0.001      # lr multiplier at iteration 0 of the linear warmup
    clip_grad_norm: float = 0.0       # 0 disables gradient clipping
    amp: bool = False                 # mixed precision with torch.amp (GradScaler for float16)
    amp_dtype: str = "float16"        # "float16" or "bfloat16"
    channels_last: bool = False       # NHWC memory format (faster convs with AMP on recent GPUs)

    # ---- run ----------------------------------------------------------------------------
    work_dir: str = ""                # default: work_dirs/<config name>
    resume: str = ""                  # a latest.pth to resume from, or "auto" for work_dir/latest.pth
    overwrite: bool = False           # start afresh in a work_dir that holds another run (deletes its run files)
    allow_mismatch: bool = False      # resume / evaluate a checkpoint of another model, settings or classes (warns)
    eval_interval: int = 1            # evaluate every N epochs (and always after the last)
    log_interval: int = 20            # iterations between log lines
    seed: int = 42                    # random seed (each process adds its rank)
    device: str = "auto"              # "auto" (cuda if available), "cuda", "cpu"
    flops: bool = True                # count FLOPs and parameters at start
    tensorboard: bool = False         # write TensorBoard scalars to work_dir/tensorboard (needs tensorboard)
    eval_backend: str = "pycocotools"  # COCO evaluation: "pycocotools" or "faster_coco_eval" (same stats, faster)

    # Settings a checkpoint must share with the config that loads it (resume, --evaluate,
    # test.py): the model's structure and what its outputs mean. Each model adds its own.
    _decisive_keys = ("backbone", "dcn_stages", "fpn_channels", "p6_from", "num_convs", "head_norm")

    # ------------------------------------------------------------------------------------
    def __init__(self, **overrides: Any) -> None:
        for key, value in overrides.items():
            self.set(key, value)

    @classmethod
    def fields(cls) -> dict[str, Any]:
        """Every field with its default, base class first, in declaration order."""
        out: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            for key, value in vars(klass).items():
                if key.startswith("_") or callable(value) or isinstance(value, (classmethod, staticmethod, property)):
                    continue
                out[key] = value
        return out

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.fields()}

    def set(self, key: str, value: Any) -> None:
        fields = self.fields()
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"unknown config key '{key}'{hint}")
        setattr(self, key, _coerce(key, value, fields[key]))

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

    def convert_state_dict(self, state_dict: dict, category_ids: list[int],
                           class_names: list[str] | None = None) -> tuple[dict, dict] | None:
        """Recognise a foreign (torchvision) state dict and convert it; None if not recognised.
        ``class_names`` (of ``category_ids``) let a COCO model's class rows be matched by name.

        Returns (our state dict, config overrides that reproduce the foreign model's behaviour).
        """
        return None


# Fields that may also hold "auto" (resolved at the start of a run, public/engine/resolve.py),
# with the type of their explicit values.
AUTO_FIELDS: dict[str, Any] = {"frozen_stages": 0, "freeze_bn": False, "head_norm": "GN"}


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Check ``value`` against the type of ``default``; accept int for float, a scalar for a tuple,
    and "auto" for the fields of ``AUTO_FIELDS``."""
    if key in AUTO_FIELDS:
        if value == "auto" and isinstance(value, str):
            return value
        default = AUTO_FIELDS[key]
    expected = type(default)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, tuple):
        if isinstance(value, (list, tuple)):
            return tuple(value)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            return (value,)
    elif isinstance(value, expected):
        return value
    also = " or 'auto'" if key in AUTO_FIELDS else ""
    raise TypeError(
        f"config key '{key}' expects {expected.__name__}{also} (default {default!r}), "
        f"got {type(value).__name__} {value!r}"
    )


def load_config(path: str | Path, overrides: list[str] | tuple = ()) -> BaseConfig:
    """Import the config file at ``path``, instantiate its ``Config`` and apply overrides.

    A file inside the repository is imported as its package module (``fcos/config.py`` ->
    ``fcos.config``) so that it shares classes with the rest of the code; a file elsewhere
    is imported from its path.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
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
    if not cfg.work_dir:
        cfg.work_dir = str(Path("work_dirs") / _config_name(path))
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
    scheduler = "cosine"
    warmup_iters = 100
    eval_interval = 4
    log_interval = 10
    # The ATSS scale ranges at the corresponding scales, sizes scaled by the image size ratio
    # (~160 px here against ~640 px for COCO).
    tta_scales = (96, 128, 160, 192, 224, 256)
    tta_max_size = 512
    tta_scale_ranges = ((24, 10000), (16, 10000), (0, 10000), (0, 10000), (0, 64), (0, 64))
