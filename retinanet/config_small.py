"""RetinaNet for a small dataset of your own (50-500 labelled photos), from scratch, on a CPU:

    python train.py --config retinanet/config_small.py train_images=DIR train_annotations=FILE \
        val_images=DIR val_annotations=FILE [time_budget=15]

``SmallDataSettings`` (config.py) says what changes from retinanet/config.py and why; the epochs are
resolved from ``time_budget`` (minutes) at the start of the run.
"""
from config import SmallDataSettings
from retinanet.config import Config as RetinaNetConfig


class Config(SmallDataSettings, RetinaNetConfig):
    pass
