"""`yolov3 fit|validate|test|predict`: LightningCLI with the project's defaults (configs in
configs/*.yaml, read over DEFAULTS), and load_cli for the commands that build a run from a
config without running it (demo, show-batch, the real-photo bench)."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Optional

import torch
from jsonargparse._actions import _ActionPrintConfig  # private: tests/test_configs.py notices a change
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI

from yolov3.checkpoint_io import load_checkpoint
from yolov3.checkpoint_plugin import SafeCheckpointIO
from yolov3.commands.ckpt_settings import (BOOKKEEPING, SettingsConflict, check_shapes, get_path,
                                          legacy_name_error, merge)
from yolov3.commands.report import print_report, summarise, write_report
from yolov3.data.datamodule import YoloDataModule
from yolov3.anchors import as_anchors
from yolov3.constants import DATA_KEY, VOC_CLASSES
from yolov3.detector import EVAL_SETTINGS, Detector
from yolov3.fit_checkpoints import CheckpointNotice, check_monitors, fit_checkpoints
from yolov3.hparams import grouped_hparams
from yolov3.lit import YoloLitModule
from yolov3.progress import is_terminal, progress_every
from yolov3.run_dirs import RunFolder, name_run, place_run
from yolov3.schedule import UNBOUNDED, unbounded
from yolov3.train_progress import PlainProgressBar

log = logging.getLogger("yolov3")

# The trainer settings every config shares (loggers, checkpoints), read before the --config file.
DEFAULTS = Path(__file__).with_name("defaults.yaml")


class YoloCLI(LightningCLI):
    """LightningCLI with the project's defaults and links between model and data."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("trainer_defaults", {"use_distributed_sampler": False})
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(YoloLitModule, YoloDataModule, *args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.default_config_files = [str(DEFAULTS)]
        parser.add_class_arguments(RunFolder, "run")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.add_argument("--weights", type=Optional[str], default=None,
                            help="validate / test / predict these weights (no training state): a checkpoint, "
                                 "a .safetensors export or the course's checkpoint (.pth.tar or Lightning "
                                 ".ckpt, recognised from the content); the model's settings come from the file")
        parser.add_argument("--anchors", type=Optional[str], default=None,
                            help="with --weights: decode with these anchors (coco, course or 18 numbers) "
                                 "instead of the file's (a course file's are the course's)")
        parser.add_argument("--progress_every", type=Optional[float], default=None,
                            help="when stdout is not a terminal (a file, a pipe, CI), print a plain progress "
                                 "line every this many seconds instead of the progress bar (0: every step; "
                                 "default $YOLOV3_PROGRESS_EVERY or 30); trainer.enable_progress_bar false: "
                                 "no progress at all")

    def parse_arguments(self, parser, args) -> None:
        """LightningCLI's parse, then the settings a checkpoint or --weights file brings
        (_parse_ckpt_path), then the config's `run:` named into its trainer and loggers
        (run_dirs.name_run), so that --print_config shows the settings the run will use.
        jsonargparse prints inside parse_args, so its printing waits for both (through its
        private _ActionPrintConfig; tests/test_configs.py notices if that changes)."""
        self._args = args  # for _given
        legacy = legacy_name_error(sys.argv[1:] if args is None else args if isinstance(args, (list, tuple)) else [])
        if legacy:
            raise SystemExit(f"yolov3: {legacy}")
        with _ActionPrintConfig.skip_print_config():
            super().parse_arguments(parser, args)
            self._parse_ckpt_path()
        name_run(self.config[self.config.subcommand] if self.config.get("subcommand") else self.config)
        _ActionPrintConfig.print_config_if_requested(parser, self.config)

    def _parse_ckpt_path(self) -> None:
        """LightningCLI's reads --ckpt_path's hyper-parameters over everything the config and
        command line set; ours (yolov3.commands.ckpt_settings.merge) takes the checkpoint's
        only where neither sets a value, refuses a given width or class count the weights
        cannot take, takes the class names the checkpoint records unless given, and logs one
        line of what differed. It reads the file the project's way, so a refusal names it
        without torch's advice to load it with weights_only=False, and maps the flat settings
        of checkpoints written before they were grouped (yolov3.hparams.grouped_hparams).
        With --weights, the settings come from those weights instead (_weights_settings).
        A fit with no length (no max_epochs, no max_steps) is refused here: its learning-rate
        schedule cannot be planned (yolov3.schedule). Called from parse_arguments (before
        --print_config prints), once."""
        if getattr(self, "_ckpt_parsed", False):
            return  # LightningCLI calls it again after parse_arguments
        self._ckpt_parsed = True
        subcommand = self.config.get("subcommand")
        if subcommand == "fit":
            trainer = self.config[subcommand].get("trainer") or {}
            if unbounded(trainer.get("max_epochs"), trainer.get("max_steps"), trainer.get("max_time")):
                raise SystemExit(f"yolov3 fit: {UNBOUNDED}")
        if subcommand and (self.config[subcommand].get("weights") or self.config[subcommand].get("anchors")):
            self._weights_settings(subcommand)
            return
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        checkpoint = load_checkpoint(ckpt_path, mmap=True)
        hparams = grouped_hparams(checkpoint.get("hyper_parameters") or {})
        if not {k for k in hparams if k not in BOOKKEEPING}:
            return
        config, given = self.config[subcommand], self._given(subcommand)
        try:
            merged = merge(hparams, checkpoint.get(DATA_KEY), get_path(given, "model"), get_path(given, "data"),
                           config.get("model"), get_path(config, "data", "class_names"), str(ckpt_path))
        except SettingsConflict as exc:
            raise SystemExit(f"yolov3 {subcommand}: {exc}") from None
        try:
            self.config = self.parser.parse_object({subcommand: {"model": merged.model, "data": merged.data}},
                                                   self.config)
        except SystemExit:
            sys.stderr.write(f"{ckpt_path}: its hyper-parameters do not fit the model's arguments\n")
            raise
        line = merged.message(str(ckpt_path))
        if line:
            log.info("%s", line)

    def _weights_settings(self, subcommand: str) -> None:
        """`--weights`: load them (Detector.load: any format it reads, the course's included)
        and take from them the model's width, its anchors and evaluation settings (score
        mode, NMS IoU, detections per image) and the data's class names, size and letterbox
        style, each unless a config or the command line sets it (`--anchors` or
        `--model.anchors` for the anchors). The weights go into the model in before_validate /
        before_test / before_predict."""
        config = self.config[subcommand]
        weights = config.get("weights")
        if subcommand == "fit":
            raise SystemExit("yolov3 fit: --weights and --anchors are for validate / test / predict; a fit starts "
                             "from weights with --model.pretrained, with anchors from --model.anchors")
        if not weights:
            raise SystemExit(f"yolov3 {subcommand}: --anchors applies to --weights")
        if config.get("ckpt_path"):
            raise SystemExit(f"yolov3 {subcommand}: give --weights or --ckpt_path, not both")
        given = self._given(subcommand)
        names = config.data.get("class_names")
        try:
            anchors = as_anchors(config.anchors, "--anchors") if config.get("anchors") else None
            if anchors is None:
                anchors = get_path(given, "model", "anchors")  # a config's or --model.anchors
            # what a config or the command line sets goes in here (None: the file's), so the
            # Detector holds the settings the run uses, and says them (describe)
            evaluation = {arg: get_path(given, "model", "evaluation", name) for name, arg in EVAL_SETTINGS.items()}
            detector = Detector.load(weights, anchors=anchors, class_names=names, **evaluation,
                                     size=get_path(given, "data", "image_size"),
                                     letterbox=get_path(given, "data", "letterbox"))
        except (FileNotFoundError, ValueError) as exc:
            raise SystemExit(f"yolov3 {subcommand}: {exc}") from None
        if detector.backend != "torch":
            raise SystemExit(f"yolov3 {subcommand}: {weights} is an ONNX export; {subcommand} runs the torch "
                             "weights (.ckpt, .safetensors or a course checkpoint)")
        try:
            check_shapes(get_path(given, "model"), detector.model.width, str(weights))
        except SettingsConflict as exc:
            raise SystemExit(f"yolov3 {subcommand}: {exc}") from None
        self._weights = detector
        evaluation = {name: getattr(detector, arg) for name, arg in EVAL_SETTINGS.items()}
        model = {"width": detector.model.width, "evaluation": evaluation, "anchors": detector.anchors.cpu().tolist()}
        data = {"image_size": detector.size, "letterbox": detector.letterbox}
        if not names and list(detector.class_names) != list(VOC_CLASSES):
            data["class_names"] = list(detector.class_names)
        self.config = self.parser.parse_object({subcommand: {"model": model, "data": data}}, self.config)

    def _given(self, subcommand: str):
        """What the config files and the command line set for this subcommand (no defaults)."""
        args = self._args if self._args is not None else sys.argv[1:]
        with _ActionPrintConfig.skip_print_config():  # --print_config prints once, in parse_arguments
            if not isinstance(args, (list, tuple)):  # a dict or Namespace given in Python: what it holds
                return self.parser.parse_object(args, defaults=False).get(subcommand)
            return self.parser.parse_args(list(args), defaults=False).get(subcommand)

    def _load_weights(self) -> None:
        """Put --weights into the instantiated model (and its EMA copy, which evaluation runs),
        and say what runs: the file, what it was recognised as, the settings."""
        detector = getattr(self, "_weights", None)
        if detector is None:
            return
        state = detector.model.state_dict()
        for net in (self.model.model, *((self.model.ema.module,) if self.model.ema is not None else ())):
            net.load_state_dict(state)
        print(detector.describe())  # the run's settings: _weights_settings made them the detector's

    def before_validate(self) -> None:
        self._load_weights()

    def before_test(self) -> None:
        self._load_weights()

    def before_predict(self) -> None:
        self._load_weights()

    def instantiate_trainer(self, **kwargs):
        """Every trainer writes checkpoints atomically and reads them without running code
        (yolov3.checkpoint_io), `--ckpt_path` of fit, validate and test included."""
        configured = self._get(self.config_init, "trainer", default={}).get("plugins")
        plugins = list(configured) if isinstance(configured, (list, tuple)) else [configured] if configured else []
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(SafeCheckpointIO())
        self.trainer_defaults = {**self.trainer_defaults, "callbacks": self._run_callbacks()}
        return super().instantiate_trainer(plugins=plugins, **kwargs)

    def _run_callbacks(self) -> list:
        """The callbacks every trainer gets besides the config's: CheckpointNotice (says at the
        start of a fit when no best checkpoint will be written), and, when stdout is not a
        terminal, PlainProgressBar in place of Lightning's bar (which draws nothing there
        until a stage ends), unless the progress bar is off or the config names its own."""
        callbacks = [CheckpointNotice()]
        trainer = self._get(self.config_init, "trainer", default={})
        configured = trainer.get("callbacks") or []
        configured = configured if isinstance(configured, (list, tuple)) else [configured]
        try:
            every = progress_every(self._get(self.config_init, "progress_every"), "--progress_every")
        except ValueError as exc:
            raise SystemExit(f"yolov3 {self.subcommand or ''}: {exc}".replace(":  ", ": ")) from None
        own_bar = any(isinstance(c, ProgressBar) for c in configured)
        if trainer.get("enable_progress_bar", True) is not False and not own_bar and not is_terminal():
            callbacks.append(PlainProgressBar(every))
        return callbacks

    def before_fit(self) -> None:
        """Refuse, before any training, a checkpoint monitor the model never logs (or logs at
        only some validations): Lightning would stop at the end of the first validation."""
        try:
            check_monitors(self.trainer, self.model.evaluation.map_every_n_epochs)
        except ValueError as exc:
            raise SystemExit(f"yolov3 fit: {exc}") from None

    def after_fit(self) -> None:
        """The run folder and the checkpoint that exists: the best, else last.ckpt with why
        there is no best (yolov3.fit_checkpoints), and the `yolov3 test` line for it."""
        trainer = self.trainer
        if trainer.global_rank != 0:
            return
        for line in fit_checkpoints(trainer).summary(trainer.log_dir):
            print(line)

    def after_test(self) -> None:
        """`yolov3 test`: print the table and per-class AP; write results.json and the plots."""
        model, trainer = self.model, self.trainer
        if model.test_results is None or trainer.global_rank != 0:
            return
        names = self.datamodule.class_names
        report = summarise(trainer.callback_metrics, model.test_results, names)
        print_report(report)
        out = Path(trainer.log_dir or trainer.default_root_dir)  # <run>/test/version_<k> (run_dirs)
        paths = write_report(report, model.test_results, names, out)
        print("wrote " + ", ".join(str(p) for p in paths))

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        config.trainer.precision = resolve_precision(config.trainer.precision, config.trainer.accelerator)
        if self.subcommand:
            config_name = place_run(config, self.subcommand)
            if config_name:
                self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": config_name}


def resolve_precision(precision, accelerator) -> str | int | None:
    """fp16 mixed precision needs CUDA: on a CPU run, say so and use bf16-mixed instead."""
    if str(precision) not in ("16-mixed", "16"):
        return precision
    accel = str(accelerator) if accelerator is not None else "auto"
    on_cpu = accel == "cpu" or (accel == "auto" and not torch.cuda.is_available())
    if on_cpu:
        log.warning(
            "precision %s (float16 mixed precision) runs only on CUDA; this run is on the CPU, "
            "so it trains in bf16-mixed instead", precision)
        return "bf16-mixed"
    return precision


def load_cli(config: str, overrides: list[str] | None = None) -> YoloCLI:
    """Instantiate trainer, model and data from a config (plus CLI-style overrides) without running."""
    with warnings.catch_warnings():
        # We hand LightningCLI its own argument list on purpose, while sys.argv holds `demo ...`.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return YoloCLI(args=["--config", config, *(overrides or [])], run=False)
