"""RetinaNet defaults: the paper's 1x COCO recipe (Lin et al., "Focal Loss for Dense Object
Detection", ICCV 2017; Detectron's RetinaNet configs).

Copy this file (or subclass Config) to make an experiment; every field of BaseConfig can be
overridden here or as key=value on the command line. ``retinanet/convert.py`` lists the
values that reproduce torchvision's ``retinanet_resnet50_fpn`` (v1) and ``_v2``.

Run-dependent settings are resolved at the start of each run (public/engine/resolve.py) and
printed: ``lr`` is the lr at a total batch of 16 and is scaled to batch_size x processes;
warmup is at most a quarter of the run; lr steps are fractions of ``epochs``; from random
init (pretrained=False) every layer and BatchNorm trains. An explicit value always wins.
"""
from config import BaseConfig


class Config(BaseConfig):
    backbone = "resnet50"
    pretrained = True
    p6_from = "c5"                      # P6 from C5 (paper); torchvision v1: "p5", v2: "c5"
    head_norm = "auto"                  # plain towers (paper, torchvision v1) with trained weights, GN from scratch; v2: "GN"
    # Anchors (paper Sec. 4): sizes octave_base * stride * 2^(k / scales_per_octave) on P3-P7.
    anchor_octave_base: float = 4.0     # 4 x stride = 32..512 px on P3..P7
    anchor_scales_per_octave: int = 3   # sizes x (2^0, 2^(1/3), 2^(2/3))
    aspect_ratios: tuple = (0.5, 1.0, 2.0)  # height / width
    anchor_offset: float = 0.5          # centres at (x + offset) * stride; Detectron ~0.5, torchvision 0.0
    location_steps: str = "stride"      # spacing of a level's anchor centres: its stride, or "torchvision": padded size // cells
    anchor_int_sizes: bool = False      # truncate sizes to ints (torchvision: int(32 * 2 ** (1/3)) = 40)
    anchor_round_corners: bool = False  # round centred anchor corners to ints (torchvision's AnchorGenerator)
    # Assignment (paper Sec. 4: IoU >= 0.5 foreground, < 0.4 background, in between ignored).
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.4
    allow_low_quality_matches: bool = True  # each box also takes its best anchors below fg_iou_thresh (Detectron, torchvision)
    # Losses.
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    box_loss: str = "smooth_l1"         # "smooth_l1" (paper code), "l1" (torchvision v1), "giou" (torchvision v2)
    smooth_l1_beta: float = 0.11        # Detectron's RETINANET.BBOX_REG_BETA
    box_coder_weights: tuple = (1.0, 1.0, 1.0, 1.0)  # (wx, wy, ww, wh) of the anchor deltas (RetinaNet: all 1)
    loss_normalizer: str = "batch"      # "batch": / foreground anchors of the whole batch (mean over processes);
                                        # "per_image": each image / its own, then the mean over images (torchvision)
    # Decoding (paper Sec. 5: 1000 top-scoring boxes per level above 0.05, NMS 0.5, 100 per image).
    score_thresh = 0.05
    topk_candidates = 1000
    nms_thresh = 0.5
    detections_per_img = 100

    _decisive_keys = BaseConfig._decisive_keys + (
        "anchor_octave_base", "anchor_scales_per_octave", "aspect_ratios", "anchor_offset", "location_steps",
        "anchor_int_sizes", "anchor_round_corners", "box_coder_weights")

    def build_model(self, num_classes: int):
        from retinanet.model import RetinaNet
        return RetinaNet(self, num_classes)

    def build_loss(self):
        from retinanet.loss import RetinaNetLoss
        return RetinaNetLoss(self)

    def build_decoder(self):
        from retinanet.decoder import RetinaNetDecoder
        return RetinaNetDecoder(self)

    def convert_state_dict(self, state_dict, category_ids, class_names=None):
        from retinanet.convert import from_torchvision
        return from_torchvision(state_dict, category_ids, class_names)
