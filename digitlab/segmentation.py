"""Find the digits of a handwritten number: where each one is, and what the classifier makes of it.

    seg = segment(gray, predictor)        # gray: (H, W), either polarity; mode="auto"
    [(s.box, s.probabilities.argmax()) for s in seg.segments]    # left to right, boxes in gray's pixels
    seg.mode, seg.marks                   # "number" or "digit" (what auto chose); dots and dashes left out

digitlab.numbers reads the result as a number; this module finds the digits:
1. The ink is told from the background as for a single digit (`digitlab.preprocessing`: either
   polarity, background from the frame, noise floor) and cut into connected components with
   digitlab.imageops (8-connected, as a pen stroke is); specks are dropped by to_mnist's rule. A
   picture whose ink is taller than SEARCH_HEIGHT is searched shrunk to about that height.
2. Pieces of one digit are put together on geometry: a component clearly shorter than another and
   mostly within its columns (the lifted bar of a 5, a 7's crossbar, a broken stroke), or stacked
   above or below it in the same columns (a digit broken in two), joins it. A group clearly shorter
   than a neighbour, or stopping well short of its top or bottom (the upper stroke of an open 4), is
   marked a piece: the search may join it to its neighbour cheaply, and reading it alone costs.
   A short mark sharing no columns with the others (a decimal point, a minus sign) is left out.
3. A group that may hold touching digits is over-segmented by candidate cuts: each starts where
   both contours dip or the column profile is lowest, and bends (SEAM_BAND) along the path of least
   ink from top to bottom, so slanted or overlapping digits are not cut by a vertical line.
4. LeCun's segmentation-recognition search: each run of consecutive parts that could be one digit
   goes through to_mnist (unchanged) and the classifier, in one batch, and dynamic programming
   picks the partition with the highest sum of each segment's log-probability of its best class,
   less mild priors (`Costs`): a cost per cut, lower for a wide group; a width prior per class
   (LOG_ASPECT); costs for joining two groups, for a piece read alone, for a fragment. So
   geometry proposes and the classifier decides where geometry is unsure. A group whose whole
   reading could not lose to any split is not cut at all, so a clearly written number costs one
   classification per digit.

Modes: "digit" reads the whole picture as one digit, exactly as `digitlab predict` does; "number"
always searches; "auto" (the default) reads one digit, as "digit" does, unless the ink clearly holds
several: one group wider than any MNIST digit (AUTO_WIDE), or several groups that the search reads
as several digits, together wider than tall (AUTO_NUMBER), made of at most AUTO_STROKES components per
digit and with little ink lost as specks (AUTO_DUST: noise falls apart into many more blobs than it
makes "digits", and into dust), and, when there are two, of about
one height and read about as confidently as the picture is read as one digit (AUTO_EVEN, AUTO_SURE).
A picture the search can't take (ink too faint once shrunk, more marks than any number has) is read as
one digit in auto mode too.
So a lone digit is hardly ever split (bench/read_numbers.py: 0-3 of MNIST's 10,000 test digits with
fastcnn, one with seed-ann), and touching digits, or a narrow number such as "11", need mode="number".

The costs were chosen by a grid search on numbers built from MNIST *validation* digits (the bench
reads test digits) and on drawn touching pairs, with seed-ann and fastcnn; docs/numbers.md has the
figures.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from digitlab import imageops
from digitlab.errors import ConfigError, InputImageError
from digitlab.predictor import Predictor
from digitlab.preprocessing import (
    SPECK_FRACTION,
    BadArrayError,
    NoInkError,
    _ink_box,
    _ink_bright,
    _unit_float,
    to_mnist,
)

MAX_DIGITS = 32  # a longer number is refused: crop the picture to the number
MODES = ("auto", "number", "digit")
SEARCH_HEIGHT = 40  # px: a picture whose ink is taller is shrunk (area averaging) to about this for the search

# Geometry, in units of the line's digit height (the median height of the groups at least half as
# tall as the tallest), except where a share of a group's own size is said.
TALL = 0.5  # a segment at least this tall may be a digit; a shorter one is a piece or a mark
NEST = 0.5  # a component with this share of its width within another's columns...
SHORTER = 0.72  # ...and at most this share of its height joins it; a group this much shorter than a
# neighbour is a piece (half of a broken digit)
STACKED = 0.3  # components sharing columns (NEST) and at most this share of their rows: a digit broken across
NEAR = 0.3  # groups closer than this are neighbours...
OFF_LINE = 0.3  # ...and one whose top or bottom stops this share of a taller neighbour's height short of
# the neighbour's is a piece too (the upper stroke of an open 4)
SPLIT_WIDTH = 0.55  # narrower groups are never cut (two touching 1s are about 0.5)
MIN_PIECE = 0.12  # a cut leaves at least this much on either side...
CUT_SPACING = 0.15  # ...and this much between it and the next candidate cut
SEAM_BAND = 0.2  # a cut may bend this far either side of where it starts
MAX_CUTS = 8  # candidate cuts per group
HOLE_COST = 0.5  # a cut pays this per pixel of a loop's hole it passes (1 per pixel of full ink): through a
# hole it crosses the loop twice, so cuts pass where digits touch rather than through a 0 or an 8
FRAGMENT = 0.75  # a segment cut from a group and shorter than this share of it is likely a fragment (the
# loop of a 9, the bar of a 4): two touching digits leave two pieces of about full height
MAX_WIDE = 1.8  # a run of parts wider than this is not tried as one digit (a whole group always is)
AUTO_WIDE = 2.3  # auto mode reads one group as one digit unless it is this many times wider than tall: no
# MNIST digit is (the widest of the 70,000 is 2.22)...
AUTO_NUMBER = 0.9  # ...and several groups as a number only if the ink is at least this many times wider
# than tall (most single digits are narrower, most numbers wider: a narrow "11" needs mode="number"); and
# two digits only if they are of about one height (the shorter at least AUTO_EVEN of the taller) and read
# with at least AUTO_SURE of the confidence the picture gets read as one digit
AUTO_EVEN = 0.7
AUTO_SURE = 0.7
AUTO_STROKES = 3  # ...and only if its ink is in at most this many components per digit read: a digit is
# written in one to three (an open 4, a 5 with its bar lifted); noise falls apart into blobs, 5 to 30 for
# each "digit" the search makes of them (docs/numbers.md)...
AUTO_DUST = 0.05  # ...and with at most this share of its ink dropped as specks: writing leaves under 1%,
# noise 1-15%


@dataclass(frozen=True)
class Costs:
    """The priors of the search, in nats (natural-log probability, like the classifier's scores)."""
    cut: float = 0.25  # per cut: a split must make the digits that much likelier...
    cut_narrow: float = 0.5  # ...plus this per digit height the group is narrower than `two_wide`...
    two_wide: float = 1.3  # (a narrower group is likely one digit)
    cut_stroke: float = 0.25  # ...plus this per stroke crossed after the first
    join: float = 4.0  # joining two groups of about the same height into one digit...
    join_piece: float = 0.5  # ...or a piece with its neighbour...
    join_gap: float = 10.0  # ...plus this per digit height of gap between them
    short: float = 20.0  # a segment shorter than TALL: a piece should join its digit
    piece: float = 2.0  # a piece read as a digit on its own
    fragment: float = 1.0  # a segment cut from a group, less than FRAGMENT of the group's height
    width_weight: float = 0.5  # weight of the width prior (1: its log-likelihood as measured)
    flat: float = 0.8  # the width prior measures width against at least this share of the line height


COSTS = Costs()
MIN_LOG_P = math.log(1e-7)  # log-probabilities are clipped as digitlab.scoring clips them
# The width prior: log(width / height) of each class's ink box is close to normal; mean and
# standard deviation measured on MNIST's 60,000 training digits (pixels > 0). A segment wider
# than its class's mean pays its log-likelihood (0 at the mean): two touching digits make an
# unlikely 0 or 7. Narrow ones pay nothing: people write narrower digits than MNIST's.
LOG_ASPECT = np.array([(-0.091, 0.175), (-0.851, 0.432), (-0.059, 0.192), (-0.203, 0.195), (-0.209, 0.195),
                       (-0.063, 0.230), (-0.288, 0.204), (-0.230, 0.200), (-0.246, 0.207), (-0.353, 0.197)])
BATCH_SIZES = (16, 64, 256)  # candidates are classified in batches padded to one of these sizes:
# a JAX model compiles once per batch shape (about 0.2 s), so varying sizes would recompile each time


class TooManyDigitsError(InputImageError):
    """More digits than MAX_DIGITS (or more marks than a number of that length could make)."""


class _TooManyMarks(TooManyDigitsError):
    """More separate marks than a number of MAX_DIGITS digits could make: noise, not writing."""


@dataclass(frozen=True)
class Box:
    """Where a digit is, in the input picture's pixels: columns left..left+width, rows top..top+height."""
    left: int
    top: int
    width: int
    height: int

    def to_json(self) -> dict:
        return {"left": self.left, "top": self.top, "width": self.width, "height": self.height}


@dataclass
class Segment:
    """One digit found by `segment`: where it is and what the classifier made of it."""
    box: Box
    input28: np.ndarray  # (28, 28) float32, the segment through to_mnist
    probabilities: np.ndarray  # (classes,)


@dataclass
class Segmentation:
    """What `segment` found: the digits, how it read them, and the marks it left out."""
    segments: list[Segment]  # left to right
    mode: str  # "digit" (the whole picture as one digit) or "number"
    marks: list[Box]
    groups: int = 1  # separate pieces of ink the digits were read from (marks left out)


def segment(gray, predictor: Predictor, mode: str = "auto") -> Segmentation:
    """Find the digits in `gray` (see the module docstring); each is classified by `predictor`."""
    if mode not in MODES:
        raise ConfigError(f"unknown reading mode {mode!r}: use one of {', '.join(MODES)}")
    x = _unit_float(gray, "image")
    if x.ndim != 2 or min(x.shape) == 0:
        raise BadArrayError(f"image has shape {x.shape}: expected a 2-D grayscale picture")
    if mode == "digit":
        return _one_digit(x, predictor)
    try:
        page = _Page.of(x)  # raises NoInkError on a blank picture, TooManyDigitsError on a long number
    except (NoInkError, _TooManyMarks):
        if mode == "auto":  # faint ink the search's shrunk copy loses, or noise: the single-digit reading's
            return _one_digit(x, predictor)  # to judge (NoInkError there too if the picture is blank)
        raise
    if mode == "auto" and len(page.groups) == 1 and page.groups[0].width <= AUTO_WIDE * page.groups[0].height:
        return _one_digit(x, predictor)  # one piece of writing: read as `digitlab predict` reads it
    found = page.search(predictor)
    if mode == "auto":
        return _number_or_digit(x, page, found, predictor)
    return Segmentation(found, "number", page.marks_box(), len(page.groups))


def _number_or_digit(x: np.ndarray, page: _Page, found: list[Segment], predictor: Predictor) -> Segmentation:
    """Auto mode, after a search: the number found, or the picture as one digit if it is not clearly a number."""
    every = page.groups + page.marks
    width = max(g.right for g in every) - min(g.left for g in every)
    height = max(g.bottom for g in every) - min(g.top for g in every)
    components = sum(len(g.labels) for g in every)
    dust = 1 - float(page.ink[page.labels > 0].sum()) / float(page.ink.sum())
    if (len(found) < 2 or width < AUTO_NUMBER * height or components > AUTO_STROKES * len(found)
            or dust > AUTO_DUST):
        return _one_digit(x, predictor)
    if len(found) == 2:  # one digit broken in two, or with a stray line beside it, can look like two
        one = _one_digit(x, predictor)
        heights = [s.box.height for s in found]
        confidence = np.prod([s.probabilities.max() for s in found])
        if min(heights) < AUTO_EVEN * max(heights) or confidence < AUTO_SURE * one.segments[0].probabilities.max():
            return one
    return Segmentation(found, "number", page.marks_box(), len(page.groups))


def _one_digit(x: np.ndarray, predictor: Predictor) -> Segmentation:
    """The whole picture as one digit, through to_mnist at full size: what `digitlab predict` does."""
    x28 = to_mnist(x)  # raises NoInkError on a blank picture
    rows, cols = _ink_box(_ink_bright(x))  # where to_mnist found the digit, specks left out
    box = Box(int(cols.start), int(rows.start), int(cols.stop - cols.start), int(rows.stop - rows.start))
    return Segmentation([Segment(box, x28, predictor.predict_proba(x28[None])[0])], "digit", [])


@dataclass
class _Group:
    """Connected components that make one piece of writing (a digit, a part of one, or touching digits)."""
    labels: list[int]  # its component labels in _Page.labels
    top: int
    bottom: int  # exclusive
    left: int
    right: int  # exclusive
    mass: float  # ink, summed
    cx: float  # centre of mass, column
    piece: bool = False  # clearly shorter than a neighbour, or stopping short of its top or bottom: likely
    # part of a digit, not one

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    def overlap(self, other: _Group) -> int:
        """Columns shared with `other` (negative: the gap between them)."""
        return min(self.right, other.right) - max(self.left, other.left)


class _Page:
    """One line of writing: the ink as groups in reading order, at the scale of the search."""

    def __init__(self, full: np.ndarray, x: np.ndarray, ink: np.ndarray, factor: int, labels: np.ndarray,
                 groups: list[_Group], marks: list[_Group], height: float):
        self.full = full  # the picture as given, float32 [0, 1], either polarity
        self.x = x  # the picture shrunk by `factor` (1: not shrunk), where the search works
        self.ink = ink  # ink 1, background 0, in `x` (preprocessing's view of it)
        self.factor = factor
        self.labels = labels  # component label per pixel of `x`; 0 = background or speck
        self.groups = groups  # left to right, marks excluded
        self.marks = marks
        self.height = height  # the line's digit height in `x`, px: the unit of the geometry
        support = ink > 0
        self.background = float(np.median(x[~support])) if (~support).any() else float(np.median(x))

    @classmethod
    def of(cls, full: np.ndarray) -> _Page:
        ink = _ink_bright(full)  # raises NoInkError
        rows = np.flatnonzero(ink.any(1))
        factor = max(1, int((rows[-1] - rows[0] + 1) // SEARCH_HEIGHT))
        x = _shrink(full, factor)
        if factor > 1:
            ink = _ink_bright(x)
        labels, n = imageops.label(ink > 0, imageops.SQUARE)  # 8-connected, as a pen stroke is
        mass = imageops.sum_labels(ink, labels, np.arange(1, n + 1))
        kept = np.flatnonzero(mass >= SPECK_FRACTION * mass.max()) + 1  # not dust, as to_mnist sees it
        labels[~np.isin(labels, kept)] = 0
        if len(kept) > 8 * MAX_DIGITS:
            raise _TooManyMarks(
                f"found {len(kept)} separate marks in the picture, too many for a number of at most {MAX_DIGITS} "
                f"digits: crop the picture to the number, or check that it is not noise")
        boxes = imageops.find_objects(labels)
        centres = imageops.center_of_mass(ink, labels, kept)
        comps = []
        for k, (_, cx) in zip(kept, centres, strict=True):
            rs, cs = boxes[k - 1]
            comps.append(_Group([int(k)], rs.start, rs.stop, cs.start, cs.stop, float(mass[k - 1]), float(cx)))
        comps = _merge_pieces(comps)
        height = _line_height(comps)
        groups, marks = [], []
        for g in comps:  # a short mark sharing no columns with any other: a dot or a dash, not a digit
            alone = all(g.overlap(o) < 0 for o in comps if o is not g)
            (marks if g.height < TALL * height and alone and len(comps) > 1 else groups).append(g)
        groups.sort(key=lambda g: g.cx)
        tall = sum(g.height >= TALL * height for g in groups)
        if tall > MAX_DIGITS:
            raise TooManyDigitsError(f"found about {tall} digits, more than the limit of {MAX_DIGITS}: "
                                     f"crop the picture to a shorter number")
        for g in groups:
            g.piece = any(_part_of(g, o) for o in groups if o is not g and g.overlap(o) > -NEAR * height)
        return cls(full, x, ink, factor, labels, groups, sorted(marks, key=lambda g: g.left), height)

    def box(self, top: int, left: int, bottom: int, right: int) -> Box:
        """A box of the search's picture in the input picture's pixels."""
        f, (h, w) = self.factor, self.full.shape
        top, left, bottom, right = top * f, left * f, min(h, bottom * f), min(w, right * f)
        return Box(int(left), int(top), int(right - left), int(bottom - top))

    def marks_box(self) -> list[Box]:
        return [self.box(m.top, m.left, m.bottom, m.right) for m in self.marks]

    # ------------------------------------------------------------ the search

    def search(self, predictor: Predictor, costs: Costs = COSTS) -> list[Segment]:
        """Over-segment, classify every plausible run of parts, keep the likeliest partition."""
        lattice = self.lattice(predictor, costs)
        found = [Segment(self.box(*lattice.runs[r][2:]), lattice.images[r], lattice.proba[r])
                 for r in lattice.best(costs)]
        if len(found) > MAX_DIGITS:
            raise TooManyDigitsError(f"read {len(found)} digits, more than the limit of {MAX_DIGITS}: "
                                     f"crop the picture to a shorter number")
        return found

    def lattice(self, predictor: Predictor, costs: Costs = COSTS) -> _Lattice:
        """The runs of consecutive parts that could be one digit, each normalised and classified.

        Pruned in two steps, so that a clearly written number costs one classification per digit:
        each group is first read whole, and only a group whose reading could lose to a split is
        cut; two groups are only tried as one digit where that could win over reading them apart.
        """
        h = self.height
        owner, _, _ = self._parts(split=set())  # part k = group k
        first = [(k, k + 1, g.top, g.left, g.bottom, g.right) for k, g in enumerate(self.groups)]
        images, proba = self._read_runs(predictor, owner, first)
        fit = _fit(proba, np.array([_aspect(r, costs, h) for r in first]), costs)
        fit = np.where([im is None for im in images], -np.inf, fit)
        split = {k for k, g in enumerate(self.groups)
                 if g.width >= SPLIT_WIDTH * h and fit[k] < -_least_cut_cost(costs, g.width / h)}
        joinable = [a.piece or b.piece or fit[k] + fit[k + 1] < -costs.join
                    for k, (a, b) in enumerate(zip(self.groups, self.groups[1:]))]
        owner, groups, cuts = self._parts(split)
        n = len(groups)
        spans = imageops.find_objects(owner + 1, max_label=n)  # each part's bounding box
        runs, known = [], {}
        for i in range(n):
            for j in range(i + 1, n + 1):
                if j > i + 1 and groups[j - 1] != groups[j - 2] and not joinable[groups[j - 2]]:
                    break
                top, bottom = min(s[0].start for s in spans[i:j]), max(s[0].stop for s in spans[i:j])
                left, right = min(s[1].start for s in spans[i:j]), max(s[1].stop for s in spans[i:j])
                k = groups[i]
                whole = groups[j - 1] == k and (i == 0 or groups[i - 1] != k) and (j == n or groups[j] != k)
                if right - left > MAX_WIDE * h and not whole and j > i + 1:  # a part or a group is always tried
                    if groups[j - 1] != k:
                        break
                    continue  # too wide, but the whole of group k may still come
                if whole:
                    known[len(runs)] = k  # exactly group k: read already
                runs.append((i, j, top, left, bottom, right))
        todo = [r for r in range(len(runs)) if r not in known]
        more_images, more_proba = self._read_runs(predictor, owner, [runs[r] for r in todo])
        all_images = [images[known[r]] if r in known else None for r in range(len(runs))]
        all_proba = np.zeros((len(runs), proba.shape[1]), np.float32)
        for r, k in known.items():
            all_proba[r] = proba[k]
        for r, im, p in zip(todo, more_images, more_proba, strict=True):
            all_images[r], all_proba[r] = im, p
        keep = [r for r in range(len(runs)) if all_images[r] is not None]  # a faint sliver can't be normalised
        if not keep:
            raise NoInkError("no digit found: the marks in the picture are too faint to read")
        return _Lattice(self, groups, cuts, [runs[r] for r in keep], [all_images[r] for r in keep], all_proba[keep])

    def _read_runs(self, predictor: Predictor, owner: np.ndarray, runs: list) -> tuple[list, np.ndarray]:
        """Each run through to_mnist (None where it can't be normalised) and the classifier, in one batch."""
        images = []
        for i, j, top, left, bottom, right in runs:
            try:
                images.append(self._digit28(owner, i, j, top, left, bottom, right))
            except InputImageError:
                images.append(None)
        proba = np.zeros((len(images), len(predictor.class_names)), np.float32)
        ok = [k for k, im in enumerate(images) if im is not None]
        if ok:
            proba[ok] = _classify(predictor, np.stack([images[k] for k in ok]))
        return images, proba

    def _parts(self, split: set[int]) -> tuple[np.ndarray, list[int], list[int]]:
        """Over-segmentation of the groups in `split`, the others kept whole.

        Returns the part index of each ink pixel (-1: none), each part's group, and the strokes
        crossed by the cut before each part (0: no cut, the first part of a group).
        """
        owner = np.full(self.labels.shape, -1, dtype=np.int32)
        groups: list[int] = []
        cuts: list[int] = []
        for k, g in enumerate(self.groups):
            window = (slice(g.top, g.bottom), slice(g.left, g.right))
            mine = np.isin(self.labels[window], g.labels)
            ink = np.where(mine, self.ink[window], 0)
            seams = _seams(ink, self.height) if k in split else []
            part = np.zeros(ink.shape, dtype=np.int32)
            columns = np.arange(ink.shape[1])
            for path, _ in seams:
                part += columns[None, :] >= path[:, None]  # right of the seam (the seam itself goes right)
            present = np.unique(part[mine])  # a part between two seams may hold no ink: skip it
            strokes = [0] + [c for _, c in seams]
            lookup = np.full(len(seams) + 1, -1, dtype=np.int32)
            lookup[present] = len(groups) + np.arange(len(present))
            for m, p in enumerate(present):
                # A dropped part leaves its neighbours separated by both seams: count the costlier.
                cuts.append(0 if m == 0 else max(strokes[present[m - 1] + 1:p + 1]))
                groups.append(k)
            owner[window][mine] = lookup[part[mine]]
        return owner, groups, cuts

    def _digit28(self, owner: np.ndarray, i: int, j: int, top: int, left: int, bottom: int, right: int) -> np.ndarray:
        """Parts i..j-1 alone, other ink replaced by background, through to_mnist."""
        h, w = owner.shape
        top, left, bottom, right = max(0, top - 1), max(0, left - 1), min(h, bottom + 1), min(w, right + 1)
        o = owner[top:bottom, left:right]
        mine = (o >= i) & (o < j)
        keep = mine | (imageops.binary_dilation(mine) & (o < 0))  # with its anti-aliased rim
        crop = np.where(keep, self.x[top:bottom, left:right], self.background)
        pad = max(2, round(0.1 * max(crop.shape)))  # a frame of background, where to_mnist looks for it
        return to_mnist(np.pad(crop, pad, constant_values=self.background))


@dataclass
class _Lattice:
    """The search's candidates: parts, runs of parts, and what the classifier made of each run."""
    page: _Page
    groups: list[int]  # each part's group
    cuts: list[int]  # strokes crossed by the cut before each part (0: none, a group's first part)
    runs: list[tuple[int, int, int, int, int, int]]  # (first part, end part, top, left, bottom, right)
    images: list[np.ndarray]  # each run through to_mnist
    proba: np.ndarray  # (runs, classes)

    def best(self, costs: Costs) -> list[int]:
        """Indices into `runs` of the likeliest partition of the parts, left to right."""
        fit = _fit(self.proba, np.array([_aspect(r, costs, self.page.height) for r in self.runs]), costs)
        scores = [float(f) - self._cost(costs, i, j, b - t)
                  for (i, j, t, _, b, _), f in zip(self.runs, fit, strict=True)]
        return _best_path(len(self.groups), [(i, j) for i, j, *_ in self.runs], scores,
                          [self._cut_cost(costs, k) for k in range(len(self.groups))])

    def _cut_cost(self, costs: Costs, k: int) -> float:
        """The cost of parting part k from the one before it: 0 between groups."""
        if not self.cuts[k]:
            return 0.0
        width = self.page.groups[self.groups[k]].width / self.page.height
        return _least_cut_cost(costs, width) + costs.cut_stroke * (self.cuts[k] - 1)

    def _cost(self, costs: Costs, i: int, j: int, height: int) -> float:
        """The priors of one segment besides its width, nats: too short, a piece alone, joining groups."""
        page, groups = self.page, self.groups
        cost = costs.short if height < TALL * page.height else 0.0
        first = page.groups[groups[i]]
        if all(g == groups[i] for g in groups[i:j]):
            if first.piece:
                cost += costs.piece
            whole = (i == 0 or groups[i - 1] != groups[i]) and (j == len(groups) or groups[j] != groups[i])
            if not whole and height < FRAGMENT * first.height:
                cost += costs.fragment
        for a, b in zip(groups[i:j], groups[i + 1:j]):
            if a != b:
                ga, gb = page.groups[a], page.groups[b]
                gap = max(0, -ga.overlap(gb))
                cost += (costs.join_piece if ga.piece or gb.piece else costs.join) + costs.join_gap * gap / page.height
        return cost


def _shrink(x: np.ndarray, factor: int) -> np.ndarray:
    """Area-average `factor` x `factor` blocks (the far edges padded with their own values)."""
    if factor == 1:
        return x
    h, w = -(-x.shape[0] // factor) * factor, -(-x.shape[1] // factor) * factor
    x = np.pad(x, ((0, h - x.shape[0]), (0, w - x.shape[1])), mode="edge")
    return x.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3), dtype=np.float32)


def _classify(predictor: Predictor, images: np.ndarray) -> np.ndarray:
    """predict_proba on a batch padded with blank images to one of BATCH_SIZES (or a multiple of the last)."""
    n = len(images)
    size = next((b for b in BATCH_SIZES if b >= n), -(-n // BATCH_SIZES[-1]) * BATCH_SIZES[-1])
    padded = np.zeros((size, *images.shape[1:]), dtype=np.float32)
    padded[:n] = images
    return predictor.predict_proba(padded)[:n]


def _least_cut_cost(costs: Costs, width: float) -> float:
    """The cost of a cut through one stroke of a group `width` line heights wide, nats."""
    return costs.cut + costs.cut_narrow * max(0.0, costs.two_wide - width)


def _aspect(run: tuple, costs: Costs, height: float) -> float:
    # Width against the taller of the segment and most of the line: a flat digit is not a wide one.
    _, _, top, left, bottom, right = run
    return (right - left) / max(bottom - top, costs.flat * height)


def _fit(proba: np.ndarray, aspect: np.ndarray, costs: Costs) -> np.ndarray:
    """Each segment's score from the classifier: log-probability of its likeliest class, width considered."""
    logp = np.log(np.clip(proba, math.exp(MIN_LOG_P), 1))
    return np.max(logp + costs.width_weight * _width_prior(aspect, logp.shape[1]), axis=1)


def _width_prior(aspect: np.ndarray, classes: int) -> np.ndarray:
    """(n, classes): log-likelihood of each segment's width/height under each class, 0 up to the class mean."""
    if classes != len(LOG_ASPECT):  # not a digit model: no prior
        return np.zeros((len(aspect), classes))
    z = (np.log(aspect)[:, None] - LOG_ASPECT[:, 0]) / LOG_ASPECT[:, 1]
    return -0.5 * np.maximum(z, 0) ** 2


def _merge_pieces(comps: list[_Group]) -> list[_Group]:
    """Join each piece to the component it belongs to: clearly shorter and mostly within its columns, or
    above or below it in the same columns (one line of writing has nothing stacked but broken digits)."""
    parent = list(range(len(comps)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for a, ca in enumerate(comps):
        best, best_overlap = None, 0
        for b, cb in enumerate(comps):
            ov = ca.overlap(cb)
            rows = min(ca.bottom, cb.bottom) - max(ca.top, cb.top)  # rows shared (negative: a gap)
            stacked = rows <= STACKED * min(ca.height, cb.height) and ov >= NEST * min(ca.width, cb.width)
            within = ca.height <= SHORTER * cb.height and ov >= NEST * ca.width
            if b != a and (within or stacked) and ov > best_overlap:
                best, best_overlap = b, ov
        if best is not None and root(a) != root(best):
            parent[root(a)] = root(best)
    merged: dict[int, list[_Group]] = {}
    for i, c in enumerate(comps):
        merged.setdefault(root(i), []).append(c)
    out = []
    for cs in merged.values():
        mass = sum(c.mass for c in cs)
        out.append(_Group([lab for c in cs for lab in c.labels], min(c.top for c in cs), max(c.bottom for c in cs),
                          min(c.left for c in cs), max(c.right for c in cs), mass,
                          sum(c.cx * c.mass for c in cs) / mass))
    return out


def _part_of(g: _Group, o: _Group) -> bool:
    """Whether `g` looks like a piece of a digit beside `o`: clearly shorter, or missing one end of its rows."""
    off = OFF_LINE * o.height
    return g.height <= o.height and (g.height <= SHORTER * o.height or g.bottom < o.bottom - off
                                     or g.top > o.top + off)


def _line_height(groups: list[_Group]) -> float:
    """The typical digit height, px: the median height of the groups at least half as tall as the tallest."""
    heights = np.array([g.height for g in groups], dtype=float)
    return float(np.median(heights[heights >= 0.5 * heights.max()]))


def _seams(ink: np.ndarray, height: float) -> list[tuple[np.ndarray, int]]:
    """Candidate cuts through one group's ink, left to right: (column per row, strokes crossed).

    Each starts from a column where touching digits may meet: a minimum of the column ink profile,
    or a valley of the upper or lower contour (where a stroke of one digit runs into the next).
    From there the cut is the path from top to bottom crossing the least ink, free to bend by
    SEAM_BAND either way (a slanted pair of digits is not split by a vertical line).
    """
    h, w = ink.shape
    has = ink > 0
    profile = imageops.uniform_filter1d(ink.sum(0), 3)
    top = np.where(has.any(0), has.argmax(0), h)  # first ink row per column; h where there is none
    bottom = np.where(has.any(0), h - 1 - has[::-1].argmax(0), -1)
    size = 2 * max(1, round(0.1 * height)) + 1  # the window an extremum must win
    dip = profile <= imageops.minimum_filter1d(profile, size)
    valleys = ((top >= imageops.maximum_filter1d(top, size)) & (top > 0)).astype(int) + (
        (bottom <= imageops.minimum_filter1d(bottom, size)) & (bottom < h - 1))
    margin = max(2, round(MIN_PIECE * height))
    spacing = max(2, round(CUT_SPACING * height))
    starts: list[int] = []
    # Where both contours dip first (two round digits touching meet there, on a ridge of the
    # profile), then one contour, then the least inky columns.
    for c in sorted(np.flatnonzero(dip | (valleys > 0)), key=lambda c: (-valleys[c], profile[c], c)):
        if margin <= c <= w - margin and all(abs(c - s) >= spacing for s in starts):
            starts.append(int(c))
    starts = sorted(starts[:MAX_CUTS])
    band = max(1, round(SEAM_BAND * height))
    # A cut through a loop's hole crosses the loop twice: count the hole as ink, so that cuts
    # pass where digits touch rather than through a 0 or an 8.
    cost = np.where(imageops.binary_fill_holes(has) & ~has, HOLE_COST, ink)
    seams = []
    for k, c in enumerate(starts):
        lo = max(c - band, (starts[k - 1] + c) // 2 + 1 if k else 0)  # bands don't overlap: seams never cross
        hi = min(c + band, (c + starts[k + 1]) // 2 if k + 1 < len(starts) else w - 1)
        path = _cheapest_path(cost[:, lo:hi + 1]) + lo
        crossed = ink[np.arange(h), path] > 0.5
        strokes = int(np.count_nonzero(crossed[1:] & ~crossed[:-1]) + crossed[0])
        seams.append((path, max(1, strokes)))  # it parts connected ink, so it crosses at least one stroke
    return seams


def _cheapest_path(cost: np.ndarray) -> np.ndarray:
    """The top-to-bottom path through `cost` (one column per row, moving at most one column a row) of least sum."""
    h, w = cost.shape
    cost = cost + 0.01  # a little per pixel, and a little more per bend: straight through empty space
    bend = 0.005
    total = cost[0].copy()
    step = np.zeros((h, w), dtype=np.int8)  # -1, 0, 1: the column before, relative
    inf = np.full(1, np.inf)
    for r in range(1, h):
        options = np.stack([np.concatenate([inf, total[:-1]]) + bend, total, np.concatenate([total[1:], inf]) + bend])
        choice = options.argmin(0)
        step[r] = choice - 1
        total = cost[r] + options[choice, np.arange(w)]
    path = np.empty(h, dtype=np.int64)
    path[-1] = int(np.argmin(total))
    for r in range(h - 1, 0, -1):
        path[r - 1] = path[r] + step[r, path[r]]
    return path


def _best_path(n: int, runs: list[tuple[int, int]], scores: list[float], cut_cost: list[float]) -> list[int]:
    """Indices into `runs` of the partition of parts 0..n-1 with the highest total score (dynamic programming).

    `cut_cost[i]` is paid when a segment starts at part i > 0 (the parts before and after are parted).
    """
    best = np.full(n + 1, -np.inf)
    best[0] = 0.0
    back = [-1] * (n + 1)
    ending: dict[int, list[int]] = {}
    for r, (_, j) in enumerate(runs):
        ending.setdefault(j, []).append(r)
    for j in range(1, n + 1):
        for r in ending.get(j, []):
            i = runs[r][0]
            total = best[i] + scores[r] - (cut_cost[i] if i > 0 else 0.0)
            if total > best[j]:
                best[j], back[j] = total, r
    if not np.isfinite(best[n]):
        raise InputImageError("could not divide the ink into digits: crop the picture to the number")
    path, j = [], n
    while j > 0:
        path.append(back[j])
        j = runs[back[j]][0]
    return path[::-1]
