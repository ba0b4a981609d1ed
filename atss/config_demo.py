"""ATSS on the built-in demo data, sized to train on a laptop CPU in minutes.

Differences from atss/config.py, and why (the same as fcos/config_demo.py): ResNet-18 from
random init (no download) with every stage and BN trained, a 64-channel FPN and 2-conv
towers, ~160 px inputs (demo images are 128-192 px), AdamW with a cosine schedule (converges
faster from scratch than SGD's 1x). And anchors half the paper's size (4 x stride: 32 px on
P3), as the FCOS demo halves its level ranges, so that the demo's 10-100 px objects spread
over P3-P5 and a 10 px object's candidates overlap it by more than a few percent.
"""
from atss.config import Config as ATSSConfig


class Config(ATSSConfig):
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
    octave_base_scale = 4.0
    scale_boundaries = (32, 64, 128, 256)   # for positive_type=SSC, as the FCOS demo
