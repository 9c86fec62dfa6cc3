"""A seeded procedural VQA data set (and a video variant) for the diagnostic MLLM: no download.

**Scenes.** A 64×64 RGB image is an 8×8 grid of 8-pixel patches (the diagnostic model's ViT patch
size), so every object sits exactly on the patch grid: a *small* object fills one patch, a *large*
one a 2×2 block of patches. Objects never share a patch. The background is a plain grey (level drawn
per scene) with low-variance noise (σ = 3 grey levels), so background tokens are redundant: a good
token-pruning method keeps the object patches and drops the background, random pruning loses
objects. A scene has 3–6 objects; each has a shape (square, circle, triangle, cross), a colour
(red, green, blue, yellow, purple, cyan) and a size (small, large).

**Questions** (one word answers), balanced over seven types:

================  =============================================  ==========================
type              example                                        answers
================  =============================================  ==========================
``colour``        what colour is the circle?                     a colour
``small_colour``  what colour is the small square?               a colour (a 1-patch object)
``shape``         what shape is the red object?                  a shape
``count``         how many blue objects are there?               zero … six
``exist``         is there a green triangle?                     yes / no
``relation``      is the red circle left of the blue square?     yes / no
``compare``       is the red circle larger than the blue cross?  yes / no
                  are there more red objects than green objects?
================  =============================================  ==========================

Referring expressions are unique in their scene (``the circle`` only when exactly one circle is
there; ``the small square`` only when exactly one small square is, although large squares may be
present). Relations compare object centres and are only asked when the centres differ by at least
one patch along the axis; ``left of`` means a smaller x, ``above`` a smaller y.

Each :class:`VQASample` carries the image (H×W×3 uint8), the question, the answer, its type, the
objects (with their patch cells and pixel boxes), ``object_mask`` (8×8 bool: patches holding an
object) and ``relevant_mask`` (8×8 bool: patches of the objects the answer depends on), so later
studies can measure whether a compression method kept the tokens that matter.

**Splits** are deterministic: sample ``i`` of ``VQADataset(split, n, seed)`` is drawn from
``numpy.random.default_rng((seed, SPLIT_IDS[split], i))``, so a split is reproducible, random
access is O(1), and the splits draw from independent streams (the tests check they share no
image-question pair).

**Video** (:class:`VideoVQADataset`): the same scenes over T frames on a static background; exactly
one object moves one patch per frame in one direction, the others stay. Question types:
``direction`` ("which direction does the red circle move?" → left/right/up/down) and
``mover_colour`` ("what colour is the object that moves?").
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

IMAGE_SIZE = 64
PATCH = 8
GRID = IMAGE_SIZE // PATCH  # 8×8 patches
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 50),
    "blue": (40, 70, 225),
    "yellow": (235, 215, 40),
    "purple": (150, 50, 200),
    "cyan": (40, 215, 225),
}
SHAPES = ("square", "circle", "triangle", "cross")
PLURALS = {"square": "squares", "circle": "circles", "triangle": "triangles", "cross": "crosses"}
SIZES = ("small", "large")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")
QUESTION_TYPES = ("colour", "small_colour", "shape", "count", "exist", "relation", "compare")
SMALL_OBJECT_TYPES = ("small_colour",)
RELATIONS = ("left of", "right of", "above", "below")
DIRECTIONS = ("left", "right", "up", "down")
VIDEO_QUESTION_TYPES = ("direction", "mover_colour")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
MIN_OBJECTS, MAX_OBJECTS = 3, 6
P_LARGE = 0.3

ANSWERS: tuple[str, ...] = (*COLOURS, *SHAPES, *NUMBERS, "yes", "no")
VIDEO_ANSWERS: tuple[str, ...] = (*DIRECTIONS, *COLOURS)


class VQAError(ValueError):
    """A bad split name or argument; the message names the allowed values."""


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str                  # "small" (1 patch) or "large" (2×2 patches)
    row: int                   # top-left patch
    col: int

    @property
    def span(self) -> int:
        return 1 if self.size == "small" else 2

    @property
    def cells(self) -> tuple[tuple[int, int], ...]:
        """(row, col) of every patch the object covers."""
        return tuple((self.row + i, self.col + j) for i in range(self.span) for j in range(self.span))

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Pixel box (x0, y0, x1, y1), end-exclusive, on patch boundaries."""
        return (self.col * PATCH, self.row * PATCH, (self.col + self.span) * PATCH, (self.row + self.span) * PATCH)

    @property
    def centre(self) -> tuple[float, float]:
        """(x, y) in patch units."""
        return (self.col + self.span / 2, self.row + self.span / 2)

    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class VQASample:
    image: np.ndarray          # H×W×3 uint8
    question: str
    answer: str
    qtype: str
    objects: tuple[SceneObject, ...]
    object_mask: np.ndarray    # GRID×GRID bool: patches holding an object
    relevant_mask: np.ndarray  # GRID×GRID bool: patches of the objects the answer depends on
    index: int = 0
    split: str = "train"


@dataclass(frozen=True)
class VideoSample:
    frames: np.ndarray         # T×H×W×3 uint8
    question: str
    answer: str
    qtype: str
    objects: tuple[SceneObject, ...]   # positions in frame 0
    mover: int                         # index into objects of the moving object
    direction: str
    object_masks: np.ndarray   # T×GRID×GRID bool
    relevant_masks: np.ndarray  # T×GRID×GRID bool: the moving / asked-about object per frame
    index: int = 0
    split: str = "train"
    meta: dict = field(default_factory=dict)


# -- rendering -------------------------------------------------------------------------------------

def _shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean size×size mask of a shape drawn inside a margin (1 px for a patch, 2 px for 2×2)."""
    m = 1 if size == PATCH else 2
    inner = size - 2 * m
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    c = size / 2
    inside = (xx >= m) & (xx <= size - m) & (yy >= m) & (yy <= size - m)
    if shape == "square":
        mask = inside
    elif shape == "circle":
        mask = (xx - c) ** 2 + (yy - c) ** 2 <= (inner / 2) ** 2 + 0.25
    elif shape == "triangle":  # apex up
        t = (yy - m) / inner  # 0 at the top row, 1 at the bottom
        mask = inside & (np.abs(xx - c) <= t * inner / 2 + 0.5)
    elif shape == "cross":
        w = inner / 6 if size == PATCH else inner / 6
        w = max(w, 1.0)
        mask = inside & ((np.abs(xx - c) <= w) | (np.abs(yy - c) <= w))
    else:
        raise VQAError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return mask


MASKS = {(s, n): _shape_mask(s, n) for s in SHAPES for n in (PATCH, 2 * PATCH)}


def _background(rng: np.random.Generator) -> np.ndarray:
    level = rng.integers(90, 150)
    noise = rng.normal(0.0, 3.0, size=(IMAGE_SIZE, IMAGE_SIZE, 1))
    bg = np.clip(level + noise, 0, 255)
    return np.repeat(bg, 3, axis=2).astype(np.uint8)


def render(objects: Sequence[SceneObject], background: np.ndarray, rng: np.random.Generator | None = None,
           shades: Sequence[int] | None = None) -> np.ndarray:
    """Paint the objects (each on its patch cells) over a copy of the background."""
    img = background.copy()
    for k, o in enumerate(objects):
        n = o.span * PATCH
        x0, y0, _, _ = o.box
        shade = shades[k] if shades is not None else 0
        colour = np.clip(np.array(COLOURS[o.colour]) + shade, 0, 255).astype(np.uint8)
        region = img[y0:y0 + n, x0:x0 + n]
        region[MASKS[(o.shape, n)]] = colour
    return img


def patch_mask(objects: Sequence[SceneObject]) -> np.ndarray:
    """GRID×GRID bool: which patches the objects cover."""
    mask = np.zeros((GRID, GRID), dtype=bool)
    for o in objects:
        for r, c in o.cells:
            mask[r, c] = True
    return mask


def _place(rng: np.random.Generator, occupied: np.ndarray, span: int, margin: int = 0) -> tuple[int, int] | None:
    """A random top-left cell where a span×span object fits on free patches (None when full)."""
    blocked = np.zeros((GRID - span + 1, GRID - span + 1), dtype=bool)
    for i in range(span):
        for j in range(span):
            blocked |= occupied[i:GRID - span + 1 + i, j:GRID - span + 1 + j]
    if margin:
        blocked[:margin], blocked[:, :margin] = True, True
        blocked[blocked.shape[0] - margin:], blocked[:, blocked.shape[1] - margin:] = True, True
    free = np.argwhere(~blocked)  # row-major order
    if len(free) == 0:
        return None
    r, c = free[rng.integers(len(free))]
    return int(r), int(c)


def random_scene(rng: np.random.Generator, n_objects: int | None = None) -> list[SceneObject]:
    n = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1)) if n_objects is None else n_objects
    occupied = np.zeros((GRID, GRID), dtype=bool)
    objects: list[SceneObject] = []
    colours = list(COLOURS)
    for _ in range(n):
        size = "large" if rng.random() < P_LARGE else "small"
        span = 1 if size == "small" else 2
        pos = _place(rng, occupied, span)
        if pos is None:
            size, span = "small", 1
            pos = _place(rng, occupied, span)
        r, c = pos
        occupied[r:r + span, c:c + span] = True
        objects.append(SceneObject(SHAPES[rng.integers(len(SHAPES))], colours[rng.integers(len(colours))], size, r, c))
    return objects


# -- questions -------------------------------------------------------------------------------------

def _unique(objects: Sequence[SceneObject], pred) -> list[int]:
    return [i for i, o in enumerate(objects) if pred(o)]


def _pick_unique(objects: Sequence[SceneObject], values: Sequence[str], matches, rng: np.random.Generator
                 ) -> tuple[str, int] | None:
    """A value (drawn uniformly) that exactly one object matches, and that object's index; None if none."""
    unique = [v for v in values if len(_unique(objects, lambda o, v=v: matches(o, v))) == 1]
    if not unique:
        return None
    v = unique[rng.integers(len(unique))]
    (i,) = _unique(objects, lambda o: matches(o, v))
    return v, i


Question = tuple[str, str, list[int]] | None   # (question, answer, indices of relevant objects), or None


def _ask_colour(objects: list[SceneObject], rng: np.random.Generator, small: bool = False) -> Question:
    picked = _pick_unique(objects, SHAPES, lambda o, s: o.shape == s and (o.size == "small" or not small), rng)
    if picked is None:
        return None
    s, i = picked
    return f"what colour is the {'small ' if small else ''}{s}?", objects[i].colour, [i]


def _ask_small_colour(objects: list[SceneObject], rng: np.random.Generator) -> Question:
    return _ask_colour(objects, rng, small=True)


def _ask_shape(objects: list[SceneObject], rng: np.random.Generator) -> Question:
    picked = _pick_unique(objects, tuple(COLOURS), lambda o, c: o.colour == c, rng)
    if picked is None:
        return None
    c, i = picked
    return f"what shape is the {c} object?", objects[i].shape, [i]


def _ask_count(objects: list[SceneObject], rng: np.random.Generator) -> Question:
    kind = rng.integers(3)
    if kind == 0:
        idx = list(range(len(objects)))
        return "how many objects are there?", NUMBERS[len(idx)], idx
    # pick a present attribute 80 % of the time so answers are not mostly "zero"
    if kind == 1:
        pool = sorted({o.colour for o in objects}) if rng.random() < 0.8 else list(COLOURS)
        c = pool[rng.integers(len(pool))]
        idx = _unique(objects, lambda o: o.colour == c)
        return f"how many {c} objects are there?", NUMBERS[len(idx)], idx
    pool = sorted({o.shape for o in objects}) if rng.random() < 0.8 else list(SHAPES)
    s = pool[rng.integers(len(pool))]
    idx = _unique(objects, lambda o: o.shape == s)
    return f"how many {PLURALS[s]} are there?", NUMBERS[len(idx)], idx


def _ask_exist(objects: list[SceneObject], rng: np.random.Generator) -> Question:
    present = {(o.colour, o.shape) for o in objects}
    if rng.random() < 0.5:
        c, s = sorted(present)[rng.integers(len(present))]
        return f"is there a {c} {s}?", "yes", _unique(objects, lambda o: (o.colour, o.shape) == (c, s))
    # "no": prefer near misses (right colour or right shape present) so both words matter
    absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
    near = [(c, s) for c, s in absent if any(o.colour == c or o.shape == s for o in objects)]
    pool = near if near and rng.random() < 0.8 else absent
    c, s = pool[rng.integers(len(pool))]
    return f"is there a {c} {s}?", "no", []


def _pairs(objects: list[SceneObject]) -> tuple[list[str], list[tuple[int, int]]]:
    """Object names and the ordered pairs of objects whose names are unique in the scene."""
    names = [o.name() for o in objects]
    uniq = [i for i, n in enumerate(names) if names.count(n) == 1]
    return names, [(a, b) for a in uniq for b in uniq if a != b]


def _ask_relation(objects: list[SceneObject], rng: np.random.Generator) -> Question:
    names, pairs = _pairs(objects)
    want_yes = rng.random() < 0.5
    options = []
    for a, b in pairs:
        (xa, ya), (xb, yb) = objects[a].centre, objects[b].centre
        for rel, d in (("left of", xb - xa), ("right of", xa - xb), ("above", yb - ya), ("below", ya - yb)):
            if abs(d) >= 1 and (d > 0) == want_yes:
                options.append((a, b, rel, d > 0))
    if not options:
        return None
    a, b, rel, yes = options[rng.integers(len(options))]
    return f"is the {names[a]} {rel} the {names[b]}?", "yes" if yes else "no", [a, b]


def _ask_compare(objects: list[SceneObject], rng: np.random.Generator) -> Question:
    names, pairs = _pairs(objects)
    want_yes = rng.random() < 0.5
    if rng.random() < 0.5:                        # counts of two colours
        counts = {c: len(_unique(objects, lambda o, c=c: o.colour == c)) for c in COLOURS}
        present = [c for c in COLOURS if counts[c]]
        options = [(c1, c2) for c1 in COLOURS for c2 in COLOURS if c1 != c2 and (c1 in present or c2 in present)
                   and (counts[c1] > counts[c2]) == want_yes]
        if not options:
            return None
        c1, c2 = options[rng.integers(len(options))]
        idx = _unique(objects, lambda o: o.colour in (c1, c2))
        return f"are there more {c1} objects than {c2} objects?", "yes" if want_yes else "no", idx
    diff = [(a, b) for a, b in pairs if objects[a].size != objects[b].size]      # sizes of two objects
    pool = [(a, b) for a, b in diff if (objects[a].size == "large") == want_yes]
    if not want_yes and rng.random() < 0.3:
        pool = [(a, b) for a, b in pairs if objects[a].size == objects[b].size] or pool
    if not pool:
        return None
    a, b = pool[rng.integers(len(pool))]
    yes = objects[a].size == "large" and objects[b].size == "small"
    return f"is the {names[a]} larger than the {names[b]}?", "yes" if yes else "no", [a, b]


# one function per question type; each draws from ``rng`` in a fixed order, so data sets are reproducible
QUESTIONS: dict[str, Callable[[list[SceneObject], np.random.Generator], Question]] = {
    "colour": _ask_colour, "small_colour": _ask_small_colour, "shape": _ask_shape, "count": _ask_count,
    "exist": _ask_exist, "relation": _ask_relation, "compare": _ask_compare,
}


def _ask(qtype: str, objects: list[SceneObject], rng: np.random.Generator) -> Question:
    """(question, answer, indices of relevant objects), or None if the scene cannot host the type."""
    if qtype not in QUESTIONS:
        raise VQAError(f"unknown question type {qtype!r}; expected one of {QUESTION_TYPES}")
    return QUESTIONS[qtype](objects, rng)


def make_sample(rng: np.random.Generator, qtype: str, index: int = 0, split: str = "train") -> VQASample:
    """One scene and one question of ``qtype`` (scenes are redrawn until the type can be asked)."""
    for _ in range(100):
        objects = random_scene(rng)
        if qtype == "small_colour" and rng.random() < 0.5 and len(objects) < MAX_OBJECTS:
            # half the time, add a large object of the same shape as a small one so "small" matters
            smalls = [o for o in objects if o.size == "small"]
            if smalls:
                s = smalls[rng.integers(len(smalls))].shape
                occ = patch_mask(objects)
                pos = _place(rng, occ, 2)
                if pos is not None and sum(o.size == "large" and o.shape == s for o in objects) == 0:
                    objects.append(SceneObject(s, list(COLOURS)[rng.integers(len(COLOURS))], "large", *pos))
        asked = _ask(qtype, objects, rng)
        if asked is not None:
            break
    else:  # pragma: no cover - every type is askable in most scenes
        raise RuntimeError(f"could not ask a {qtype} question")
    question, answer, relevant = asked
    shades = rng.integers(-15, 16, size=len(objects))
    image = render(objects, _background(rng), shades=shades)
    return VQASample(image, question, answer, qtype, tuple(objects), patch_mask(objects),
                     patch_mask([objects[i] for i in relevant]), index, split)


def _split_id(split: str) -> int:
    if split not in SPLIT_IDS:
        raise VQAError(f"unknown split {split!r}; expected one of {tuple(SPLIT_IDS)}")
    return SPLIT_IDS[split]


class _SeededSamples(Sequence):
    """Sample ``i`` is made from its own seed, so any index is reproducible on its own."""

    n: int

    def _make(self, i: int):
        raise NotImplementedError

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self._make(i)

    def __iter__(self) -> Iterator:
        return (self[i] for i in range(self.n))


class VQADataset(_SeededSamples):
    """``n`` deterministic samples of ``split``; question types cycle so each gets n / 7 samples.

    ``types`` restricts the question types (default: all of :data:`QUESTION_TYPES`).
    """

    def __init__(self, split: str = "train", n: int = 1000, seed: int = 0, types: Sequence[str] | None = None):
        self.split, self.n, self.seed = split, int(n), int(seed)
        self._sid = _split_id(split)
        self.types = tuple(types) if types is not None else QUESTION_TYPES
        bad = [t for t in self.types if t not in QUESTION_TYPES]
        if bad:
            raise VQAError(f"unknown question types {bad}; expected a subset of {QUESTION_TYPES}")

    def _make(self, i: int) -> VQASample:
        rng = np.random.default_rng((self.seed, self._sid, i))
        return make_sample(rng, self.types[i % len(self.types)], i, self.split)


# -- video -----------------------------------------------------------------------------------------

_STEP = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}


def make_video_sample(rng: np.random.Generator, qtype: str, frames: int = 4, index: int = 0,
                      split: str = "train") -> VideoSample:
    """A scene whose one object moves a patch per frame over a static background; the others stay."""
    if qtype not in VIDEO_QUESTION_TYPES:
        raise VQAError(f"unknown video question type {qtype!r}; expected one of {VIDEO_QUESTION_TYPES}")
    for _ in range(200):
        objects = random_scene(rng, int(rng.integers(2, 5)))
        mover = int(rng.integers(len(objects)))
        direction = DIRECTIONS[rng.integers(4)]
        dr, dc = _STEP[direction]
        o = objects[mover]
        others = patch_mask([x for k, x in enumerate(objects) if k != mover])
        path = [SceneObject(o.shape, o.colour, o.size, o.row + t * dr, o.col + t * dc) for t in range(frames)]
        ok = all(0 <= p.row and p.row + p.span <= GRID and 0 <= p.col and p.col + p.span <= GRID
                 and not any(others[r, c] for r, c in p.cells) for p in path)
        names = [x.name() for x in objects]
        if ok and (qtype == "mover_colour" or names.count(o.name()) == 1):
            break
    else:  # pragma: no cover
        raise RuntimeError("could not place a moving object")
    background = _background(rng)
    shades = rng.integers(-15, 16, size=len(objects))
    clips, masks, rel = [], [], []
    for t in range(frames):
        objs = [path[t] if k == mover else x for k, x in enumerate(objects)]
        clips.append(render(objs, background, shades=shades))
        masks.append(patch_mask(objs))
        rel.append(patch_mask([path[t]]))
    if qtype == "direction":
        question, answer = f"which direction does the {o.name()} move?", direction
    else:
        question, answer = "what colour is the object that moves?", o.colour
    return VideoSample(np.stack(clips), question, answer, qtype, tuple(objects), mover, direction,
                       np.stack(masks), np.stack(rel), index, split)


class VideoVQADataset(_SeededSamples):
    """``n`` deterministic video samples (T = ``frames``), seeded like :class:`VQADataset`."""

    def __init__(self, split: str = "train", n: int = 100, seed: int = 0, frames: int = 4):
        if frames < 2:
            raise VQAError(f"frames={frames}: a video needs at least 2 frames")
        self.split, self.n, self.seed, self.frames = split, int(n), int(seed), int(frames)
        self._sid = _split_id(split)

    def _make(self, i: int) -> VideoSample:
        rng = np.random.default_rng((self.seed, 100 + self._sid, i))
        qtype = VIDEO_QUESTION_TYPES[i % len(VIDEO_QUESTION_TYPES)]
        return make_video_sample(rng, qtype, self.frames, i, self.split)


# -- vocabulary ------------------------------------------------------------------------------------

def _words(text: str) -> list[str]:
    out: list[str] = []
    for w in text.split():
        core = w.rstrip(string.punctuation)
        out.append(core)
        out.extend(w[len(core):])
    return [x for x in out if x]


QUESTION_WORDS = (
    "what colour is the small large object shape how many objects are there is there a "
    "left of right above below larger than more which direction does move moves that"
)


def vocabulary() -> list[str]:
    """Every word of every question and answer (image and video), sorted; '?' included."""
    words = set(_words(QUESTION_WORDS)) | {"?"}
    words |= set(COLOURS) | set(SHAPES) | set(PLURALS.values()) | set(SIZES) | set(NUMBERS) | {"yes", "no"}
    words |= set(DIRECTIONS)
    return sorted(words)


def more_questions(sample: VQASample, k: int, rng: np.random.Generator,
                   types: Sequence[str] = QUESTION_TYPES) -> list[tuple[str, str, str, np.ndarray]]:
    """Up to ``k`` further (question, answer, type, relevant_mask) about the same scene."""
    out: list[tuple[str, str, str, np.ndarray]] = []
    objects = list(sample.objects)
    for _ in range(4 * k):
        if len(out) == k:
            break
        qtype = types[rng.integers(len(types))]
        asked = _ask(qtype, objects, rng)
        if asked is not None:
            out.append((asked[0], asked[1], qtype, patch_mask([objects[i] for i in asked[2]])))
    return out
