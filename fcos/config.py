"""FCOS defaults: the paper's 1x COCO recipe (FCOS "imprv" settings of the official code).

Copy this file (or subclass Config) to make an experiment; every field of BaseConfig can be
overridden here or as key=value on the command line.

Run-dependent settings are resolved at the start of each run (public/engine/train/resolve.py) and
printed: ``lr`` is the lr at a total batch of 16 and is scaled to batch_size x processes;
warmup is at most a quarter of the run; lr steps are fractions of ``epochs``; from random
init (pretrained=False) every layer and BatchNorm trains. An explicit value always wins.
"""
from config import BaseConfig, Key, increasing


class Config(BaseConfig):
    backbone = "resnet50"
    pretrained = True
    bias_lr_factor = 2.0                # official FCOS code (maskrcnn-benchmark): BIAS_LR_FACTOR 2, WEIGHT_DECAY_BIAS 0
    p6_from = "p5"
    # Head.
    norm_reg_targets = Key(True, "Regress l, t, r, b in units of the level's stride with relu (the official "
                           "'imprv' settings, torchvision); False: exp() in pixels (the paper).")
    centerness_on_reg = Key(True, "Centerness branch on the regression tower (imprv); False: on the "
                            "classification tower (the paper).")
    reg_bias_init = Key(1.0, "Initial l, t, r, b in strides with norm_reg_targets: a positive start keeps the "
                        "relu alive when training from random weights (official code and torchvision: 0.0).")
    location_offset = Key(0.5, "Locations at (x + offset) * stride: 0.5 the cell centre (official); "
                          "torchvision: 0.0.", low=0, high=1)
    location_steps = Key("stride", "Spacing of a level's locations: its stride, or 'torchvision' (padded size // "
                         "cells, torchvision's rule).", choices=("stride", "torchvision"))
    # Assignment.
    center_sampling_radius = Key(1.5, "Center sampling radius in strides; 0 disables center sampling.", low=0)
    scale_boundaries = Key((64, 128, 256, 512), "max(l, t, r, b) boundaries between the ranges of P3..P7 (4 values).",
                           low=0, low_open=True, each=True, length=4, check=increasing("scale_boundaries"))
    # Losses.
    box_loss = Key("giou", "'giou' or 'iou' (-log IoU); 'giou_official', 'iou_official': the official code's "
                   "(inter + 1) / (union + 1) on distances in strides.",
                   choices=("giou", "iou", "giou_official", "iou_official"))
    box_loss_weighting = Key("centerness", "'centerness' (official: box loss weighted by the centerness target) "
                             "or 'none' (torchvision).", choices=("centerness", "none"))
    # Decoding.
    score_thresh = 0.05
    score_thresh_on = Key("cls", "What score_thresh thresholds: the class probability 'cls' (official) or "
                          "'combined' sqrt(cls * centerness) (torchvision).", choices=("cls", "combined"))
    nms_thresh = 0.6

    _decisive_keys = BaseConfig._decisive_keys + ("norm_reg_targets", "centerness_on_reg", "location_offset",
                                                   "location_steps")

    def build_model(self, num_classes: int):
        from fcos.model import FCOS
        return FCOS(self, num_classes)

    def build_loss(self):
        from fcos.loss import FCOSLoss
        return FCOSLoss(self)

    def build_decoder(self):
        from fcos.decoder import FCOSDecoder
        return FCOSDecoder(self)

    def level_rule(self):
        from public.data.levels import scale_range_rule
        return scale_range_rule(self.scale_boundaries)

    def convert_state_dict(self, state_dict, category_ids, class_names=None):
        from fcos.convert import from_torchvision
        return from_torchvision(state_dict, category_ids, class_names)
