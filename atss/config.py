"""ATSS defaults: the paper's 1x COCO recipe (official code sfzhang15/ATSS, atss_R_50_FPN_1x).

Copy this file (or subclass Config) to make an experiment; every field of BaseConfig can be
overridden here or as key=value on the command line. The optimisation fields are BaseConfig's
(SGD, lr 0.01 at a total batch of 16, linear warmup over 500 iterations, 12 epochs with the
lr divided by 10 at 8/12 and 11/12 of the run), which is the 1x schedule of the paper.

Multi-scale training, as the official "ms" / 2x configs (MIN_SIZE_RANGE_TRAIN (640, 800)):
    min_size=(640,672,704,736,768,800)                       # one of these per image
or  min_size=(640,800) multiscale_mode=range                 # any integer in [640, 800]
and, for the DCN models, dcn_stages=(False,True,True,True) head_dcn=True.

Run-dependent settings are resolved at the start of each run (public/engine/resolve.py) and
printed: ``lr`` is the lr at a total batch of 16 and is scaled to batch_size x processes;
warmup is at most a quarter of the run; lr steps are fractions of ``epochs``; from random
init (pretrained=False) every layer and BatchNorm trains. An explicit value always wins.
"""
from config import BaseConfig


class Config(BaseConfig):
    backbone = "resnet50"
    pretrained = True
    p6_from = "p5"                      # official ATSS builds P6 from P5 (RETINANET.USE_C5: False)
    # Anchors: one square anchor per location (ASPECT_RATIOS (1.0,), SCALES_PER_OCTAVE 1).
    octave_base_scale: float = 8.0      # anchor side = 8 x stride: 64 on P3 ... 1024 on P7 (ANCHOR_SIZES)
    anchor_offset: float = 0.5          # anchor centres at (x + 0.5) * stride: the cell centre, as the
                                        # official generator ((stride - 1) / 2 in its "+1" pixel convention)
    # Head.
    head_dcn: bool = False              # deformable conv as the last conv of both towers (USE_DCN_IN_TOWER)
    # Assignment.
    positive_type: str = "ATSS"         # "ATSS" (the paper), "SSC" (FCOS's rule), "IoU" (RetinaNet's), "TOPK"
    topk: int = 9                       # ATSS: candidates per level per box; TOPK: positives per box
    scale_boundaries: tuple = (64, 128, 256, 512)  # SSC: max(l,t,r,b) ranges of P3..P7
    fg_iou_thresh: float = 0.5          # IoU: foreground at IoU >= this
    bg_iou_thresh: float = 0.4          # IoU: background below this, ignored in between
    # Regression.
    regression_type: str = "BOX"        # "BOX": deltas to the anchor (weights 10,10,5,5); "POINT": l,t,r,b
                                        # from the anchor centre in units of anchor side / octave_base_scale
    # Losses.
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    box_loss_weight: float = 2.0        # GIoU loss multiplier (official MODEL.ATSS.REG_LOSS_WEIGHT)
    # Decoding: threshold on the class probability, score sqrt(cls * centerness), official inference.
    score_thresh = 0.05
    topk_candidates = 1000
    nms_thresh = 0.6
    detections_per_img = 100

    _decisive_keys = BaseConfig._decisive_keys + ("regression_type", "head_dcn", "octave_base_scale", "anchor_offset")

    def build_model(self, num_classes: int):
        from atss.model import ATSS
        return ATSS(self, num_classes)

    def build_loss(self):
        from atss.loss import ATSSLoss
        return ATSSLoss(self)

    def build_decoder(self):
        from atss.decoder import ATSSDecoder
        return ATSSDecoder(self)
