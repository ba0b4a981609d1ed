"""What the entry scripts (train.py, test.py, export.py) share: their command line
(``parse_command_line``), how they run a job (``run_command``), and bad input told apart from
bugs (``user_error_message``: the one line a command prints for bad input, or None for a bug,
whose traceback is kept).
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import Any, Callable

DEFAULT_CONFIG = "fcos/config_demo.py"


def parse_command_line(description: str, add_options: Callable[[argparse.ArgumentParser], None],
                       argv: list[str] | None = None, config_default: str | None = DEFAULT_CONFIG,
                       config_help: str = f"(default {DEFAULT_CONFIG})") -> argparse.Namespace:
    """``--config`` (default ``config_default``; None: the script takes it from a checkpoint),
    the script's own options (``add_options``) and ``key=value`` config overrides, before or
    after the options."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=config_default, help=f"a model's config file {config_help}")
    add_options(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args, unknown = parser.parse_known_intermixed_args(argv)
    if unknown:  # e.g. "--epochs 3": a config key written as an option
        first = unknown[0]
        key = first.lstrip("-").split("=", 1)[0].replace("-", "_")
        tokens = list(sys.argv[1:] if argv is None else argv)
        after = tokens[tokens.index(first) + 1] if first in tokens and tokens.index(first) + 1 < len(tokens) else ""
        value = first.split("=", 1)[1] if "=" in first else (after if after and "=" not in after
                                                             and not after.startswith("-") else "VALUE")
        parser.error(f"unrecognized arguments: {' '.join(unknown)}; config keys are set as key=value, "
                     f"without dashes: {key}={value}")
    return args

# ---- bad input vs bugs ---------------------------------------------------------------------
# RuntimeErrors that report bad input (data or checkpoints), by the start of their message.
_INPUT_RUNTIME_ERRORS = ("cannot read image", "could not read checkpoint", "device=cuda but")
_INPUT_RUNTIME_PATTERNS = (re.compile(r"does not fit the model"), re.compile(r"is \d+x\d+ on disk but"))


def os_error_of(error: BaseException) -> OSError | None:
    """The OSError with an errno behind ``error`` (itself, or what it was raised from: torch.save
    on a full disk raises a RuntimeError "unexpected pos" whose cause is errno 28), else None."""
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, OSError) and error.errno is not None:
            return error
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def user_error_message(error: BaseException) -> str | None:
    """The message to print for an error caused by bad input or settings, None for a bug.

    Bad input: ValueError, FileNotFoundError, NotADirectoryError, FloatingPointError (a
    non-finite loss), an error of the OS with its errno and path (a full disk, a read-only
    folder), and RuntimeErrors of the data and checkpoint loaders. An error raised in a
    data-loader worker is unwrapped to the worker's own message.
    """
    os_error = os_error_of(error)
    if os_error is not None:  # raised by the OS: "[Errno 28] No space left on device: 'path'"
        return str(os_error)
    else:
        message = str(error.args[0]) if error.args else str(error)
    if "Original Traceback" in message:  # re-raised from a data-loader worker: keep its last line
        last = [line for line in message.strip().splitlines() if line.strip()][-1]
        message = last.split(": ", 1)[1] if ": " in last else last
    if isinstance(error, (ValueError, FileNotFoundError, NotADirectoryError, FloatingPointError)):
        return message
    if isinstance(error, RuntimeError) and (message.startswith(_INPUT_RUNTIME_ERRORS)
                                            or any(p.search(message) for p in _INPUT_RUNTIME_PATTERNS)):
        return message
    return None


# Errors of loading a config: a bad command line or config file (exit code 2).
CONFIG_ERRORS = (KeyError, TypeError, ValueError, FileNotFoundError, AttributeError)  # AttributeError: no Config


def run_command(load_config: Callable[[], Any], job: Callable[[Any], Any],
                on_interrupt: Callable[[Any], str] | None = None) -> int:
    """What the entry scripts share: load the config (``load_config()``; a bad one exits 2 with
    one "error:" line), run ``job(cfg)`` (bad input or settings exit 1 with one "error:" line,
    also written with its traceback to the run's log file; a bug keeps its traceback; Ctrl-C
    exits 130 with one line, ``on_interrupt(cfg)`` saying how to continue), and leave the
    process group."""
    try:
        cfg = load_config()
    except CONFIG_ERRORS as error:
        print(f"error: {error.args[0] if error.args else error}", file=sys.stderr)
        return 2
    from public.engine import distributed
    from public.engine.watch.logger import log_error_to_file
    try:
        code = job(cfg)
    except KeyboardInterrupt:
        print("\ninterrupted" + (f": {on_interrupt(cfg)}" if on_interrupt else ""), file=sys.stderr)
        return 130
    except Exception as error:
        message = str(error) if isinstance(error, ImportError) else user_error_message(error)
        if message is None:
            raise  # a bug, not bad input: keep the traceback
        print(f"error: {message}", file=sys.stderr)
        log_error_to_file(f"error: {message}", error)
        return 1
    finally:
        distributed.cleanup()
    return code if isinstance(code, int) else 0
