"""FCOS defaults: the paper's 1x COCO recipe (FCOS "imprv" settings of the official code).

Copy this file (or subclass Config) to make an experiment; every field of BaseConfig can be
overridden here or as key=value on the command line.

Run-dependent settings are resolved at the start of each run (public/engine/resolve.py) and
printed: ``lr`` is the lr at a total batch of 16 and is scaled to batch_size x processes;
warmup is at most a quarter of the run; lr steps are fractions of ``epochs``; from random
init (pretrained=False) every layer and BatchNorm trains. An explicit value always wins.
"""
from config import BaseConfig


class Config(BaseConfig):
    backbone = "resnet50"
    pretrained = True
    p6_from = "p5"
    # Head.
    norm_reg_targets: bool = True       # regress l,t,r,b in strides with relu (imprv); False: exp() in pixels
    centerness_on_reg: bool = True      # centerness branch on the regression tower (imprv)
    reg_bias_init: float = 1.0          # initial l,t,r,b in strides with norm_reg_targets (keeps the relu alive from scratch); official/torchvision: 0.0
    location_offset: float = 0.5        # locations at (x + 0.5) * stride (official); torchvision: 0.0
    location_steps: str = "stride"      # spacing of a level's locations: its stride, or "torchvision": padded size // cells
    # Assignment.
    center_sampling_radius: float = 1.5 # in strides; 0 disables center sampling
    scale_boundaries: tuple = (64, 128, 256, 512)  # max(l,t,r,b) ranges of P3..P7
    # Losses.
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    box_loss: str = "giou"              # "giou", "iou" (-log IoU); "giou_official", "iou_official": the official
                                        # code's (inter + 1) / (union + 1) on distances in strides
    box_loss_weighting: str = "centerness"  # "centerness" (official) or "none" (torchvision)
    # Decoding.
    score_thresh = 0.05
    score_thresh_on: str = "cls"        # threshold the class probability (official) or "combined" sqrt(cls*ctr) (torchvision)
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

    def convert_state_dict(self, state_dict, category_ids, class_names=None):
        from fcos.convert import from_torchvision
        return from_torchvision(state_dict, category_ids, class_names)
