"""Evaluate a checkpoint, or detect objects in images or a video.

Evaluate on the config's validation set (sharded over processes under torchrun): prints
COCO's 12 stats, per-class AP (weakest first), per-class score thresholds that maximise the
F-measure at IoU 0.5, and the inference time; writes work_dir/detections.json (COCO results),
work_dir/thresholds.json and work_dir/pr_curves/*.png.

    python test.py --config fcos/config.py --checkpoint work_dirs/fcos/best.pth
    python test.py --config fcos/config.py --checkpoint CKPT --tta        # multi-scale + flip, box voting
    python test.py --config fcos/config.py --checkpoint CKPT --save-thresholds   # store them in CKPT
    torchrun --nproc_per_node=8 test.py --config fcos/config.py --checkpoint CKPT

Detect: annotated copies (or an annotated .mp4) and one detections.json in --out. Per-class
thresholds come from the checkpoint (--save-thresholds) unless --score-thresh is given;
without either, 0.3.

    python test.py --config fcos/config.py --checkpoint CKPT --images photo.jpg|folder|'dir/*.jpg' --out DIR
    python test.py --config fcos/config.py --checkpoint CKPT --video clip.mp4 --out DIR

Checkpoints: densedet's, torchvision's FCOS / RetinaNet state dicts (with the matching
config), or a model exported by export.py (.onnx, run with ONNX Runtime). Any config field can be overridden as key=value, e.g. tta_scales=(128,160,192).
"""
from __future__ import annotations

import sys

from config import load_config
from public.engine.command import parse_command_line, run_command


def parse_args(argv=None):
    def options(parser):
        parser.add_argument("--checkpoint", required=True,
                            help="densedet checkpoint, torchvision state dict, or exported .onnx")
        parser.add_argument("--tta", action="store_true", help="test-time augmentation (config fields tta_*)")
        parser.add_argument("--save-thresholds", action="store_true",
                            help="evaluation: store the per-class F-measure thresholds in the checkpoint")
        source = parser.add_mutually_exclusive_group()
        source.add_argument("--images", metavar="PATH", help="detect in an image, a folder of images or a glob")
        source.add_argument("--video", metavar="FILE", help="detect in every frame of a video")
        parser.add_argument("--out", metavar="DIR", default="",
                            help="detection output folder (default WORK_DIR/detect)")
        parser.add_argument("--save-txt", action="store_true",
                            help="detection: also write OUT/labels/<image>.txt, one 'label cx cy w h score' line per "
                                 "box (fractions of the image size, as Ultralytics)")
        parser.add_argument("--score-thresh", type=float, default=None,
                            help="detection: one threshold for every class (default: the checkpoint's, else 0.3)")
    return parse_command_line(__doc__, options, argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def job(cfg):
        from public.engine.evaluate.tester import detect_images, detect_video, evaluate_report
        out = args.out or f"{cfg.work_dir}/detect"
        if args.images:
            detect_images(cfg, args.checkpoint, args.images, out, args.score_thresh, args.tta, args.save_txt)
        elif args.video:
            detect_video(cfg, args.checkpoint, args.video, out, args.score_thresh, args.tta)
        else:
            evaluate_report(cfg, args.checkpoint, args.tta, args.save_thresholds)
    return run_command(lambda: load_config(args.config, args.overrides), job)


if __name__ == "__main__":
    sys.exit(main())
