"""The README documents every config key, and its test command is the one CI runs."""
import importlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_config_key_is_documented():
    readme = (REPO / "README.md").read_text()
    missing = []
    for module in ("fcos.config", "atss.config", "retinanet.config"):
        for key in importlib.import_module(module).Config.fields():
            if f"`{key}`" not in readme:
                missing.append(f"{module}.{key}")
    assert missing == []


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "python -m pytest" in readme.split("```")[1]
    assert ci.strip().splitlines()[-1] == "python -m pytest"
