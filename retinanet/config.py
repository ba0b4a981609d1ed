"""RetinaNet defaults: the paper's 1x COCO recipe (Lin et al., "Focal Loss for Dense Object
Detection", ICCV 2017; Detectron's RetinaNet configs).

Copy this file (or subclass Config) to make an experiment; every field of BaseConfig can be
overridden here or as key=value on the command line. ``retinanet/convert.py`` lists the
values that reproduce torchvision's ``retinanet_resnet50_fpn`` (v1) and ``_v2``.

Run-dependent settings are resolved at the start of each run (public/engine/train/resolve.py) and
printed: ``lr`` is the lr at a total batch of 16 and is scaled to batch_size x processes;
warmup is at most a quarter of the run; lr steps are fractions of ``epochs``; from random
init (pretrained=False) every layer and BatchNorm trains. An explicit value always wins.
"""
from config import BaseConfig, Key, iou_thresholds_rule


class Config(BaseConfig):
    backbone = "resnet50"
    pretrained = True
    bias_lr_factor = 2.0                # Detectron, the paper's code: BIAS_DOUBLE_LR, no bias weight decay
    p6_from = "c5"                      # P6 from C5 (paper); torchvision v1: "p5", v2: "c5"
    head_norm = "auto"                  # plain towers (paper, torchvision v1) with trained weights, GN from scratch; v2: "GN"
    # Anchors (paper Sec. 4): sizes octave_base * stride * 2^(k / scales_per_octave) on P3-P7.
    anchor_octave_base = Key(4.0, "Smallest anchor size in strides: 4 gives 32..512 px on P3..P7.",
                             low=0, low_open=True)
    anchor_scales_per_octave = Key(3, "Anchor sizes per octave: x (2^0, 2^(1/3), 2^(2/3)) at 3.", low=1, integer=True)
    aspect_ratios = Key((0.5, 1.0, 2.0), "Anchor aspect ratios, height / width.", low=0, low_open=True, each=True)
    anchor_offset = Key(0.5, "Anchor centres at (x + offset) * stride; Detectron ~0.5, torchvision 0.0.",
                        low=0, high=1)
    location_steps = Key("stride", "Spacing of a level's anchor centres: its stride, or 'torchvision' (padded "
                         "size // cells, torchvision's rule).", choices=("stride", "torchvision"))
    anchor_int_sizes = Key(False, "Truncate anchor sizes to ints (torchvision: int(32 * 2 ** (1/3)) = 40).")
    anchor_round_corners = Key(False, "Round centred anchor corners to ints (torchvision's AnchorGenerator).")
    # Assignment (paper Sec. 4: IoU >= 0.5 foreground, < 0.4 background, in between ignored).
    fg_iou_thresh = Key(0.5, "Foreground at IoU >= this.", low=0, high=1)
    bg_iou_thresh = Key(0.4, "Background below this IoU, ignored in between.", low=0, high=1)
    allow_low_quality_matches = Key(True, "Each box also takes its best anchors below fg_iou_thresh (Detectron, "
                                    "torchvision).")
    # Losses.
    box_loss = Key("smooth_l1", "'smooth_l1' (the paper's code), 'l1' (torchvision v1) or 'giou' (torchvision v2).",
                   choices=("smooth_l1", "l1", "giou"))
    smooth_l1_beta = Key(0.11, "Smooth L1 beta (Detectron's RETINANET.BBOX_REG_BETA); 0 is L1.", low=0)
    box_coder_weights = Key((1.0, 1.0, 1.0, 1.0), "(wx, wy, ww, wh) of the anchor deltas (RetinaNet: all 1).",
                            low=0, low_open=True, each=True, length=4)
    loss_normalizer = Key("batch", "'batch': divide by the foreground anchors of the whole batch (mean over "
                          "processes); 'per_image': each image by its own, then the mean over images (torchvision).",
                          choices=("batch", "per_image"))
    # Decoding (paper Sec. 5: 1000 top-scoring boxes per level above 0.05, NMS 0.5, 100 per image).
    score_thresh = 0.05
    topk_candidates = 1000
    nms_thresh = 0.5
    detections_per_img = 100

    _decisive_keys = BaseConfig._decisive_keys + (
        "anchor_octave_base", "anchor_scales_per_octave", "aspect_ratios", "anchor_offset", "location_steps",
        "anchor_int_sizes", "anchor_round_corners", "box_coder_weights")

    def rules_between_keys(self) -> list[str]:
        return iou_thresholds_rule(self)

    def build_model(self, num_classes: int):
        from retinanet.model import RetinaNet
        return RetinaNet(self, num_classes)

    def build_loss(self):
        from retinanet.loss import RetinaNetLoss
        return RetinaNetLoss(self)

    def build_decoder(self):
        from retinanet.decoder import RetinaNetDecoder
        return RetinaNetDecoder(self)

    def level_rule(self):
        from public.data.levels import anchor_rule
        from public.ops.anchors import FPN_STRIDES
        return anchor_rule(
            f"RetinaNet anchors (anchor_octave_base={self.anchor_octave_base}, anchor_scales_per_octave="
            f"{self.anchor_scales_per_octave}, aspect_ratios={tuple(self.aspect_ratios)}): a box goes to the level "
            f"of its best-IoU anchor; it fits poorly below fg_iou_thresh={self.fg_iou_thresh} with every anchor",
            "anchor_octave_base", [self.anchor_octave_base * s for s in FPN_STRIDES], self.anchor_scales_per_octave,
            self.aspect_ratios, poor_iou=self.fg_iou_thresh, iou_small=True)

    def convert_state_dict(self, state_dict, category_ids, class_names=None):
        from retinanet.convert import from_torchvision
        return from_torchvision(state_dict, category_ids, class_names)
