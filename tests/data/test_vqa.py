"""The procedural VQA data set: determinism, splits, answerability, vocabulary, patch grid, video."""

from __future__ import annotations

import numpy as np
import pytest

from tokencodec.data.vqa import (
    ANSWERS,
    COLOURS,
    DIRECTIONS,
    GRID,
    IMAGE_SIZE,
    NUMBERS,
    PATCH,
    PLURALS,
    QUESTION_TYPES,
    SHAPES,
    SMALL_OBJECT_TYPES,
    VIDEO_ANSWERS,
    VideoVQADataset,
    VQADataset,
    VQAError,
    _words,
    patch_mask,
    vocabulary,
)

N = 210  # 30 per question type


@pytest.fixture(scope="module")
def train():
    return list(VQADataset("train", N, seed=0))


def _key(s) -> tuple:
    return (s.image.tobytes(), s.question)


def test_determinism_by_seed(train):
    again = VQADataset("train", N, seed=0)
    for i in (0, 7, 123, N - 1):
        assert _key(again[i]) == _key(train[i]) and again[i].answer == train[i].answer
    other = VQADataset("train", 20, seed=1)
    assert sum(_key(a) == _key(b) for a, b in zip(other, train[:20], strict=True)) == 0


def test_splits_disjoint(train):
    keys = {name: {_key(x) for x in VQADataset(name, N, seed=0)} for name in ("val", "test")}
    keys["train"] = {_key(x) for x in train}
    images = {k: {i for i, _ in v} for k, v in keys.items()}
    assert not images["train"] & images["val"] and not images["train"] & images["test"]
    assert not images["val"] & images["test"]
    with pytest.raises(VQAError, match="split"):
        VQADataset("dev", 3)


def _centre(o):
    return o.centre


def _answer(s) -> str:
    """Re-derive the answer from the scene's object list alone (an independent reading of the question)."""
    objs, w = s.objects, _words(s.question)

    def find(colour=None, shape=None, size=None):
        return [o for o in objs if (colour is None or o.colour == colour) and (shape is None or o.shape == shape)
                and (size is None or o.size == size)]

    def one(desc: list[str]):
        colour = next((x for x in desc if x in COLOURS), None)
        shape = next((x for x in desc if x in SHAPES), None)
        size = next((x for x in desc if x in ("small", "large")), None)
        (o,) = find(colour, shape, size)  # the expression must be unique in its scene
        return o

    q = " ".join(w)
    if q.startswith("what colour is the"):
        return one(w[4:-1]).colour
    if q.startswith("what shape is the"):
        return one(w[4:-1]).shape
    if q.startswith("how many"):
        noun = w[2]
        if noun == "objects":
            return NUMBERS[len(objs)]
        if noun in COLOURS:
            return NUMBERS[len(find(colour=noun))]
        shape = {v: k for k, v in PLURALS.items()}[noun]
        return NUMBERS[len(find(shape=shape))]
    if q.startswith("is there a"):
        return "yes" if find(w[3], w[4]) else "no"
    if q.startswith("are there more"):
        return "yes" if len(find(colour=w[3])) > len(find(colour=w[6])) else "no"
    if " larger than " in q:
        a, b = one(w[2:4]), one(w[7:9])
        return "yes" if (a.size, b.size) == ("large", "small") else "no"
    a, b = one(w[2:4]), one(w[-3:-1])
    (xa, ya), (xb, yb) = a.centre, b.centre
    rel = " ".join(w[4:-4]) if w[5] == "of" else w[4]
    d = {"left of": xb - xa, "right of": xa - xb, "above": yb - ya, "below": ya - yb}[rel]
    assert abs(d) >= 1  # only asked when the relation is clear
    return "yes" if d > 0 else "no"


def test_every_question_answerable_from_scene(train):
    for s in train:
        assert _answer(s) == s.answer, (s.question, s.answer, s.objects)


def test_answers_and_words_in_vocabulary(train):
    vocab = set(vocabulary())
    for s in train:
        assert s.answer in ANSWERS and s.answer in vocab
        assert set(_words(s.question)) <= vocab, s.question
    assert set(VIDEO_ANSWERS) <= vocab


def test_types_balanced_and_small_object_type(train):
    counts = {t: sum(s.qtype == t for s in train) for t in QUESTION_TYPES}
    assert set(counts.values()) == {N // len(QUESTION_TYPES)}
    assert "small_colour" in SMALL_OBJECT_TYPES
    for s in train:
        if s.qtype == "small_colour":
            assert "small" in s.question and s.relevant_mask.sum() == 1  # the answer hangs on one patch
        if s.qtype in ("exist", "relation", "compare"):
            assert s.answer in ("yes", "no")
    for t in ("exist", "relation", "compare"):
        yes = sum(s.answer == "yes" for s in train if s.qtype == t)
        assert 8 <= yes <= 22, (t, yes)  # roughly balanced


def test_object_masks_align_with_patch_grid(train):
    for s in train[:60]:
        assert s.image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and s.image.dtype == np.uint8
        assert s.object_mask.shape == (GRID, GRID)
        assert s.object_mask.sum() == sum(len(o.cells) for o in s.objects)  # one object per patch
        assert not (s.relevant_mask & ~s.object_mask).any()
        assert s.object_mask.mean() < 0.5  # background dominates
        bg = np.median(s.image.reshape(-1, 3), axis=0)
        for o in s.objects:
            x0, y0, x1, y1 = o.box
            assert x0 % PATCH == 0 and y0 % PATCH == 0 and (x1 - x0) == (y1 - y0) == o.span * PATCH
        # pixels far from the background colour lie only in object patches
        diff = np.abs(s.image.astype(int) - bg).max(-1) > 30
        per_patch = diff.reshape(GRID, PATCH, GRID, PATCH).any(axis=(1, 3))
        assert (per_patch == s.object_mask).all()
        # background patches are low-variance
        patches = s.image.reshape(GRID, PATCH, GRID, PATCH, 3).transpose(0, 2, 1, 3, 4).reshape(GRID, GRID, -1)
        assert patches[~s.object_mask].std(axis=-1).max() < 12


def test_video_moves_objects_over_static_background():
    vids = VideoVQADataset("train", 12, seed=0, frames=4)
    assert vids[3].question == VideoVQADataset("train", 12, seed=0)[3].question
    for v in vids:
        assert v.frames.shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3) and v.object_masks.shape == (4, GRID, GRID)
        mover = v.objects[v.mover]
        static = [o for k, o in enumerate(v.objects) if k != v.mover]
        bg = ~v.object_masks.any(0)  # patches that never hold an object
        px = np.repeat(np.repeat(bg, PATCH, 0), PATCH, 1)
        assert (v.frames[:, px] == v.frames[0, px]).all()  # static background
        assert (v.object_masks[:, patch_mask(static)]).all()  # the others stay
        rows = [np.argwhere(v.relevant_masks[t]).min(0) for t in range(4)]
        step = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}[v.direction]
        assert all(tuple(rows[t + 1] - rows[t]) == step for t in range(3))
        assert tuple(rows[0]) == (mover.row, mover.col)
        assert v.answer == (v.direction if v.qtype == "direction" else mover.colour)
        assert v.answer in DIRECTIONS or v.answer in COLOURS
