"""Real faces: a model trained on the synthetic portraits plus the LFW train split's degraded faces
(``--extra-train lfw_framed``) tells compliant from degraded *unseen* real faces. Marked slow: about
15 minutes on 2 CPU cores. Run: pytest -m slow tests/test_slow_transfer.py -s

The run is the README's (regions approach, 24 epochs, milder shifts), on the image-level requisites
only; it is scored as ``check`` scores a photo (MTCNN alignment to the training framing) on the 25
LFW faces of the val and test splits, 500 images with every image-level defect at random severity."""

import os
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from icao_mtl.check import score_degraded_faces
from icao_mtl.config import TrainConfig
from icao_mtl.requisites import IMAGE_LEVEL
from icao_mtl.runs import train

#: The requisites the issue asks to transfer (ink marks are reported, not asserted: see README).
TRANSFER = ("blurred", "pixelation", "light", "washed_out")


@pytest.mark.slow
def test_degraded_unseen_real_faces_are_told_from_clean_ones_with_an_auc_of_at_least_0_9(tmp_path):
    out = Path(os.environ.get("ICAO_MTL_SLOW_OUT") or tmp_path) / "transfer"
    cfg = TrainConfig(approach="regions", shift=0.04, zoom=0.05, extra_train="lfw_framed", tasks=list(IMAGE_LEVEL),
                      check_images="exists", out=str(out))
    train(cfg, verbose=2)
    got = score_degraded_faces(out)
    assert got["unseen_only"] and len(got["rows"]) == 500
    ds = got["dataset"]
    train_faces = {n.split("_")[0] for n, s in zip(ds.names, ds.split) if s == "train"}
    assert not train_faces & {ds.names[i].split("_")[0] for i in got["rows"]}  # no scored face was trained on
    aucs = {}
    for task in TRANSFER:
        y = ds.labels[got["rows"], ds.tasks.index(task)]
        aucs[task] = roc_auc_score(y, got["scores"][task])
    print(aucs)
    assert all(a >= 0.9 for a in aucs.values()), aucs
    assert np.mean(list(aucs.values())) >= 0.95, aucs
