"""RetinaNet on the built-in demo data, sized to train on a laptop CPU in minutes.

Differences from retinanet/config.py, and why: ResNet-18 from random init (no download)
with every stage and BN trained, a 64-channel FPN and 2-conv towers with GroupNorm (trains
from scratch more stably than the paper's plain towers), ~160 px inputs (demo images are
128-192 px), AdamW with a cosine schedule (converges faster from scratch than SGD's 1x), and
anchors half the paper's size (octave base 2: 16..25 px on P3 up to 64..101 px on P5) so
that the demo's 10-100 px objects overlap their anchors.
"""
from retinanet.config import Config as RetinaNetConfig


class Config(RetinaNetConfig):
    backbone = "resnet18"
    pretrained = False
    frozen_stages = 0
    freeze_bn = False
    fpn_channels = 64
    num_convs = 2
    head_norm = "GN"
    min_size = (160,)
    max_size = 256
    test_min_size = 160
    batch_size = 8
    num_workers = 2
    epochs = 24
    optimizer = "adamw"
    lr = 1e-3
    weight_decay = 0.05
    scheduler = "cosine"
    warmup_iters = 100
    eval_interval = 4
    log_interval = 10
    anchor_octave_base = 2.0
