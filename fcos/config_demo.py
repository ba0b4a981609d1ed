"""FCOS on the built-in demo data, sized to train on a laptop CPU in minutes.

The default job of ``python train.py``. ``DemoSettings`` (config.py) says what changes from
fcos/config.py and why; FCOS also gets smaller level ranges so that the demo's 10-100 px
objects spread over P3-P5.
"""
from config import DemoSettings
from fcos.config import Config as FCOSConfig


class Config(DemoSettings, FCOSConfig):
    scale_boundaries = (32, 64, 128, 256)
