"""ATSS raw outputs -> detections per image, batched over images."""
from __future__ import annotations

import torch

from public.ops.box_coder import decode_boxes
from public.ops.boxes import clip_boxes
from public.ops.decoder import DenseDecoder, centerness_scores


class ATSSDecoder(DenseDecoder):
    """outputs of ``ATSS`` + image_sizes int64 [B, 2] (h, w before padding) -> per image
    {"boxes" [D, 4] xyxy input pixels, "scores" [D], "labels" [D] contiguous}.

    The official ATSS inference (FCOS's): candidates are (anchor, class) pairs whose class
    probability exceeds ``score_thresh`` (0.05); they are ranked by
    sqrt(sigmoid(cls) * sigmoid(centerness)), the ``topk_candidates`` (1000) best per level
    are decoded (by ``regression_type``), clipped to the image and go to class-wise NMS
    (``nms_thresh`` 0.6); ``detections_per_img`` (100) remain.
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        self.regression_type = cfg.regression_type
        self.octave_base_scale = cfg.octave_base_scale

    def candidates(self, outputs: dict, image_sizes: torch.Tensor):
        scores, cls_prob = centerness_scores(outputs)                       # [B, N, C] each
        top_scores, locs, labels, valid, box_reg = self.top_candidates(
            outputs, scores, cls_prob > self.score_thresh)                  # [B, K] each, [B, K, 4]
        anchors = outputs["anchors"].float()[locs]                          # [B, K, 4]
        boxes = decode_boxes(anchors, box_reg, self.regression_type, self.octave_base_scale)  # [B, K, 4]
        boxes = clip_boxes(boxes, image_sizes)
        return boxes, top_scores, labels, valid
