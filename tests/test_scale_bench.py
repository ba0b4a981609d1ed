"""bench/scale.py end to end at a small size: every figure printed, the two evaluation backends
give equal stats, the dataset's memory is small and the workers' does not grow."""
import pytest


@pytest.mark.slow
def test_scale_bench_small(tmp_path, capsys):
    from bench.scale import main

    figures = main(["--images", "300", "--boxes", "2100", "--val-images", "30", "--batches", "30", "--distinct", "2",
                    "--decode-sample", "300", "--root", str(tmp_path / "scale")])
    out = capsys.readouterr().out
    for line in ("check_images=off", "check_images=header", "check_images=decode", "the dataset's own",
                 "after 10 batches", "faster_coco_eval", "gather of the detections"):
        assert line in out, line
    assert figures["stats_equal"]
    assert set(figures["build"]) == {"off", "header", "decode"}
    memory = figures["memory"]
    assert memory["images"] == 300 and memory["boxes"] == 2100
    assert memory["dataset"]["uss"] - memory["baseline"]["uss"] < 64            # MiB, for 300 images
    workers = memory["workers"]
    assert workers["30"]["uss"] < workers["10"]["uss"] * 1.05 + 4               # no growth beyond noise
