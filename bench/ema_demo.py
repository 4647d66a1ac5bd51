"""The demo with and without the EMA of the weights, from one training run.

    python bench/ema_demo.py                                  # demo.yaml, EMA 0.999 / tau 200
    python bench/ema_demo.py --ema 0.9999:2000 --ema 0.999:200 --ema 0.998:100
    python bench/ema_demo.py --trainer.max_epochs 2 --n-train 64 --n-test 16 --data-dir /tmp/s  # a smoke run

The EMA only watches training: the training weights of a fit with it are those of the same
fit without it (tests/test_ema.py). So one fit of the demo config gives the whole
comparison: after every epoch the training weights ("raw": the demo without EMA) and each
EMA (decay:tau, the first one the module's own, the others extra copies updated after the
same steps) are validated on the same images; at the end each is tested on the test split
twice, with its final weights and with its weights of the epoch of its lowest validation
loss (what the demo tests: best.ckpt). Prints the table, writes the curves and results as
JSON (--out) and a plot of the validation curves next to it (.png); the run's folder is
runs/ema_demo (not the demo's). Also times one EMA update, the cost it adds to each step.
Extra arguments go to LightningCLI (e.g. --trainer.max_epochs 2).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from torch import nn
from torchmetrics import MeanMetric

from common import describe_machine, report
from yolov3.ema import ModelEMA
from yolov3.lit import YoloLitModule
from yolov3.metrics import CourseAccuracy, DetectionMAP

FIGURES = ("loss", "map_07", "map_2010", "class_acc", "noobj_acc", "obj_acc")


def parse_ema(spec: str) -> tuple[float, float]:
    decay, tau = spec.split(":")
    return float(decay), float(tau)


class Weightings(YoloLitModule):
    """The module with its EMA, which also validates and tests the training weights ("raw")
    and extra EMAs of the same run (`extra`: name -> (decay, tau)). Their figures are logged
    as val_<name>/..., test_<name>/...; the own EMA's as val/..., test/... ."""

    def __init__(self, extra: dict[str, tuple[float, float]], **hparams) -> None:
        super().__init__(**hparams)
        if self.ema is None:
            raise ValueError("the module's own EMA must be on (model.optim.ema)")
        self.extra = nn.ModuleDict({name: ModelEMA(self.model, d, t) for name, (d, t) in extra.items()})
        c, t = self.hparams.num_classes, self.evaluation.accuracy_threshold
        self.scores = nn.ModuleDict({name: nn.ModuleDict({
            "val_acc": CourseAccuracy(t), "val_loss": MeanMetric(), "val_map": DetectionMAP(c),
            "test_acc": CourseAccuracy(t), "test_loss": MeanMetric(), "test_map": DetectionMAP(c, coco=True),
        }) for name in ["raw", *extra]})
        self.current: str | None = None  # the weights forward runs in evaluation; None: the own EMA

    def network(self, name: str | None) -> nn.Module:
        return self.ema.module if name is None else self.model if name == "raw" else self.extra[name].module

    def _network(self) -> nn.Module:
        return super()._network() if self.training or self.current is None else self.network(self.current)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        for ema in self.extra.values():
            ema.reset(self.model)

    def optimizer_step(self, *args, **kwargs) -> None:
        before = self.ema.updates
        super().optimizer_step(*args, **kwargs)
        if self.ema.updates > before:  # the step changed the weights
            for ema in self.extra.values():
                ema.update(self.model)

    def _others(self, stage: str, batch: dict) -> None:
        for name, s in self.scores.items():
            self.current = name
            det_map = s[f"{stage}_map"] if stage == "test" or self._map_now() else None
            self._eval_step(batch, s[f"{stage}_acc"], s[f"{stage}_loss"], det_map)
        self.current = None

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        self._others("val", batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        self._others("test", batch)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        for name, s in self.scores.items():
            self._end_eval(f"val_{name}", s["val_acc"], s["val_loss"], s["val_map"])

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        for name, s in self.scores.items():
            self._end_eval(f"test_{name}", s["test_acc"], s["test_loss"], s["test_map"])


class Curves(Callback):
    """Each weighting's validation figures per epoch, and a copy of its weights at its lowest
    validation loss."""

    def __init__(self, names: dict[str, str | None]) -> None:
        self.names = names  # label -> the module's name for the weights (None: its own EMA)
        self.epochs: list[dict] = []
        self.best: dict[str, tuple[float, int, dict]] = {}

    def on_validation_end(self, trainer, module) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        for label, name in self.names.items():
            stage = "val" if name is None else f"val_{name}"
            row[label] = {k: float(m[f"{stage}/{k}"]) for k in FIGURES if f"{stage}/{k}" in m}
            loss = row[label]["loss"]
            if label not in self.best or loss < self.best[label][0]:
                state = copy.deepcopy(module.network(name).state_dict())
                self.best[label] = (loss, trainer.current_epoch, state)
        self.epochs.append(row)


def test_all(trainer, module, dm, names: dict[str, str | None]) -> dict[str, dict]:
    out = trainer.test(module, datamodule=dm, verbose=False)[0]
    return {label: {k: float(out[f"{'test' if name is None else f'test_{name}'}/{k}"]) for k in FIGURES}
            for label, name in names.items()}


def update_ms(module: Weightings, n: int = 50) -> float:
    """Milliseconds one EMA update of this model takes here."""
    ema = ModelEMA(module.model)
    ema.update(module.model)
    t0 = time.perf_counter()
    for _ in range(n):
        ema.update(module.model)
    return (time.perf_counter() - t0) / n * 1000


def plot(epochs: list[dict], labels: list[str], path: Path) -> None:
    from yolov3.viz import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key, title in zip(axes, ("loss", "map_07", "class_acc"), ("val loss", "val VOC07 mAP@0.5", "val class acc. %")):
        for label in labels:
            points = [(r["epoch"] + 1, r[label][key]) for r in epochs if key in r[label]]
            if points:
                ax.plot(*zip(*points), marker=".", label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(Path(__file__).parent.parent / "configs" / "demo.yaml"))
    p.add_argument("--ema", action="append", type=parse_ema, metavar="DECAY:TAU",
                   help="an EMA to compare (repeatable; default 0.999:200); the first is the module's own")
    p.add_argument("--data-dir", default="data/synthetic", help="the demo's synthetic set (written if missing)")
    p.add_argument("--n-train", type=int, default=1600)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--out", default="bench/results/ema_demo.json")
    args, overrides = p.parse_known_args(argv)
    emas = args.ema or [(0.999, 200.0)]

    from yolov3.commands.lightning_cli import load_cli
    from yolov3.data.synthetic import generate

    data = Path(args.data_dir)
    if not (data / "train.csv").exists():
        generate(data, args.n_train, args.n_test, seed=0)
    (decay, tau), extra_specs = emas[0], emas[1:]
    cli = load_cli(args.config, ["--data.root", str(data), "--run.name", "ema_demo", "--model.optim.ema", "true",
                                 "--model.optim.ema_decay", str(decay), "--model.optim.ema_tau", str(tau), *overrides])
    trainer, dm = cli.trainer, cli.datamodule
    extra = {f"ema{i}": spec for i, spec in enumerate(extra_specs, start=1)}
    hparams = {k: v for k, v in cli.model.hparams.items() if not k.startswith("_")}  # not LightningCLI's own
    module = Weightings(extra, **hparams)
    # the CLI built (and seeded) the demo's own model first; building a second one drew other
    # initial weights from the global generator, so start from the CLI's: the "raw" row is then
    # the demo itself, bit for bit
    module.model.load_state_dict(cli.model.model.state_dict())
    names = {"raw": "raw", f"ema {decay:g}:{tau:g}": None,
             **{f"ema {d:g}:{t:g}": name for name, (d, t) in extra.items()}}
    curves = Curves(names)
    trainer.callbacks.append(curves)

    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    fit_s = time.perf_counter() - t0
    final = test_all(trainer, module, dm, names)
    for label, name in names.items():  # each weighting's weights at its lowest validation loss
        module.network(name).load_state_dict(curves.best[label][2])
    best = test_all(trainer, module, dm, names)

    ms = update_ms(module)
    rows = []
    for label in names:
        row = {"weights": label, "best_epoch": curves.best[label][1] + 1}
        row.update({f"final_{k}": v for k, v in final[label].items()})
        row.update({f"best_{k}": v for k, v in best[label].items()})
        rows.append(row)
    columns = [("weights", "weights", ""), ("final_map_07", "mAP07 final", ".4f"), ("final_map_2010", "mAP10 final", ".4f"),
               ("final_class_acc", "class %", ".2f"), ("final_noobj_acc", "noobj %", ".2f"),
               ("final_obj_acc", "obj %", ".2f"), ("final_loss", "loss", ".3f"), ("best_epoch", "best ep.", "d"),
               ("best_map_07", "mAP07 best", ".4f"), ("best_class_acc", "class % best", ".2f")]
    out = Path(args.out)
    report(f"Demo test split, one run, the training weights and their EMAs ({trainer.current_epoch} epochs, "
           f"{trainer.global_step} steps)", columns, rows, out, machine=describe_machine(),
           config=args.config, overrides=overrides, steps=trainer.global_step, epochs=trainer.current_epoch,
           fit_seconds=round(fit_s, 1), ema_update_ms=round(ms, 3),
           ema_seconds_per_demo_fit=round(ms * trainer.global_step / 1000, 1), curves=curves.epochs)
    print(f"one EMA update: {ms:.2f} ms, {ms * trainer.global_step / 1000:.1f} s over this fit's "
          f"{trainer.global_step} steps (the fit here took {fit_s:.0f} s with every weighting validated)")
    plot(curves.epochs, list(names), out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.png')}")
    return {"rows": rows, "curves": curves.epochs}


if __name__ == "__main__":
    main()
