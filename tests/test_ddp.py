import json
import os
import subprocess
import sys
from pathlib import Path

HELPER = Path(__file__).parent / "ddp_validate.py"


def run(root, devices, out):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(HELPER), str(root), str(devices), str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(Path(out).read_text())


def test_two_process_ddp_gives_the_same_accuracies_and_map(synth_root, tmp_path):
    one = run(synth_root, 1, tmp_path / "one.json")
    two = run(synth_root, 2, tmp_path / "two.json")
    assert one["val_images"] % 2 == 1  # an odd split: a padding sampler would count an image twice
    for key in ("val/class_acc", "val/obj_acc", "val/noobj_acc", "val/map_07", "val/map_2010"):
        assert one[key] == two[key], key
    # the oracle's detections are good but noisy: a gather that lost or doubled images would move it
    assert 0.2 < one["val/map_2010"] < 1.0 and 0.2 < one["val/map_07"] < 1.0
    # batch size 1: the course loss is a per-batch mean, so only then is it comparable image by image
    assert abs(one["val/loss"] - two["val/loss"]) < 1e-4
