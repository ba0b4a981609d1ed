"""ATSS raw outputs -> detections per image, batched over images."""
from __future__ import annotations

import torch
from torch import nn

from atss.loss import decode_boxes
from public.ops.boxes import clip_boxes
from public.ops.postprocess import nms_per_image, topk_per_level
from public.ops.settings import check_decoding


class ATSSDecoder(nn.Module):
    """outputs of ``ATSS`` + image_sizes int64 [B, 2] (h, w before padding) -> per image
    {"boxes" [D, 4] xyxy input pixels, "scores" [D], "labels" [D] contiguous}.

    The official ATSS inference (FCOS's): candidates are (anchor, class) pairs whose class
    probability exceeds ``score_thresh`` (0.05); they are ranked by
    sqrt(sigmoid(cls) * sigmoid(centerness)), the ``topk_candidates`` (1000) best per level
    are decoded (by ``regression_type``), clipped to the image and go to class-wise NMS
    (``nms_thresh`` 0.6); ``detections_per_img`` (100) remain.
    """

    def __init__(self, cfg):
        super().__init__()
        check_decoding(cfg)
        self.score_thresh = cfg.score_thresh
        self.topk = cfg.topk_candidates
        self.nms_thresh = cfg.nms_thresh
        self.max_det = cfg.detections_per_img
        self.regression_type = cfg.regression_type
        self.octave_base_scale = cfg.octave_base_scale

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
        top_scores, locs, labels, valid = topk_per_level(scores, cls_prob > self.score_thresh,
                                                         outputs["num_per_level"], self.topk)  # [B, K] each
        box_reg = outputs["box_reg"].float().gather(1, locs[..., None].expand(-1, -1, 4))  # [B, K, 4]
        anchors = outputs["anchors"].float()[locs]                          # [B, K, 4]
        boxes = decode_boxes(anchors, box_reg, self.regression_type, self.octave_base_scale)  # [B, K, 4]
        boxes = clip_boxes(boxes, image_sizes)
        return boxes, top_scores, labels, valid
