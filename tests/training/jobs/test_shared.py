"""A job's frames in shared memory: the same frames back, one copy per distinct array, never
pickled."""

from __future__ import annotations

import pickle
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest

from frameserve.training import FramePair, ImagePairs, LabelledImage, LabelledImages
from frameserve.training.jobs.shared import SharedFrames
from tests.training.helpers import small_pairs


def test_pairs_come_back_as_views_of_one_block() -> None:
    data = small_pairs()
    same = data.train[0].input  # one array named twice stays one
    data = ImagePairs(
        [*data.train, FramePair(input=same, target=same, name="twice")],
        data.validation,
        colourspace="sRGB",
    )
    shared = SharedFrames.share(data)
    back = shared.data()
    assert isinstance(back, ImagePairs) and back.colourspace == "sRGB"
    assert [p.name for p in back.train] == [p.name for p in data.train]
    pairs = list(zip((*data.train, *data.validation), (*back.train, *back.validation), strict=True))
    for before, after in pairs:
        assert np.array_equal(before.input, after.input)
        assert np.array_equal(before.target, after.target)
        assert not np.shares_memory(before.input, after.input)  # copied into the block
    assert back.train[-1].input is back.train[-1].target is back.train[0].input
    distinct = {id(a): a for p in data.train + data.validation for a in (p.input, p.target)}
    assert len(distinct) == 6  # eight names, one copy of each array
    assert shared.nbytes == sum(-(-a.nbytes // 64) * 64 for a in distinct.values())
    again = shared.data()  # another view of the same pages: what the training process maps
    again.train[0].input[0, 0, 0] = 42.0
    assert back.train[0].input[0, 0, 0] == 42.0


def test_labelled_images_come_back_with_their_classes() -> None:
    rng = np.random.default_rng(0)
    images = [
        LabelledImage(rng.random((3, 20, 24), dtype=np.float32), index % 2, name=f"im{index}")
        for index in range(3)
    ]
    data = LabelledImages("label", images[:2], images[2:], classes=("day", "night"))
    back = SharedFrames.share(data).data()
    assert isinstance(back, LabelledImages)
    assert back.kind == "label" and back.classes == ("day", "night")
    assert [(i.name, i.target) for i in back.train] == [("im0", 0), ("im1", 1)]
    assert np.array_equal(back.validation[0].image, images[2].image)


def test_pixels_are_never_pickled() -> None:
    shared = SharedFrames.share(small_pairs())
    with pytest.raises(RuntimeError, match="inheritance"):  # what pipes and queues would do
        ForkingPickler.dumps(shared)  # only a process being started may map the block
    with pytest.raises(pickle.PicklingError):
        pickle.dumps(shared)
