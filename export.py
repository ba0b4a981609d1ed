"""Export a trained detector to ONNX, checked against PyTorch with ONNX Runtime.

    python export.py --checkpoint work_dirs/fcos/best.pth --out fcos.onnx
    python export.py --checkpoint CKPT --out atss_raw.onnx --raw       # head outputs only
    python export.py --checkpoint CKPT score_thresh=0.3 detections_per_img=50

The config is the checkpoint's run (its model and stored config, key=value overrides on
top); --config FILE takes the file instead (needed for a torchvision state dict), with the
run's evaluation sizes.

The graph takes float32 RGB pixels 0-255 [B, 3, H, W] (each image resized as the config's
evaluation does, at the top left, padded at the bottom/right to a multiple of
size_divisible) and int64 image_sizes [B, 2] (h, w before padding); batch, height and width
are dynamic. It normalises, runs the network and decodes (score threshold, top-k per level,
class-wise NMS) into fixed-size outputs: boxes [B, D, 4], scores [B, D], labels [B, D]
(-1 in unused slots) and num_detections [B], D = detections_per_img. --raw stops after the
network. The decoder settings (score_thresh, topk_candidates, nms_thresh,
detections_per_img) are the config's, key=value overrides included, and are fixed in the file;
the metadata also holds the classes and the run's whole config.

After writing, the file is run with ONNX Runtime next to the PyTorch model on random pixels
at two sizes (batch 2) and the largest differences are printed. Run the file with
``python test.py --checkpoint model.onnx`` (evaluation or --images / --video).
Needs onnx and onnxruntime (pip install -r requirements-dev.txt); training does not.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from public.engine.command import parse_command_line, run_command
from public.engine.runs.stored import load_run_config

# Largest differences accepted by the check after export (the parity tests measure them on
# small models: about 1e-4 px and 1e-6 in score; larger networks accumulate more float error).
BOX_TOLERANCE_PX = 1e-2
SCORE_TOLERANCE = 1e-4

logger = logging.getLogger("densedet")


def parse_args(argv=None):
    def options(parser):
        parser.add_argument("--checkpoint", required=True, help="densedet checkpoint (or a torchvision state dict)")
        parser.add_argument("--out", default="", help="the .onnx file to write (default: the checkpoint's name, .onnx)")
        parser.add_argument("--raw", action="store_true", help="export the head outputs only, without the decoder")
        parser.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    return parse_command_line(__doc__, options, argv, config_default=None,
                              config_help="(default: the checkpoint's run; needed for a torchvision state dict)")


def check_sizes(cfg) -> list[tuple[int, int]]:
    """Two input sizes near the config's evaluation size, multiples of size_divisible."""
    side, step = int(cfg.test_min_size), int(cfg.size_divisible)
    def fit(x):
        return max(step, int(round(x / step)) * step)
    return [(fit(side), fit(min(side * 1.25, cfg.max_size))), (fit(side * 0.75), fit(side))]


def export(cfg, args) -> int:
    """Export the checkpoint of ``args`` with ``cfg``'s model and decoder, then check the file."""
    import torch

    from public.engine.evaluate.tester import dataset_categories
    from public.engine.export.exporter import compare_with_pytorch, export_metadata, export_onnx
    from public.engine.runs.checkpoint import is_densedet, load_checkpoint, load_for_inference
    from public.engine.runs.identity import model_type
    from public.engine.watch.logger import setup_logging

    setup_logging(None, True)
    out = Path(args.out or Path(args.checkpoint).with_suffix(".onnx"))
    if out.suffix.lower() != ".onnx":
        raise ValueError(f"--out {out} must end in .onnx (test.py recognises exported models by it)")
    checkpoint = load_checkpoint(args.checkpoint)
    category_ids, class_names = (None, None) if is_densedet(checkpoint) else dataset_categories(cfg)
    loaded = load_for_inference(cfg, args.checkpoint, category_ids, class_names, checkpoint)
    cfg = loaded.cfg   # the run spec
    model, decoder = loaded.model.cpu().eval(), cfg.build_decoder()
    metadata = export_metadata(cfg, type(model).__name__, loaded.class_names, loaded.category_ids, args.raw,
                               loaded.score_thresholds, args.checkpoint, model_type(cfg))
    names = export_onnx(model, decoder, out, metadata, raw=args.raw)
    logger.info("wrote %s (%s, %d classes; outputs %s; dynamic batch, height, width; opset %d)", out,
                type(model).__name__, len(loaded.class_names), ", ".join(names), metadata["opset"])
    if args.no_check:
        return 0
    torch.manual_seed(0)
    failed = False
    for height, width in check_sizes(cfg):
        images = torch.randint(0, 256, (2, 3, height, width)).float()
        image_sizes = torch.tensor([[height, width], [height - height // 4, width - width // 8]])
        report = compare_with_pytorch(model, decoder, out, images, image_sizes, raw=args.raw)
        logger.info("check at 2 x %dx%d (random pixels), ONNX Runtime vs PyTorch: %s", height, width,
                    ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in report.items()))
        if not args.raw:
            failed |= bool(report["count_mismatch"] or report["unmatched"] or report["box"] > BOX_TOLERANCE_PX
                           or report["score"] > SCORE_TOLERANCE)
    if failed:
        logger.warning("%s differs from the PyTorch model beyond %.0e px / %.0e in score: a box on the edge of "
                       "the score threshold or of NMS can flip; check with python test.py --checkpoint %s on "
                       "your val set", out, BOX_TOLERANCE_PX, SCORE_TOLERANCE, out)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    from public.engine.export.exporter import require_onnx
    try:
        require_onnx()
    except ImportError as error:  # a missing optional dependency: told like a bad command line
        print(f"error: {error}", file=sys.stderr)
        return 2
    return run_command(lambda: load_run_config(args.checkpoint, args.config, args.overrides),
                       lambda cfg: export(cfg, args))


if __name__ == "__main__":
    sys.exit(main())
