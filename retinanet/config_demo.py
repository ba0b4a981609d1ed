"""RetinaNet on the built-in demo data, sized to train on a laptop CPU in minutes.

``DemoSettings`` (config.py) says what changes from retinanet/config.py and why. RetinaNet
also gets GroupNorm in its towers (trains from scratch more stably than the paper's plain
towers), lr 1e-3 at its batch of 8 (2e-3 at 16), and anchors half the paper's size (octave base 2: 16..25 px on P3 up to 64..101 px on P5) so
that the demo's 10-100 px objects overlap their anchors.
"""
from config import DemoSettings
from retinanet.config import Config as RetinaNetConfig


class Config(DemoSettings, RetinaNetConfig):
    head_norm = "GN"
    lr = 2e-3
    anchor_octave_base = 2.0
