"""Where each command writes: a run folder per training run, test results inside it.

A config names its run once, `run: {name: voc}` (RunFolder); name_run turns that into the
trainer's default_root_dir and every logger's name (and version, for a run that is not
versioned) when the config is parsed, before anything is placed or printed.

No command overwrites another run's outputs:

- `fit` writes to `<save_dir>/<name>/version_<k>` with the next free k (logs, hparams.yaml,
  config.yaml, checkpoints/). A run that is not versioned (demo.yaml: the throwaway
  `runs/demo`) keeps its folder.
- `fit --ckpt_path <run>/checkpoints/last.ckpt` resumes in that run's folder: metrics.csv
  keeps its history up to the checkpoint's step (RunCSVLogger), rows logged after that step
  (training that the resume redoes) move to `metrics.undone-<step>.csv`, and the config of
  the resume is saved beside the first one as `config.resume-<j>.yaml`.
- `validate` and `test` write to `<run>/<validate|test>/version_<k>` where <run> is the
  trained run the checkpoint comes from (its `checkpoints/` parent), else the config's
  `<save_dir>/<name>`.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

_VERSION = re.compile(r"version_(\d+)$")
# Lightning's own ckpt_path keywords, which name no file
_CKPT_KEYWORDS = ("last", "best", "hpc", "registry")


def next_version(parent: str | os.PathLike) -> str:
    """'version_<k>' with k one above the highest existing `version_*` folder in parent (0 if none)."""
    parent = Path(parent)
    taken = [int(m.group(1)) for p in parent.glob("version_*") if (m := _VERSION.match(p.name))] if parent.is_dir() else []
    return f"version_{max(taken) + 1 if taken else 0}"


def run_dir_of(ckpt_path: str | os.PathLike | None) -> Path | None:
    """The run folder a checkpoint file belongs to (`<run>/checkpoints/x.ckpt` -> <run>), or None."""
    if not ckpt_path or str(ckpt_path) in _CKPT_KEYWORDS:
        return None
    parent = Path(ckpt_path).parent
    return parent.parent if parent.name == "checkpoints" else None


def _next_free(folder: Path, stem: str, suffix: str) -> str:
    j = 1
    while (folder / f"{stem}-{j}{suffix}").exists():
        j += 1
    return f"{stem}-{j}{suffix}"


@dataclass
class RunFolder:
    """A config's `run:`: the one place it names its run.

    name: the run's folder under the loggers' save_dir (runs/<name>); None leaves the
        loggers' names as they are configured.
    versioned: each fit gets its own <name>/version_<k> (see place_run); false: the run is
        the folder <name> itself, which the next fit overwrites (a throwaway run).
    """

    name: str | None = None
    versioned: bool = True


def _folder_loggers(config: Any) -> list:
    """The trainer.logger entries of a parsed config that write to save_dir/name/version."""
    return [lg for lg in (config.trainer.logger if isinstance(config.trainer.logger, list) else [])
            if getattr(lg, "init_args", None) is not None and hasattr(lg.init_args, "save_dir")]


def name_run(config: Any) -> None:
    """Apply the config's `run:` (a RunFolder namespace) to the parsed LightningCLI config, in
    place: every logger's name becomes run.name, its version "" when the run is not
    versioned (else as configured: None, the next free one); trainer.default_root_dir, unless
    configured, becomes <first logger's save_dir>/<run.name> (else runs/<run.name>).
    Checkpoints go to the first logger's folder (ModelCheckpoint's dirpath left unset)."""
    run = config.get("run")
    if run is None or run.name is None:
        return
    loggers = _folder_loggers(config)
    for lg in loggers:
        lg.init_args.name = run.name
        if not run.versioned:
            lg.init_args.version = ""
    if config.trainer.default_root_dir is None:
        save_dir = loggers[0].init_args.save_dir if loggers else "runs"
        config.trainer.default_root_dir = str(Path(save_dir) / run.name)


def place_run(config: Any, subcommand: str) -> str | None:
    """Point the configured loggers at this command's folder (see the module docstring).

    `config` is the LightningCLI namespace of the subcommand; its trainer.logger entries that
    take save_dir / name / version are edited in place. Returns the file name the config of
    this command should be saved under when it must not replace an existing config.yaml
    (a resumed fit), else None.
    """
    loggers = _folder_loggers(config)
    if not loggers:
        return None
    first = loggers[0].init_args
    base = Path(first.save_dir) / (first.name or "")
    ckpt = getattr(config, "ckpt_path", None)
    run = run_dir_of(ckpt)
    if subcommand == "fit":
        if run is not None and run.parent.resolve() == base.resolve() and run.is_dir():
            version = run.name  # resume in the checkpoint's own run folder
            for lg in loggers:
                if hasattr(lg.init_args, "resume"):
                    lg.init_args.resume = True
            config_name = _next_free(run, "config.resume", ".yaml") if (run / "config.yaml").exists() else None
        elif first.version is None:
            version, config_name = next_version(base), None
        else:
            return None  # a pinned folder (the demo's throwaway run)
        for lg in loggers:
            lg.init_args.save_dir, lg.init_args.name, lg.init_args.version = first.save_dir, first.name, version
        return config_name
    if subcommand in ("validate", "test"):
        home = run if run is not None and run.is_dir() else base
        version = next_version(home / subcommand)
        for lg in loggers:
            lg.init_args.save_dir, lg.init_args.name, lg.init_args.version = str(home), subcommand, version
    return None


class _KeepingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; this one appends to it when
    the run is resumed (and replaces it otherwise, as Lightning does)."""

    def __init__(self, log_dir: str, keep: bool) -> None:
        self._keep = keep
        super().__init__(log_dir)
        if keep and os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))

    def _check_log_dir_exists(self) -> None:
        if not self._keep:
            super()._check_log_dir_exists()


class RunCSVLogger(CSVLogger):
    """Lightning's CSVLogger, except that a resumed run keeps its metrics history.

    Args (besides CSVLogger's): resume: set by the CLI when `fit --ckpt_path` continues a
    run in its own folder (see place_run); then metrics.csv is appended to, and resume_at
    (called when the checkpoint is loaded) trims the rows logged after the checkpoint.
    """

    def __init__(self, save_dir: str, name: str | None = "lightning_logs", version: int | str | None = None,
                 prefix: str = "", flush_logs_every_n_steps: int = 100, resume: bool = False) -> None:
        super().__init__(save_dir, name=name, version=version, prefix=prefix,
                         flush_logs_every_n_steps=flush_logs_every_n_steps)
        self.resume = resume

    @property
    @rank_zero_only
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(self.log_dir, keep=self.resume)
        return self._experiment

    @rank_zero_only
    def resume_at(self, step: int) -> None:
        """Keep the rows of metrics.csv up to global step `step`; move later ones aside."""
        path = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
        if not self.resume or not path.is_file():
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = reader.fieldnames or [], list(reader)
        late = [bool(r.get("step")) and int(float(r["step"])) > step for r in rows]
        kept = [r for r, x in zip(rows, late) if not x]
        undone = [r for r, x in zip(rows, late) if x]
        if not undone:
            return
        with open(path.with_name(f"metrics.undone-{step}.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(undone)
        tmp = path.with_name(path.name + ".partial")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(kept)
        os.replace(tmp, path)
