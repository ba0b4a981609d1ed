"""Config: defaults, key=value overrides, type checks, unknown keys."""
import pytest

from config import BaseConfig, load_config
from fcos.config import Config


def test_overrides_parse_and_type_check():
    cfg = Config()
    cfg.apply_overrides(["lr=0.005", "epochs=3", "backbone=resnet18", "pretrained=False",
                         "min_size=(640, 800)", "amp=True", "weight_decay=0"])
    assert cfg.lr == 0.005 and cfg.epochs == 3 and cfg.backbone == "resnet18"
    assert cfg.pretrained is False and cfg.amp is True
    assert cfg.min_size == (640, 800)
    assert cfg.weight_decay == 0.0 and isinstance(cfg.weight_decay, float)  # int accepted for a float
    cfg.apply_overrides(["min_size=512"])
    assert cfg.min_size == (512,)                                          # scalar accepted for a tuple
    # The class defaults are untouched: overrides live on the instance.
    assert Config.lr == 0.01 and Config().epochs == 12


@pytest.mark.parametrize("item, message", [
    ("epochs=1.5", "config key 'epochs' expects int"),
    ("pretrained=1", "config key 'pretrained' expects bool"),
    ("lr=fast", "config key 'lr' expects float"),
])
def test_wrong_type_names_the_key(item, message):
    with pytest.raises(TypeError, match=message):
        Config().apply_overrides([item])


def test_unknown_key_suggests_close_matches():
    with pytest.raises(KeyError, match="unknown config key 'learning_rat'") as info:
        Config().apply_overrides(["learning_rat=0.1"])
    with pytest.raises(KeyError) as info:
        Config().apply_overrides(["eval_intervall=2"])
    assert "did you mean eval_interval" in str(info.value)


def test_stable_command_line_names_exist():
    names = ("train_images train_annotations val_images val_annotations backbone pretrained min_size max_size "
             "epochs batch_size lr optimizer weight_decay eval_interval work_dir num_workers amp seed device").split()
    fields = BaseConfig.fields()
    assert [n for n in names if n not in fields] == []


def test_load_config_from_path_and_work_dir(tmp_path):
    cfg = load_config("fcos/config_demo.py", ["epochs=2"])
    assert type(cfg).__module__ == "fcos.config_demo" and cfg.epochs == 2
    assert cfg.work_dir.replace("\\", "/") == "work_dirs/fcos_demo"
    # A user's copy outside the repository, subclassing a model config.
    user = tmp_path / "my_fcos.py"
    user.write_text("from fcos.config import Config as Base\n\nclass Config(Base):\n    epochs = 7\n")
    cfg = load_config(user)
    assert cfg.epochs == 7 and cfg.work_dir.replace("\\", "/") == "work_dirs/my_fcos"
    assert cfg.to_dict()["center_sampling_radius"] == 1.5


def test_data_key_selects_a_builtin_dataset():
    """data=crowns puts the four paths on the built-in crowns dataset; a path given as well is an
    error naming it, whichever comes first on the command line."""
    from public.data.crowns import crowns_paths

    cfg = load_config("fcos/config.py", ["data=crowns"])
    assert {k: getattr(cfg, k) for k in crowns_paths()} == crowns_paths()
    for overrides in (["data=crowns", "val_images=/x"], ["val_images=/x", "data=crowns"]):
        with pytest.raises(ValueError, match="data='crowns' sets the data paths, and val_images is given too"):
            load_config("fcos/config.py", overrides)
