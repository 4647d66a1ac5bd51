"""The `yolov3` command: parse, then dispatch.

`yolov3 fit|validate|test|predict` are LightningCLI (configs in configs/*.yaml); the other
subcommands are this project's own, each a thin shell over the package in its module
(HANDLERS), their options in commands/parser.py.
"""

from __future__ import annotations

import importlib
import logging
import sys
import warnings

from yolov3.checkpoint_io import CheckpointError
from yolov3.commands.parser import build_parser
from yolov3.darknet import DarknetError
from yolov3.data.sample import DataError
from yolov3.nonfinite import TrainingDiverged
from yolov3.pretrained import PretrainedError

_USER_ERRORS = (DataError, CheckpointError, TrainingDiverged, DarknetError, PretrainedError)
# Each own command is `function` of the module yolov3.commands.<module>, imported when that
# command runs (here, the one place), so a command loads only what it uses (`yolov3 detect`
# neither Lightning nor Gradio). fit / validate / test / predict import
# yolov3.commands.lightning_cli the same way.
HANDLERS: dict[str, tuple[str, str]] = {
    "summary": ("tools", "summary"), "synth": ("tools", "synth"), "show-batch": ("tools", "show_batch"),
    "demo": ("demo", "command"), "detect": ("detect", "command"), "export": ("export", "command"),
    "cam": ("cam", "command"), "app": ("server", "command"), "space": ("space", "command")}
OWN_COMMANDS = tuple(HANDLERS)
PASSES_OVERRIDES = ("demo", "show-batch")
OWN_HELP = (f"yolov3 {{{','.join(OWN_COMMANDS)}}} ...: this project's own commands (yolov3 <command> --help);\n"
            "yolov3 {fit,validate,test,predict} ...: training and evaluation with LightningCLI, below.\n")


def main(argv: list[str] | None = None) -> None:
    from_command_line = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Lightning 2.6 trips over its own torch.utils._pytree deprecation; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*treespec.*deprecated")
    # Our training sampler resumes mid-epoch by itself (the DataModule's state in the checkpoint).
    warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")
    # validate / test log to their own folder, so a checkpoint's ModelCheckpoint state "moves": harmless there.
    warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
    if argv and argv[0] in OWN_COMMANDS:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra and args.command not in PASSES_OVERRIDES:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = extra
        try:
            module, function = HANDLERS[args.command]
            getattr(importlib.import_module(f"yolov3.commands.{module}"), function)(args)
        except _USER_ERRORS as exc:
            raise SystemExit(f"yolov3 {args.command}: {exc}") from None
        return
    if not argv or argv[0] in ("-h", "--help"):
        # LightningCLI's help knows only its own four subcommands
        print(OWN_HELP)
    # LightningCLI reads sys.argv itself when run from the command line.
    try:
        importlib.import_module("yolov3.commands.lightning_cli").YoloCLI(args=None if from_command_line else argv)
    except _USER_ERRORS as exc:
        # a bad file of the user's is one line naming it, not a traceback of our internals
        raise SystemExit(f"yolov3 {argv[0] if argv else ''}: {exc}".replace(":  ", ": ")) from None


if __name__ == "__main__":
    main()
