"""ATSS defaults: the paper's 1x COCO recipe (official code sfzhang15/ATSS, atss_R_50_FPN_1x).

Copy this file (or subclass Config) to make an experiment; every field of BaseConfig can be
overridden here or as key=value on the command line. The optimisation fields are BaseConfig's
(SGD, lr 0.01 at a total batch of 16, linear warmup over 500 iterations, 12 epochs with the
lr divided by 10 at 8/12 and 11/12 of the run), which is the 1x schedule of the paper.

Multi-scale training, as the official "ms" / 2x configs (MIN_SIZE_RANGE_TRAIN (640, 800)):
    min_size=(640,672,704,736,768,800)                       # one of these per image
or  min_size=(640,800) multiscale_mode=range                 # any integer in [640, 800]
and, for the DCN models, dcn_stages=(False,True,True,True) head_dcn=True.

Run-dependent settings are resolved at the start of each run (public/engine/train/resolve.py) and
printed: ``lr`` is the lr at a total batch of 16 and is scaled to batch_size x processes;
warmup is at most a quarter of the run; lr steps are fractions of ``epochs``; from random
init (pretrained=False) every layer and BatchNorm trains. An explicit value always wins.
"""
from config import BaseConfig, Key, increasing, iou_thresholds_rule


class Config(BaseConfig):
    backbone = "resnet50"
    pretrained = True
    bias_lr_factor = 2.0                # official ATSS code (maskrcnn-benchmark): BIAS_LR_FACTOR 2, WEIGHT_DECAY_BIAS 0
    p6_from = "p5"                      # official ATSS builds P6 from P5 (RETINANET.USE_C5: False)
    # Anchors: one square anchor per location (ASPECT_RATIOS (1.0,), SCALES_PER_OCTAVE 1).
    octave_base_scale = Key(8.0, "Anchor side in strides: 8 gives 64 px on P3 ... 1024 on P7 (the official "
                            "ANCHOR_SIZES).", low=0, low_open=True)
    anchor_offset = Key(0.5, "Anchor centres at (x + offset) * stride: 0.5 is the cell centre, as the official "
                        "generator ((stride - 1) / 2 in its '+1' pixel convention).", low=0, high=1)
    # Head.
    head_dcn = Key(False, "Deformable conv as the last conv of both towers (official USE_DCN_IN_TOWER).")
    # Assignment.
    positive_type = Key("ATSS", "How positives are chosen: 'ATSS' (the paper: adaptive IoU threshold = mean + "
                        "std of the top-k closest anchors per level), 'SSC' (FCOS's rule), 'IoU' (RetinaNet's) "
                        "or 'TOPK'.", choices=("ATSS", "SSC", "IoU", "TOPK"))
    topk = Key(9, "ATSS: candidate anchors per level per box; TOPK: positives per box.", low=1, integer=True)
    scale_boundaries = Key((64, 128, 256, 512), "SSC: max(l, t, r, b) boundaries between the ranges of P3..P7.",
                           low=0, low_open=True, each=True, length=4, check=increasing("scale_boundaries"))
    fg_iou_thresh = Key(0.5, "IoU: foreground at IoU >= this.", low=0, high=1)
    bg_iou_thresh = Key(0.4, "IoU: background below this, ignored in between.", low=0, high=1)
    # Regression.
    regression_type = Key("BOX", "'BOX': deltas to the anchor (weights 10, 10, 5, 5); 'POINT': l, t, r, b from "
                          "the anchor centre in units of anchor side / octave_base_scale.", choices=("BOX", "POINT"))
    # Losses.
    box_loss_weight = Key(2.0, "GIoU loss multiplier (official MODEL.ATSS.REG_LOSS_WEIGHT).", low=0)
    # Decoding: threshold on the class probability, score sqrt(cls * centerness), official inference.
    score_thresh = 0.05
    topk_candidates = 1000
    nms_thresh = 0.6
    detections_per_img = 100

    _decisive_keys = BaseConfig._decisive_keys + ("regression_type", "head_dcn", "octave_base_scale", "anchor_offset")

    def rules_between_keys(self) -> list[str]:
        return iou_thresholds_rule(self)

    def build_model(self, num_classes: int):
        from atss.model import ATSS
        return ATSS(self, num_classes)

    def build_loss(self):
        from atss.loss import ATSSLoss
        return ATSSLoss(self)

    def build_decoder(self):
        from atss.decoder import ATSSDecoder
        return ATSSDecoder(self)

    def level_rule(self):
        from public.data.levels import anchor_rule, scale_range_rule
        from public.ops.anchors import FPN_STRIDES
        if self.positive_type == "SSC":
            return scale_range_rule(self.scale_boundaries)
        iou_rule = self.positive_type == "IoU"
        return anchor_rule(
            f"ATSS anchors (octave_base_scale={self.octave_base_scale}, one square anchor per location; "
            f"positive_type={self.positive_type!r}): a box goes mostly to the level of its best-IoU anchor"
            + (f"; it fits poorly below fg_iou_thresh={self.fg_iou_thresh}" if iou_rule else
               "; its threshold adapts, so only boxes over twice the largest anchor's side fit poorly"),
            "octave_base_scale", [self.octave_base_scale * s for s in FPN_STRIDES], 1, (1.0,),
            poor_iou=self.fg_iou_thresh if iou_rule else 0.25, iou_small=iou_rule)
