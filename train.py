"""Train a detector, or score a checkpoint.

    python train.py                                    # FCOS on the built-in demo data (CPU is fine)
    python train.py --config fcos/config.py train_images=DIR train_annotations=FILE \
        val_images=DIR val_annotations=FILE epochs=12  # your COCO-format data
    torchrun --nproc_per_node=8 train.py --config fcos/config.py ...   # DDP, one process per GPU
    python train.py --evaluate work_dirs/fcos/best.pth  # the checkpoint's run: its config and val data

Any config field can be overridden as key=value (Python literals; bare words are strings),
before or after the options. Bad input or settings stop with one "error:" line (also written
to work_dir/train.log, with the traceback); a traceback on the console means a bug.
"""
from __future__ import annotations

import sys

from config import load_config
from public.engine.command import DEFAULT_CONFIG, parse_command_line, run_command
from public.engine.runs.stored import load_run_config


def parse_args(argv=None):
    def options(parser):
        parser.add_argument("--evaluate", metavar="CKPT", default="",
                            help="score this checkpoint (ours or a torchvision state dict) on its run's validation set "
                                 "and exit; without --config the config is the checkpoint's run")
    return parse_command_line(__doc__, options, argv, config_default=None,
                              config_help="(default fcos/config_demo.py; with --evaluate, the checkpoint's run)")


def main(argv=None) -> int:
    args = parse_args(argv)

    def job(cfg):
        if args.evaluate:
            from public.engine.evaluate.tester import evaluate_checkpoint
            evaluate_checkpoint(cfg, args.evaluate)
        else:
            from public.engine.train.loop import train
            train(cfg)
    def how_to_resume(cfg) -> str:
        if args.evaluate:
            return "nothing was written"
        return (f"{cfg.work_dir}/latest.pth holds the last finished epoch; run the same command with resume=auto "
                f"to continue from it")
    def config():
        if args.evaluate:
            return load_run_config(args.evaluate, args.config, args.overrides)
        return load_config(args.config or DEFAULT_CONFIG, args.overrides)
    return run_command(config, job, how_to_resume)


if __name__ == "__main__":
    sys.exit(main())
