"""FCOS raw outputs -> detections per image, batched over images."""
from __future__ import annotations

import torch
from torch import nn

from public.ops.boxes import clip_boxes, decode_distances
from public.ops.postprocess import nms_per_image, topk_per_level
from public.ops.settings import check_decoding


class FCOSDecoder(nn.Module):
    """outputs of ``FCOS`` + image_sizes [B, 2] (h, w before padding) -> per image
    {"boxes" [D, 4] xyxy input pixels, "scores" [D], "labels" [D] contiguous}.

    Score of a (location, class) = sqrt(sigmoid(cls) * sigmoid(centerness)). Candidates are
    pairs whose score (``score_thresh_on="combined"``, torchvision) or class probability
    (``"cls"``, the FCOS code's pre-NMS threshold) exceeds ``score_thresh``; the
    ``topk_candidates`` best per level go to class-wise NMS; ``detections_per_img`` remain.
    """

    def __init__(self, cfg):
        super().__init__()
        check_decoding(cfg)
        self.score_thresh = cfg.score_thresh
        self.score_thresh_on = cfg.score_thresh_on
        self.topk = cfg.topk_candidates
        self.nms_thresh = cfg.nms_thresh
        self.max_det = cfg.detections_per_img
        self.norm_reg_targets = cfg.norm_reg_targets
        if self.score_thresh_on not in ("combined", "cls"):
            raise ValueError(f"score_thresh_on must be 'combined' or 'cls', got {self.score_thresh_on!r}")

    @torch.no_grad()
    def forward(self, outputs: dict, image_sizes: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        boxes, scores, labels, valid = self.candidates(outputs, image_sizes)
        return nms_per_image(boxes, scores, labels, valid, outputs["cls_logits"].shape[-1], self.nms_thresh,
                             self.max_det)

    def candidates(self, outputs: dict, image_sizes: torch.Tensor):
        """The top-k candidates before NMS (also what the ONNX export decodes in its graph):
        boxes [B, K, 4] clipped xyxy, scores [B, K], labels [B, K], valid bool [B, K]."""
        cls_prob = outputs["cls_logits"].float().sigmoid()                  # [B, N, C]
        ctr_prob = outputs["centerness"].float().sigmoid()                  # [B, N]
        scores = torch.sqrt(cls_prob * ctr_prob[..., None])                 # [B, N, C]
        candidates = (scores if self.score_thresh_on == "combined" else cls_prob) > self.score_thresh
        top_scores, locs, labels, valid = topk_per_level(scores, candidates, outputs["num_per_level"], self.topk)

        box_reg = outputs["box_reg"].float()
        distances = box_reg.gather(1, locs[..., None].expand(-1, -1, 4))    # [B, K, 4]
        if self.norm_reg_targets:
            distances = distances * outputs["strides"][locs][..., None]
        boxes = clip_boxes(decode_distances(outputs["points"][locs], distances), image_sizes)  # [B, K, 4]
        return boxes, top_scores, labels, valid
