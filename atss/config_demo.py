"""ATSS on the built-in demo data, sized to train on a laptop CPU in minutes.

``DemoSettings`` (config.py) says what changes from atss/config.py and why. ATSS also gets
anchors half the paper's size (4 x stride: 32 px on
P3), as the FCOS demo halves its level ranges, so that the demo's 10-100 px objects spread
over P3-P5 and a 10 px object's candidates overlap it by more than a few percent.
"""
from config import DemoSettings
from atss.config import Config as ATSSConfig


class Config(DemoSettings, ATSSConfig):
    octave_base_scale = 4.0
    scale_boundaries = (32, 64, 128, 256)   # for positive_type=SSC, as the FCOS demo
