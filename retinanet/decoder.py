"""RetinaNet raw outputs -> detections per image, batched over images."""
from __future__ import annotations

import torch

from public.ops.box_coder import decode_deltas
from public.ops.boxes import clip_boxes
from public.ops.decoder import DenseDecoder


class RetinaNetDecoder(DenseDecoder):
    """outputs of ``RetinaNet`` + image_sizes [B, 2] (h, w before padding) -> per image
    {"boxes" [D, 4] xyxy input pixels, "scores" [D], "labels" [D] contiguous}.

    As the paper (Sec. 5) and torchvision: (anchor, class) pairs whose probability exceeds
    ``score_thresh``, the ``topk_candidates`` best per level, boxes decoded from their anchor
    and clipped to the image, class-wise NMS at ``nms_thresh``, ``detections_per_img`` kept.
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        self.box_coder_weights = tuple(float(w) for w in cfg.box_coder_weights)

    def candidates(self, outputs: dict, image_sizes: torch.Tensor):
        scores = outputs["cls_logits"].float().sigmoid()                    # [B, N, C]
        top_scores, anchor_idx, labels, valid, deltas = self.top_candidates(
            outputs, scores, scores > self.score_thresh)                    # [B, K] each, [B, K, 4]
        boxes = decode_deltas(outputs["anchors"][anchor_idx], deltas, self.box_coder_weights)  # [B, K, 4]
        boxes = clip_boxes(boxes, image_sizes)
        return boxes, top_scores, labels, valid
