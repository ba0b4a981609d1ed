"""Evaluate a checkpoint, or detect objects in images or a video.

The checkpoint carries its run: without --config, the config is the checkpoint's (its model
and stored config), evaluated on its run's validation data at its sizes; key=value overrides
go on top. --config FILE takes the file instead (needed for a torchvision state dict), still
with the run's val data and eval sizes unless given as key=value.

Evaluate (sharded over processes under torchrun): prints COCO's 12 stats, per-class AP
(weakest first), per-class score thresholds that maximise the F-measure at IoU 0.5, and the
inference time; writes detections.json (COCO results), thresholds.json and pr_curves/*.png
into eval/ beside the checkpoint (eval_2, eval_3... when taken), or --out.

    python test.py --checkpoint work_dirs/fcos/best.pth
    python test.py --checkpoint CKPT --tta                       # multi-scale + flip, box voting
    python test.py --checkpoint CKPT --save-thresholds           # store them in CKPT
    python test.py --checkpoint CKPT val_images=DIR val_annotations=FILE score_thresh=0.3
    torchrun --nproc_per_node=8 test.py --checkpoint CKPT

Detect: annotated copies (or an annotated .mp4) and one detections.json in detect/ beside
the checkpoint (detect_2... when taken), or --out. Per-class thresholds come from the
checkpoint (--save-thresholds) unless --score-thresh is given; without either, 0.3.

    python test.py --checkpoint CKPT --images photo.jpg|folder|'dir/*.jpg'
    python test.py --checkpoint CKPT --video clip.mp4 --out DIR

Checkpoints: densedet's, torchvision's FCOS / RetinaNet state dicts (with --config), or a
model exported by export.py (.onnx, run with ONNX Runtime). Any config field can be
overridden as key=value, e.g. tta_scales=(128,160,192).
"""
from __future__ import annotations

import sys
from pathlib import Path

from public.engine.command import parse_command_line, run_command
from public.engine.runs.stored import load_run_config


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
                            help="output folder (default: eval/ or detect/ beside the checkpoint, numbered when taken)")
        parser.add_argument("--save-txt", action="store_true",
                            help="detection: also write OUT/labels/<image>.txt, one 'label cx cy w h score' line per "
                                 "box (fractions of the image size, as Ultralytics)")
        parser.add_argument("--score-thresh", type=float, default=None,
                            help="detection: one threshold for every class (default: the checkpoint's, else 0.3)")
    return parse_command_line(__doc__, options, argv, config_default=None,
                              config_help="(default: the checkpoint's run; needed for a torchvision state dict)")


def main(argv=None) -> int:
    args = parse_args(argv)

    def job(cfg):
        from public.engine.evaluate.tester import detect_images, detect_video, evaluate_report, free_output_dir
        beside = Path(args.checkpoint).resolve().parent
        if args.images or args.video:
            out = args.out or free_output_dir(beside, "detect")
            if args.images:
                detect_images(cfg, args.checkpoint, args.images, str(out), args.score_thresh, args.tta, args.save_txt)
            else:
                detect_video(cfg, args.checkpoint, args.video, str(out), args.score_thresh, args.tta)
        else:
            out = args.out or free_output_dir(beside, "eval")
            evaluate_report(cfg, args.checkpoint, args.tta, args.save_thresholds, out)
    return run_command(lambda: load_run_config(args.checkpoint, args.config, args.overrides), job)


if __name__ == "__main__":
    sys.exit(main())
