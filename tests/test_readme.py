"""The configuration reference is what the code declares, and the README's test command is the one CI runs."""
from pathlib import Path

from config import BaseConfig
from tools import config_reference

REPO = Path(__file__).resolve().parents[1]


def test_config_reference_is_generated_from_the_code():
    """docs/config.md equals what tools/config_reference.py writes (run it after changing a key)."""
    checked_in = (REPO / "docs" / "config.md").read_text()
    assert checked_in == config_reference.reference(), "docs/config.md is stale: python -m tools.config_reference"


def test_reference_rows_hold_the_declared_defaults():
    text = config_reference.reference()
    assert "| `min_size` | `(800,)` |" in text                 # ATSS changes no shared size: it uses (800,)
    assert "| `nms_thresh` | `0.6` |" in text and "`nms_thresh=0.5`" in text   # RetinaNet's own default
    assert "| `train_images` | `'data/demo/train'` |" in text  # repository paths relative to its root
    for name, key in BaseConfig.keys().items():
        assert f"| `{name}` |" in text and key.doc in text


def test_every_key_has_a_meaning():
    import importlib
    for module in ("fcos.config", "atss.config", "retinanet.config"):
        keys = importlib.import_module(module).Config.keys()
        assert [name for name, key in keys.items() if len(key.doc) < 10] == []


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "python -m pytest" in readme.split("```")[1]
    assert ci.strip().splitlines()[-1] == "python -m pytest"
