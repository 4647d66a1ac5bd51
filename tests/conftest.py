import os

import pytest

# Keep the suite on the two cores we have without oversubscription from worker threads.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A small synthetic dataset in the Kaggle layout (and VOCdevkit), shared by the session."""
    from yolov3.data.synthetic import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, 24, 8, seed=0, voc_xml=True, min_side=96, max_side=160)
    return root
