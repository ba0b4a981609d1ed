"""FCOS on the built-in demo data, sized to train on a laptop CPU in minutes.

The default job of ``python train.py``. Differences from fcos/config.py, and why:
ResNet-18 from random init (no download) with every stage and BN trained, a 64-channel FPN
and 2-conv towers, ~160 px inputs (demo images are 128-192 px), AdamW with a cosine schedule
(converges faster from scratch than SGD's 1x), and a smaller first level range so that the
demo's 10-100 px objects spread over P3-P5.
"""
from fcos.config import Config as FCOSConfig


class Config(FCOSConfig):
    backbone = "resnet18"
    pretrained = False
    frozen_stages = 0
    freeze_bn = False
    fpn_channels = 64
    num_convs = 2
    min_size = (160,)
    max_size = 256
    test_min_size = 160
    batch_size = 8
    num_workers = 2
    epochs = 24
    optimizer = "adamw"
    lr = 2e-3
    weight_decay = 0.05
    scheduler = "cosine"
    warmup_iters = 100
    eval_interval = 4
    log_interval = 10
    scale_boundaries = (32, 64, 128, 256)
    # Test-time augmentation around the demo's 160 px (demo images are 128-192 px, objects
    # 10-100 px): the ATSS scale ranges at the corresponding scales (x5 here), sizes scaled by
    # the image size ratio (~160 / ~640 px for COCO).
    tta_scales = (96, 128, 160, 192, 224, 256)
    tta_max_size = 512
    tta_scale_ranges = ((24, 10000), (16, 10000), (0, 10000), (0, 10000), (0, 64), (0, 64))
