"""Severity specification of every requisite of the synthetic portrait set.

Every requisite has a continuous *severity* and a *threshold*: the image is non-compliant (label 0)
when ``severity > threshold``. For each image and requisite the renderer draws, with probability
``active_prob``, a severity uniformly from ``active_range`` (a range that straddles the threshold, so a
share of images lies near it and the EER cannot reach 0 by design), and otherwise from the
``baseline`` distribution, which always stays at or below the threshold (natural variation of
compliant photos). Lengths are in pixels of the 224x224 reference frame and scale with the image
size; lengths relative to the face are in units of the face half-width ``a``.

The table in :data:`SPECS` is the single source of the documentation: :func:`markdown_table`
renders it (README and ``python -m icao_mtl.synth --table``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..requisites import IDS


@dataclass(frozen=True)
class DefectSpec:
    """How one requisite is drawn and labelled.

    Attributes:
        id: requisite id.
        variable: what the severity measures, with its unit.
        drawing: what the renderer draws.
        threshold: non-compliant when ``severity > threshold``.
        active_prob: probability that the defect is drawn from ``active_range``.
        active_range: ``(low, high)`` of the uniform severity of a drawn defect.
        baseline: ``("zero",)``, ``("uniform", low, high)`` or ``("halfnormal", sigma, clip)``:
            severity of images without the defect (always <= threshold).
        applies: ``"all"``; ``"glasses"`` (severity undefined and label -1 without glasses); or
            ``"glasses_else_compliant"`` (drawn on glasses only; compliant without glasses).
    """

    id: str
    variable: str
    drawing: str
    threshold: float
    active_prob: float
    active_range: tuple[float, float]
    baseline: tuple = ("zero",)
    applies: str = "all"

    def sample(self, rng: np.random.Generator) -> float:
        """Draw one severity (float)."""
        if rng.random() < self.active_prob:
            return float(rng.uniform(*self.active_range))
        return self.sample_baseline(rng)

    def sample_baseline(self, rng: np.random.Generator) -> float:
        kind = self.baseline[0]
        if kind == "zero":
            return 0.0
        if kind == "uniform":
            return float(rng.uniform(self.baseline[1], self.baseline[2]))
        if kind == "halfnormal":
            return float(min(abs(rng.normal(0.0, self.baseline[1])), self.baseline[2]))
        raise ValueError(f"unknown baseline kind {kind!r} for {self.id}")

    def expected_prevalence(self) -> float:
        """Expected share of non-compliant images among those where the requisite applies."""
        lo, hi = self.active_range
        above = min(max((hi - self.threshold) / (hi - lo), 0.0), 1.0)
        share = self.active_prob * above
        return share * GLASSES_PROB if self.applies == "glasses_else_compliant" else share

    def baseline_text(self) -> str:
        kind = self.baseline[0]
        if kind == "zero":
            return "0 (not drawn)"
        if kind == "uniform":
            return f"U[{self.baseline[1]:g}, {self.baseline[2]:g}]"
        return f"abs N(0, {self.baseline[1]:g}) clipped at {self.baseline[2]:g}"


_S = DefectSpec
SPECS: dict[str, DefectSpec] = {s.id: s for s in (
    _S("mouth", "mouth opening / mouth width", "lips as an open ellipse with a dark interior; teeth above 0.15",
       0.18, 0.24, (0.04, 0.6), ("uniform", 0.0, 0.06)),
    _S("rotation", "max(|roll|, |yaw|, |pitch|) in degrees",
       "roll turns the head in the image plane; yaw and pitch move the inner features over a curved face",
       8.0, 0.26, (3.0, 22.0), ("halfnormal", 2.0, 6.0)),
    _S("l_away", "pupil offset / eye half-width", "iris and pupil displaced from the eye centre",
       0.4, 0.22, (0.15, 0.9), ("halfnormal", 0.08, 0.3)),
    _S("eyes_closed", "eyelid closure (0 open, 1 shut), worst eye", "upper lid covers the eye; shut eyes are lash arcs",
       0.65, 0.22, (0.3, 1.0), ("uniform", 0.0, 0.3)),
    _S("close", "proximity and size of another face, toy or hand (0 none, 1 touching)",
       "a small second face, a teddy or a hand beside the head, bigger and nearer with severity",
       0.5, 0.22, (0.15, 1.0)),
    _S("hat", "share of the head covered from the top (0 none)", "cap with brim, beanie or wide-brimmed hat",
       0.3, 0.2, (0.05, 1.0)),
    _S("dark_glasses", "lens tint opacity (faces without glasses: 0)", "lenses filled with a dark tint",
       0.5, 0.4, (0.2, 1.0), ("uniform", 0.0, 0.25), applies="glasses_else_compliant"),
    _S("frames_heavy", "frame thickness in reference pixels", "spectacle rims and bridge drawn with that thickness",
       2.8, 0.4, (1.5, 6.5), ("uniform", 0.8, 2.2), applies="glasses"),
    _S("frame_eyes", "share of the eye opening under the upper rim (<0: rim above the eye)",
       "glasses shifted down so the upper rim crosses the eye", 0.25, 0.4, (-0.2, 1.0),
       ("uniform", -0.8, 0.0), applies="glasses"),
    _S("flash_lenses", "share of the lens area covered by flash glare", "white soft-edged blobs on one or both lenses",
       0.06, 0.4, (0.01, 0.3), ("uniform", 0.0, 0.02), applies="glasses"),
    _S("veil", "share of the face covered from the chin up to the nose", "semi-opaque cloth over the lower face",
       0.3, 0.2, (0.1, 1.0)),
    _S("reflection", "peak intensity of skin hot-spots (fraction to white)", "bright specular blobs on forehead, nose, cheeks",
       0.45, 0.22, (0.2, 0.95), ("uniform", 0.0, 0.2)),
    _S("light", "|exposure| in stops (log2 of the gain)", "global exposure gain, under or over",
       0.65, 0.24, (0.3, 1.6), ("halfnormal", 0.15, 0.5)),
    _S("sh_face", "darkness of the shadow across the face (1 - gain)", "soft-edged shadow over part of the face",
       0.3, 0.22, (0.1, 0.75), ("uniform", 0.0, 0.12)),
    _S("sh_head", "darkness of the shadow cast on the background (1 - gain)",
       "blurred, offset head-and-shoulders silhouette on the background", 0.22, 0.22, (0.05, 0.6), ("uniform", 0.0, 0.08)),
    _S("blurred", "blur standard deviation in reference pixels", "Gaussian blur, or motion blur of the same spread",
       1.5, 0.24, (0.5, 4.0), ("uniform", 0.0, 0.5)),
    _S("ink_mark", "opacity of ink strokes or a crease", "pen strokes (blue, black, red) or a fold line over the photo",
       0.3, 0.18, (0.05, 1.0)),
    _S("skin_tone", "hue shift of the skin in degrees", "skin hue turned towards green, blue or magenta",
       30.0, 0.22, (10.0, 110.0), ("halfnormal", 5.0, 15.0)),
    _S("washed_out", "contrast compression towards light grey (1 - contrast)", "image blended with light grey",
       0.45, 0.22, (0.15, 0.8), ("uniform", 0.0, 0.2)),
    _S("pixelation", "block size in reference pixels (1: none)", "area downsampling then nearest-neighbour upsampling",
       3.0, 0.22, (1.5, 9.0), ("uniform", 1.0, 1.0)),
    _S("hair_eyes", "share of the eye opening crossed by hair strands", "strands from the hairline down over the eyes",
       0.35, 0.22, (0.0, 1.0)),
    _S("background", "strength of non-uniformity (pattern opacity)",
       "texture (brick, grass, gravel), strong gradient, clutter or a photo over the plain background",
       0.3, 0.24, (0.1, 1.0), ("uniform", 0.0, 0.12)),
    _S("red_eyes", "redness of the pupils (0 black, 1 red)", "pupils tinted red and dilated", 0.4, 0.2, (0.1, 1.0)),
)}

assert tuple(SPECS) == IDS, "SPECS must follow the requisite order"
for _s in SPECS.values():
    if _s.baseline[0] == "uniform":
        assert _s.baseline[2] <= _s.threshold, _s.id
    if _s.baseline[0] == "halfnormal":
        assert _s.baseline[2] <= _s.threshold, _s.id

#: Probability that a face wears glasses (the glasses requisites are -1 otherwise).
GLASSES_PROB = 0.35
#: Lens tint at or above which the eyes cannot be seen: eyes_closed, l_away, red_eyes become -1.
EYES_HIDDEN_TINT = 0.8
#: Eyelid closure at or above which the pupils cannot be seen: l_away and red_eyes become -1.
PUPILS_HIDDEN_CLOSURE = 0.85
#: Veil coverage at or above which the whole mouth is hidden: mouth becomes -1.
MOUTH_HIDDEN_VEIL = 0.72


def markdown_table(prevalence: dict[str, float] | None = None) -> str:
    """The per-requisite table as markdown.

    Args:
        prevalence: optional measured share of non-compliant images per requisite (among the
            images where it applies); the expected share from the spec is always shown.
    """
    head = "| id | severity variable | drawing | non-compliant when | drawn defect | baseline | expected prevalence |"
    if prevalence:
        head += " measured prevalence |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in SPECS.values():
        row = (f"| `{s.id}` | {s.variable} | {s.drawing} | > {s.threshold:g} | "
               f"p={s.active_prob:g}, U[{s.active_range[0]:g}, {s.active_range[1]:g}] | {s.baseline_text()} | "
               f"{s.expected_prevalence():.1%}{' of glasses wearers' if s.applies == 'glasses' else ''} |")
        if prevalence:
            row += f" {prevalence.get(s.id, float('nan')):.1%} |"
        lines.append(row)
    return "\n".join(lines)
