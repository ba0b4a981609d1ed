"""FCOS raw outputs -> detections per image, batched over images."""
from __future__ import annotations

import torch

from public.ops.boxes import clip_boxes, decode_distances
from public.ops.decoder import DenseDecoder, centerness_scores


class FCOSDecoder(DenseDecoder):
    """outputs of ``FCOS`` + image_sizes [B, 2] (h, w before padding) -> per image
    {"boxes" [D, 4] xyxy input pixels, "scores" [D], "labels" [D] contiguous}.

    Score of a (location, class) = sqrt(sigmoid(cls) * sigmoid(centerness)). Candidates are
    pairs whose score (``score_thresh_on="combined"``, torchvision) or class probability
    (``"cls"``, the FCOS code's pre-NMS threshold) exceeds ``score_thresh``; the
    ``topk_candidates`` best per level go to class-wise NMS; ``detections_per_img`` remain.
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        self.score_thresh_on, self.norm_reg_targets = cfg.score_thresh_on, cfg.norm_reg_targets

    def candidates(self, outputs: dict, image_sizes: torch.Tensor):
        scores, cls_prob = centerness_scores(outputs)                       # [B, N, C] each
        passed = (scores if self.score_thresh_on == "combined" else cls_prob) > self.score_thresh
        top_scores, locs, labels, valid, distances = self.top_candidates(outputs, scores, passed)  # [B, K], [B, K, 4]
        if self.norm_reg_targets:
            distances = distances * outputs["strides"][locs][..., None]
        boxes = clip_boxes(decode_distances(outputs["points"][locs], distances), image_sizes)  # [B, K, 4]
        return boxes, top_scores, labels, valid
