"""The config language: ``Key`` (one key's declaration), ``KeyedConfig`` (what every config
class can do: defaults, ``key=value`` overrides checked against the declarations, where each
value came from, and the one resolution of "auto" into a frozen run spec) and ``load_config``
(a config file and its overrides).

The keys themselves are declared in the repository's ``config.py`` (``BaseConfig``) and in each
model's ``<model>/config.py``; this module knows none of them.

The run spec. ``cfg.resolve(run, values, sources)`` returns a copy of the config in which every
key is concrete and frozen: ``values`` are what the caller derived from the run (the training
resolution in ``public/engine/train/resolve.py``: the lr scaled to the batch, the warmup capped
to the run...), then every key still "auto" takes the value of its declared rule
(``Key(auto=...)``), or, for a key that decides the model's structure, the value stored in the
checkpoint the run starts from (``RunFacts.stored``). ``spec.source(key)`` says where each value
came from: "default", the config class that sets it, "command line", "checkpoint ...", "auto", or the reason
the caller gave. Writing into a spec raises ``FrozenConfigError``: what a function sees does not
depend on when it runs.
"""
from __future__ import annotations

import ast
import copy
import difflib
import importlib
import importlib.util
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parents[1]


class FrozenConfigError(AttributeError):
    """A write into a run spec (a resolved config): settings are decided once, at the start."""


@dataclass(frozen=True)
class RunFacts:
    """What the "auto" rules may follow besides the config's own keys.

    Attributes:
        total_iters: the run's training iterations (None: no training, e.g. an evaluation).
        stored: the config of the checkpoint the run starts from (resume, init_from, the checkpoint
            evaluated) or the settings a converted foreign checkpoint implies; a structure key left
            "auto" takes its value from here, so that the model built fits the weights it loads.
        stored_source: how the sources name it, e.g. "checkpoint work_dirs/fcos/latest.pth".
    """
    total_iters: int | None = None
    stored: dict = field(default_factory=dict)
    stored_source: str = "checkpoint"


def is_auto(value: Any) -> bool:
    return isinstance(value, str) and value == "auto"


class Key:
    """The declaration of one config key: default, meaning, type and allowed values.

    Args:
        default: the value when nothing overrides it (its type is the key's, unless ``kind``).
        doc: what the key means, one or two sentences (the configuration reference prints it).
        kind: the type of explicit values, where the default is "auto".
        choices: the allowed values, if a fixed set.
        low, high, low_open, high_open: a number's range (closed unless ``*_open``).
        integer: the number must be whole.
        each: a check of every element of a tuple (``low``/``high``/``integer`` apply to them),
            which must then hold at least one.
        length: a tuple's required length.
        auto: what "auto" means: a rule ``(cfg, run: RunFacts) -> value`` that ``resolve``
            applies; "auto" is allowed only where this is given.
        check: a further rule: a function of the value returning what is wrong, or None.
    """

    def __init__(self, default: Any, doc: str, *, kind: type | None = None, choices: tuple = (),
                 low: float | None = None, high: float | None = None, low_open: bool = False,
                 high_open: bool = False, integer: bool = False, each: bool = False, length: int | None = None,
                 auto: Callable[[Any, "RunFacts"], Any] | None = None, check: Callable[[Any], str | None] | None = None):
        self.default, self.doc = default, " ".join(doc.split())
        self.kind = kind or type(default)
        self.choices, self.low, self.high, self.low_open, self.high_open = choices, low, high, low_open, high_open
        self.integer, self.each, self.length, self.auto, self.check = integer, each, length, auto, check

    def __get__(self, obj, owner=None):
        return self.default  # the class attribute reads as the plain default

    # ---- checking -------------------------------------------------------------------------------
    def coerce(self, name: str, value: Any) -> Any:
        """``value`` converted to the key's type (int -> float, scalar -> 1-tuple, list -> tuple);
        TypeError naming the key otherwise."""
        if self.auto is not None and is_auto(value):
            return value
        kind = self.kind
        if kind is bool:
            if isinstance(value, bool):
                return value
        elif kind is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif kind is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif kind is tuple:
            if isinstance(value, (list, tuple)):
                return tuple(value)
            if isinstance(value, (int, float, str)) and not isinstance(value, bool):
                return (value,)
        elif isinstance(value, kind):
            return value
        also = " or 'auto'" if self.auto is not None else ""
        raise TypeError(f"config key '{name}' expects {kind.__name__}{also} (default {self.default!r}), "
                        f"got {type(value).__name__} {value!r}")

    def problem(self, name: str, value: Any) -> str | None:
        """What is wrong with ``value`` for this key ("name=value must be ..."), or None."""
        if self.auto is not None and is_auto(value):
            return None
        if self.choices and value not in self.choices:
            return f"{name}={value!r} must be one of {', '.join(map(repr, self.choices))}"
        if self.length is not None and len(value) != self.length:
            return f"{name}={value!r} must hold {self.length} values"
        if self.each:
            numbers_ok = len(value) > 0 and all(self._number_ok(v) for v in value)
            if not numbers_ok:
                return f"{name}={value!r} must be a non-empty tuple of {self._range_words()}, e.g. {name}={(self.default[0],) if self.default else ()!r}"
        elif self.low is not None or self.high is not None or self.integer:
            if not self._number_ok(value):
                return f"{name}={value!r} must be {self._range_words()}"
        return self.check(value) if self.check is not None else None

    def _number_ok(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.integer and value != int(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def _range_words(self) -> str:
        """e.g. "an integer >= 1", "a number > 0 and <= 1"."""
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high}")
        many = self.each
        kind = ("integers" if many else "an integer") if self.integer else ("numbers" if many else "a number")
        return f"{kind} {' and '.join(parts)}".strip()

    def allowed(self) -> str:
        """The allowed values in words, for the configuration reference ("" when any of the type)."""
        if self.choices:
            words = ", ".join(map(repr, self.choices))
        elif self.each:
            words = f"tuple of {self._range_words()}"
        elif self.low is not None or self.high is not None or self.integer:
            words = self._range_words()
        else:
            words = ""
        if self.length is not None:
            words = (words + "; " if words else "") + f"{self.length} values"
        if self.auto is not None and "'auto'" not in words:
            words = (words + " or " if words else "") + "'auto'"
        return words



class KeyedConfig:
    """What every config class can do with its declared keys (``Key`` class attributes).

    ``Config(**values)`` holds the class defaults with ``values`` applied; ``set`` checks a value
    against its declaration; ``check`` every value and the rules between keys
    (``rules_between_keys``); ``resolve`` makes the frozen run spec.
    """
    _decisive_keys: tuple = ()   # keys a checkpoint must share with the config that loads it

    def __init__(self, **overrides: Any) -> None:
        object.__setattr__(self, "_sources", {})
        for key, default in self.fields().items():
            setattr(self, key, default)
        for key, value in overrides.items():
            self.set(key, value, "given")
        self.check()

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_frozen", False):
            raise FrozenConfigError(f"cannot set {name}={value!r}: the run spec is resolved once, at the start of the "
                                    f"run (set it in the config file or as {name}=... on the command line)")
        object.__setattr__(self, name, value)

    @classmethod
    def keys(cls) -> dict[str, Key]:
        """Every key's declaration, base class first, in declaration order."""
        out: dict[str, Key] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if isinstance(value, Key):
                    out.setdefault(name, value)
        return out

    @classmethod
    def fields(cls) -> dict[str, Any]:
        """Every key with this class's default, base class first, in declaration order.

        A plain class attribute sets the default of a declared key; one that declares nothing
        is an error naming it (a typo would otherwise be a silent no-op)."""
        keys = cls.keys()
        out = {name: key.default for name, key in keys.items()}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if name.startswith("_") or isinstance(value, Key) or callable(value) \
                        or isinstance(value, (classmethod, staticmethod, property)):
                    continue
                if name not in keys:
                    close = difflib.get_close_matches(name, list(keys), n=3)
                    hint = f"; did you mean {', '.join(close)}?" if close else ""
                    raise TypeError(f"{klass.__name__}.{name} is not a config key{hint} (declare a new key as "
                                    f"{name} = Key(default, \"what it means\"), or start the name with _)")
                out[name] = keys[name].coerce(name, value)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.fields()}

    def changed(self) -> dict[str, Any]:
        """The keys whose value differs from this config class's default (the command's overrides
        and, in a run spec, the values resolved at its start)."""
        return {key: value for key, value in self.to_dict().items() if value != self.fields()[key]}

    def set(self, key: str, value: Any, source: str = "") -> None:
        """Set ``key`` after checking its type and allowed values (cross-key rules: ``check``);
        ``source`` says where the value comes from (``source(key)``)."""
        keys = self.keys()
        if key not in keys:
            close = difflib.get_close_matches(key, list(keys), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"unknown config key '{key}'{hint}")
        value = keys[key].coerce(key, value)
        problem = keys[key].problem(key, value)
        if problem:
            raise ValueError(f"bad config value: {problem}")
        setattr(self, key, value)
        if source:
            self._sources[key] = source
        self.after_set(key, value)

    def after_set(self, key: str, value: Any) -> None:
        """What setting ``key`` implies for other keys (a subclass's rule); nothing here."""

    def check(self) -> None:
        """Raise one ValueError listing every value out of its key's range or choices, and every
        broken rule between keys."""
        problems = self.problems()
        if problems:
            raise ValueError("bad config value" + ("s" if len(problems) > 1 else "") + ": " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Every value out of its key's range or choices, and every broken rule between keys."""
        problems = [p for name, key in self.keys().items() if (p := key.problem(name, getattr(self, name)))]
        return problems + self.rules_between_keys()

    def rules_between_keys(self) -> list[str]:
        """What is wrong between keys (a model's Config adds its rules); [] when nothing is."""
        return []

    def apply_overrides(self, items: list[str], source: str = "command line") -> None:
        """Apply ``key=value`` strings; values are Python literals (strings may be bare)."""
        for item in items:
            if "=" not in item:
                raise ValueError(f"override '{item}' is not of the form key=value")
            key, text = item.split("=", 1)
            key = key.strip().lstrip("-")
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text  # a bare string such as backbone=resnet18
            self.set(key, value, source)

    def update(self, values: dict[str, Any], source: str = "") -> None:
        for key, value in values.items():
            self.set(key, value, source)

    def __repr__(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    # ---- the run spec ---------------------------------------------------------------------
    @property
    def frozen(self) -> bool:
        """True for a run spec (``resolve``'s result)."""
        return self.__dict__.get("_frozen", False)

    def source(self, key: str) -> str:
        """Where ``key``'s value came from: "default" (its declaration), the config class that sets
        it ("fcos.config_demo.Config", "config.DemoSettings"), "command line", "given" (``Config(key=...)``), "checkpoint
        ...", "auto" (its declared rule), or the reason a resolution gave."""
        if key in self._sources:
            return self._sources[key]
        for klass in type(self).__mro__:
            if key in vars(klass):
                return "default" if isinstance(vars(klass)[key], Key) else f"{klass.__module__}.{klass.__qualname__}"
        return "default"

    def resolve(self, run: RunFacts | None = None, values: dict | None = None,
                sources: dict | None = None) -> "KeyedConfig":
        """The run spec: a frozen copy with ``values`` set (``sources[key]``: why; default "rule"),
        then every key still "auto" resolved: a decisive (structure) key takes ``run.stored``'s
        concrete value where there is one, any other its declared rule. A spec resolves to
        itself. This config is not changed."""
        if self.frozen:
            return self
        run = run if run is not None else RunFacts()
        spec = copy.copy(self)   # values are immutable (numbers, strings, tuples): a shallow copy is a copy
        object.__setattr__(spec, "_sources", dict(self._sources))
        for key, value in (values or {}).items():
            spec.set(key, value, (sources or {}).get(key, "rule"))
        decisive = set(self._decisive_keys)
        for name, key in spec.keys().items():
            if key.auto is None or not is_auto(getattr(spec, name)):
                continue   # concrete already ("auto" is a plain choice of a key without a rule: device)
            stored = run.stored.get(name)
            if name in decisive and stored is not None and not is_auto(stored):
                spec.set(name, stored, run.stored_source)
            else:
                spec.set(name, key.auto(spec, run), "auto")
        spec.check()
        object.__setattr__(spec, "_frozen", True)
        return spec

    def replace(self, source: str = "replaced", **values: Any) -> "KeyedConfig":
        """A copy (a spec if this is one) with ``values`` changed, from ``source``: a variant to
        build from (e.g. the same model without ImageNet weights, when a checkpoint will overwrite
        them all)."""
        spec = copy.copy(self)
        object.__setattr__(spec, "_sources", dict(self._sources))
        object.__setattr__(spec, "_frozen", False)
        spec.update(values, source)
        object.__setattr__(spec, "_frozen", self.frozen)
        return spec

    def require_spec(self, what: str) -> None:
        """ValueError unless this is a run spec: ``what`` reads plain values, never "auto"."""
        if not self.frozen:
            raise ValueError(f"{what} needs the run spec, in which every 'auto' key is resolved: build it from "
                             f"cfg.resolve() (train.py, test.py and export.py do)")


# ---- config files ----------------------------------------------------------------------------
def load_config(path: str | Path, overrides: list[str] | tuple = ()) -> KeyedConfig:
    """Import the config file at ``path``, instantiate its ``Config`` and apply overrides.

    A file inside the repository is imported as its package module (``fcos/config.py`` ->
    ``fcos.config``) so that it shares classes with the rest of the code; a file elsewhere
    is imported from its path. ``work_dir`` left empty becomes ``work_dirs/<config name>``.
    """
    path = find_config_file(path)
    try:
        module_name = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
        module = importlib.import_module(module_name)
    except ValueError:  # outside the repository
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    if not hasattr(module, "Config"):
        raise AttributeError(f"{path} defines no class Config")
    cfg = module.Config()
    cfg.apply_overrides(list(overrides))
    cfg.check()
    if not cfg.work_dir:
        cfg.set("work_dir", str(Path("work_dirs") / _config_name(path)), "work_dirs/<config name>")
    return cfg


def model_config(module_name: str) -> KeyedConfig:
    """The ``Config`` of a model's config module (``fcos.config``), with its defaults; ImportError
    if this code has no such module."""
    return importlib.import_module(module_name).Config()


def find_config_file(path: str | Path) -> Path:
    """The config file at ``path``: as given (absolute, or relative to the current folder), else
    relative to the repository root (``--config fcos/config.py`` works from any folder)."""
    given = Path(path)
    for candidate in (given, REPO_ROOT / given) if not given.is_absolute() else (given,):
        if candidate.is_file():
            return candidate.resolve()
    where = "" if given.is_absolute() else f" (nor {REPO_ROOT / given})"
    raise FileNotFoundError(f"config file not found: {given.resolve()}{where}")


def _config_name(path: Path) -> str:
    """Run name: the model folder for its configs, else the file name (my_exps/r50.py -> r50)."""
    if path.stem.startswith("config"):  # fcos/config.py -> fcos, fcos/config_demo.py -> fcos_demo
        return path.parent.name + path.stem[len("config"):]
    return path.stem
