"""FCOS for a small dataset of your own (50-500 labelled photos), from scratch, on a CPU:

    python train.py --config fcos/config_small.py train_images=DIR train_annotations=FILE \
        val_images=DIR val_annotations=FILE [time_budget=15]

``SmallDataSettings`` (config.py) says what changes from fcos/config.py and why; the epochs are
resolved from ``time_budget`` (minutes) at the start of the run.
"""
from config import SmallDataSettings
from fcos.config import Config as FCOSConfig


class Config(SmallDataSettings, FCOSConfig):
    pass
