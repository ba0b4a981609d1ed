"""CPU latency per image: PyTorch (model + decoder) against ONNX Runtime running the exported
graph (normalisation + model + decoder), on the same input, in one run.

    python bench/onnx_latency.py                                   # the three demo models, 1 x 512x512
    python bench/onnx_latency.py --configs fcos/config.py --size 800 1216 --repeats 5
    python bench/onnx_latency.py --configs fcos/config_demo.py --checkpoint work_dirs/fcos_demo/best.pth \
        --size 128 160 --overrides test_min_size=128

Each model is exported to a temporary file (random weights unless --checkpoint is given, with
the classifier shifted so that the decoder has candidates to rank and suppress), then the two
runtimes are timed alternately on the same batch with the same number of threads, and the
median of ``--repeats`` runs (after two warm-up runs each) is printed with the CPU's name.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import load_config  # noqa: E402
from public.data.prefetcher import normalize  # noqa: E402
from public.engine.runs.checkpoint import load_for_inference  # noqa: E402
from public.engine.export.exporter import export_onnx, require_onnx  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build(config: str, checkpoint: str | None, num_classes: int, overrides: list[str]):
    cfg = load_config(config, overrides)
    if checkpoint:
        loaded = load_for_inference(cfg, checkpoint)
        return cfg, loaded.model.eval()
    torch.manual_seed(0)
    model = cfg.resolve().build_model(num_classes).eval()
    with torch.no_grad():   # some candidates above the score threshold, so that top-k and NMS have work
        model.head.cls_logits.weight.normal_(0, 0.05)
        model.head.cls_logits.bias.fill_(-4.0)
    return cfg, model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+",
                        default=["fcos/config_demo.py", "atss/config_demo.py", "retinanet/config_demo.py"])
    parser.add_argument("--checkpoint", default=None, help="weights for the (single) config instead of random ones")
    parser.add_argument("--size", nargs=2, type=int, default=(512, 512), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--classes", type=int, default=80, help="class count of the random-weight models")
    parser.add_argument("--overrides", nargs="*", default=[], metavar="key=value", help="config overrides")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    require_onnx()
    import onnxruntime

    torch.set_num_threads(args.threads)
    height, width = args.size
    images = torch.randint(0, 256, (args.batch, 3, height, width)).float()
    image_sizes = torch.tensor([[height, width]] * args.batch)
    feed = {"images": images.numpy(), "image_sizes": image_sizes.numpy()}
    print(f"CPU: {cpu_name()}; {args.threads} threads for both; torch {torch.__version__}, onnxruntime "
          f"{onnxruntime.__version__}; batch {args.batch} x {height}x{width}; median of {args.repeats}")
    print("| config | PyTorch ms/image (network + decoder) | ONNX Runtime ms/image | ratio | detections/image |\n"
          "|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs:
            cfg, model = build(config, args.checkpoint, args.classes, args.overrides)
            decoder = cfg.build_decoder()
            path = Path(tmp) / "model.onnx"
            export_onnx(model, decoder, path, {})
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = args.threads
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

            times = {"network": [], "decoder": [], "torch": [], "onnx": []}
            for step in range(args.repeats + 2):
                # Alternate the runtimes, so that changes of the machine's load hit both alike.
                with torch.no_grad():
                    start = time.perf_counter()
                    outputs = model(normalize(images, image_sizes))
                    middle = time.perf_counter()
                    detections = decoder(outputs, image_sizes)
                    end = time.perf_counter()
                session.run(None, feed)
                onnx_end = time.perf_counter()
                if step >= 2:
                    for key, seconds in (("network", middle - start), ("decoder", end - middle),
                                         ("torch", end - start), ("onnx", onnx_end - end)):
                        times[key].append(seconds)
            ms = {k: 1000 * statistics.median(v) / args.batch for k, v in times.items()}
            kept = sum(len(d["scores"]) for d in detections) / args.batch
            print(f"| {config} | {ms['torch']:.1f} ({ms['network']:.1f} + {ms['decoder']:.1f}) | {ms['onnx']:.1f} | "
                  f"{ms['onnx'] / ms['torch']:.2f} | {kept:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
