"""The paper's networks: single-task (STL), Handcrafted 1, 2 and 3, and the NAS generic model; and
this package's ``regions`` model (:func:`build_regions_model`), which reads the eyes at full resolution.

Every model takes raw RGB images (values in [0, 255]) and returns a dict ``{task id: probabilities of
shape (batch, 2)}`` (column 1 = compliant), one softmax output per task, named by the task id. Labels
are matched to outputs by these names, never by position: the reference code listed its grouped
outputs in group order but fed labels in requisite order, so each head learned another requisite's
labels (spec section 5.8). Layers of the heads are named ``head_*`` so the backbone can be found in
any model (:func:`icao_mtl.backbones.backbone_layers`). No Lambda layers: models save as ``.keras``
and load with ``safe_mode=True``.

Reference: Gadelha, Gomes and Batista, "Neural Architecture Search in the Context of Deep
Multi-Task Learning", VISAPP 2023 (sections 3.4.1-3.4.3); layer details from the authors' code as
documented in spec/icao_paper.md section 5.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import keras

from .backbones import HEAD_PREFIX, INPUT_STAGE_DTYPE, Preprocess, build_backbone, check_image_size, conv_bn_relu, spec
from .errors import ConfigError

ARCHITECTURES: dict[str, Callable] = {}
#: The task whose head the pose serves (:func:`with_pose_outputs`; the regions model's geometry branch).
POSE_ANCHOR = "rotation"

# Handcrafted 3, per group in order: convolutions of the group block and dense layers per task.
HC3_GROUP_CONVS = (3, 4, 4, 3)
HC3_TASK_DENSES = (3, 2, 3, 3)


def register(name: str):
    def deco(fn):
        ARCHITECTURES[name] = fn
        return fn
    return deco


@dataclass
class ModelConfig:
    """What to build.

    Attributes:
        approach: "stl", "hc1", "hc2", "hc3" or "nas".
        backbone: a key of :data:`icao_mtl.backbones.BACKBONES`.
        weights: "imagenet", "none" or a weights file.
        image_size: input side in pixels (default: the backbone's).
        alpha: MobileNetV2 width multiplier.
        dropout: dropout rate of Handcrafted 1 (STL's 0.5 is fixed, as in the paper's code).
        nas_config: branch depths (n1, ..., nG), one per task group, for approach "nas".
        seed: seed of the head initialisers.
    """

    approach: str = "hc3"
    backbone: str = "small_cnn"
    weights: str = "none"
    image_size: int | None = None
    alpha: float = 1.0
    dropout: float = 0.3
    nas_config: tuple | None = None
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def resolved_size(self) -> int:
        if self.image_size:
            return self.image_size
        # regions reads the eyes at the synthetic set's full resolution
        return REGIONS_DEFAULT_SIZE if self.approach == "regions" else spec(self.backbone).default_size

    def validate(self) -> "ModelConfig":
        if self.approach not in ARCHITECTURES and self.approach not in MODEL_BUILDERS:
            raise ConfigError(f"Unknown approach {self.approach!r}. Fix: choose one of "
                              f"{', '.join([*ARCHITECTURES, *MODEL_BUILDERS])}.")
        spec(self.backbone)
        check_image_size(self.backbone, self.resolved_size())
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1). Received: dropout={self.dropout}. Fix: e.g. --dropout 0.3.")
        if self.approach == "nas" and self.nas_config is None:
            raise ConfigError("Approach 'nas' needs a configuration of branch depths. Fix: pass --nas-config 2,1,3,2 "
                              "(one depth per task group).")
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["nas_config"] = list(self.nas_config) if self.nas_config is not None else None
        return d


def _rn(seed: int, k: int):
    """RandomNormal(0, 1e-4) as in the reference code, with a distinct seed per layer: in Keras 3 one
    seeded initializer shared by several layers gives them identical kernels (spec section 5.3)."""
    return keras.initializers.RandomNormal(mean=0.0, stddev=1e-4, seed=seed * 1000 + k)


def _output(x, task: str, **kwargs):
    # float32 outputs: under mixed precision the softmax and the loss stay in full precision.
    return keras.layers.Dense(2, activation="softmax", name=task, dtype="float32", **kwargs)(x)


def _groups_for(tasks, groups) -> dict[str, tuple]:
    """The groups restricted to ``tasks`` (empty groups dropped), every task in exactly one group."""
    out = {g: tuple(t for t in members if t in tasks) for g, members in groups.items()}
    out = {g: m for g, m in out.items() if m}
    placed = [t for m in out.values() for t in m]
    missing = [t for t in tasks if t not in placed]
    if missing:
        out["other"] = tuple(missing)
    if len(placed) != len(set(placed)):
        raise ConfigError(f"A task appears in several groups: {groups}. Fix: put each task in one group.")
    return out


@register("stl")
def stl_head(features, tasks, groups, cfg: ModelConfig):
    """One network per requisite: [InceptionV3: AveragePooling 8x8] -> Flatten -> D(128, relu) ->
    Dropout(0.5) -> D(2, softmax). Built for one task at a time."""
    if len(tasks) != 1:
        raise ConfigError(f"STL builds one model per requisite; build_model got {len(tasks)} tasks. Fix: use "
                          "build_stl_models, or pass one task.")
    (task,) = tasks
    x = features
    if cfg.backbone == "inception_v3":
        x = keras.layers.AveragePooling2D((8, 8), name=f"{HEAD_PREFIX}avg_pool")(x)
    x = keras.layers.Flatten(name=f"{HEAD_PREFIX}flatten")(x)
    x = keras.layers.Dense(128, activation="relu", kernel_initializer=_rn(cfg.seed, 1), name=f"{HEAD_PREFIX}dense")(x)
    x = keras.layers.Dropout(0.5, seed=cfg.seed, name=f"{HEAD_PREFIX}dropout")(x)
    return {task: _output(x, task, kernel_initializer=_rn(cfg.seed, 2))}


@register("hc1")
def hc1_head(features, tasks, groups, cfg: ModelConfig):
    """Handcrafted 1: GAP -> D(256) -> Drop -> D(128) -> Drop -> per task D(64) -> Drop -> D(2)."""
    d = cfg.dropout
    x = keras.layers.GlobalAveragePooling2D(name=f"{HEAD_PREFIX}gap")(features)
    x = keras.layers.Dense(256, activation="relu", kernel_initializer=_rn(cfg.seed, 1), name=f"{HEAD_PREFIX}shared_1")(x)
    x = keras.layers.Dropout(d, seed=cfg.seed, name=f"{HEAD_PREFIX}shared_1_drop")(x)
    x = keras.layers.Dense(128, activation="relu", kernel_initializer=_rn(cfg.seed, 2), name=f"{HEAD_PREFIX}shared_2")(x)
    x = keras.layers.Dropout(d, seed=cfg.seed + 1, name=f"{HEAD_PREFIX}shared_2_drop")(x)
    out = {}
    for i, t in enumerate(tasks):
        b = keras.layers.Dense(64, activation="relu", kernel_initializer=_rn(cfg.seed, 10 + 2 * i),
                               name=f"{HEAD_PREFIX}{t}_dense_1")(x)
        b = keras.layers.Dropout(d, seed=cfg.seed + 2 + i, name=f"{HEAD_PREFIX}{t}_drop")(b)
        out[t] = _output(b, t, kernel_initializer=_rn(cfg.seed, 11 + 2 * i))
    return out


def _dense_branch(x, task: str, depth: int):
    for j in range(depth):
        x = keras.layers.Dense(64, activation="relu", name=f"{HEAD_PREFIX}{task}_dense_{j + 1}")(x)
    return _output(x, task)


@register("hc2")
def hc2_head(features, tasks, groups, cfg: ModelConfig):
    """Handcrafted 2: GAP -> per task D(64) -> D(2) (no shared dense layers, no dropout)."""
    x = keras.layers.GlobalAveragePooling2D(name=f"{HEAD_PREFIX}gap")(features)
    return {t: _dense_branch(x, t, 1) for t in tasks}


@register("nas")
def nas_head(features, tasks, groups, cfg: ModelConfig):
    """The NAS generic model: GAP -> for each task of group g, n_g D(64) layers -> D(2).

    As in the reference code, tasks of a group share the depth n_g, not weights; with every
    n_g = 1 the model is Handcrafted 2."""
    grouped = _groups_for(tasks, groups)
    depths = tuple(int(n) for n in cfg.nas_config)
    if len(depths) != len(grouped) or min(depths) < 1:
        raise ConfigError(f"nas_config {list(depths)} must give one depth >= 1 for each of the {len(grouped)} task "
                          f"groups {list(grouped)}. Fix: e.g. --nas-config {','.join(['2'] * len(grouped))}.")
    x = keras.layers.GlobalAveragePooling2D(name=f"{HEAD_PREFIX}gap")(features)
    out = {}
    for n, members in zip(depths, grouped.values()):
        for t in members:
            out[t] = _dense_branch(x, t, n)
    return {t: out[t] for t in tasks}


@register("hc3")
def hc3_head(features, tasks, groups, cfg: ModelConfig):
    """Handcrafted 3: a shared conv block, one row band of the pooled map per task group, a conv
    block per group, then per task Flatten -> n x D(64) -> D(2).

    As in the reference code: Conv2D(256, 3x3) x 2 -> MaxPool 2 on the backbone map (VGG16: 7x7x512 ->
    4x4x256); the flattened map is cut into one contiguous chunk per group, which is exactly one row
    band of the pooled map, and each chunk is read as a (1, L/32, 32) tensor; group g applies
    (3, 4, 4, 3)[g] convolutions of 32 filters and a max pooling; each of its tasks has
    (3, 2, 3, 3)[g] dense layers of 64 units.
    """
    grouped = _groups_for(tasks, groups)
    x = features
    for j in (1, 2):
        x = keras.layers.Conv2D(256, 3, padding="same", activation="relu", name=f"{HEAD_PREFIX}shared_conv_{j}")(x)
    x = keras.layers.MaxPooling2D(2, strides=2, padding="same", name=f"{HEAD_PREFIX}shared_pool")(x)
    rows, cols, ch = (int(v) for v in x.shape[1:])
    n_groups = len(grouped)
    if n_groups > len(HC3_GROUP_CONVS):
        raise ConfigError(
            f"Handcrafted 3 has the paper's settings for {len(HC3_GROUP_CONVS)} task groups (convolutions "
            f"{HC3_GROUP_CONVS}, dense layers {HC3_TASK_DENSES}); these tasks fall into {n_groups}: "
            f"{', '.join(grouped)}. Fix: group the tasks into at most {len(HC3_GROUP_CONVS)} groups (meta.json of the "
            "dataset; tasks outside every group form 'other'), or use --approach hc2 or nas.")
    if rows < n_groups:
        raise ConfigError(
            f"Handcrafted 3 gives each of the {n_groups} task groups one row band of the pooled feature map, but "
            f"{cfg.backbone} at {cfg.resolved_size()} px leaves {rows} rows. Fix: use a larger --img-size "
            f"(e.g. {spec(cfg.backbone).default_size}).")
    out = {}
    for g, (name, members) in enumerate(grouped.items()):
        top, bottom = math.floor(g * rows / n_groups), math.floor((g + 1) * rows / n_groups)
        band = keras.layers.Cropping2D(((top, rows - bottom), (0, 0)), name=f"{HEAD_PREFIX}{name}_band")(x)
        length = (bottom - top) * cols * ch
        b = keras.layers.Reshape((1, length // 32, 32), name=f"{HEAD_PREFIX}{name}_reshape")(band)
        for j in range(HC3_GROUP_CONVS[g]):
            b = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name=f"{HEAD_PREFIX}{name}_conv_{j + 1}")(b)
        b = keras.layers.MaxPooling2D(2, strides=2, padding="same", name=f"{HEAD_PREFIX}{name}_pool")(b)
        for t in members:
            f = keras.layers.Flatten(name=f"{HEAD_PREFIX}{t}_flatten")(b)
            out[t] = _dense_branch(f, t, HC3_TASK_DENSES[g])
    return {t: out[t] for t in tasks}


# ---------------------------------------------------------------------------------------------------
# Regions: a whole image at half resolution and the eye band at full resolution

#: The eye band, as shares of the side: rows and columns that hold both eyes for every framing the
#: synthetic portraits use (:func:`icao_mtl.synth.portrait.eye_framing`: midpoint rows 0.37-0.44,
#: columns 0.46-0.54; eye distance up to 0.18 of the side; an eye 0.08 wide), plus 0.06 for the
#: small shifts of training augmentation and of alignment errors.
EYE_BAND_ROWS = (0.29, 0.53)
EYE_BAND_COLS = (0.27, 0.73)
def eye_band_box(size: int) -> tuple[int, int, int, int]:
    """The eye band's ``(top, bottom, left, right)`` in pixels of a ``size``-px input."""
    return (int(round(EYE_BAND_ROWS[0] * size)), int(round(EYE_BAND_ROWS[1] * size)),
            int(round(EYE_BAND_COLS[0] * size)), int(round(EYE_BAND_COLS[1] * size)))


#: Input side of the regions approach when none is given (the synthetic set's resolution).
REGIONS_DEFAULT_SIZE = 224
#: Input side above which the whole-image branch of the small CNN reads a 2x average-pooled image.
REGIONS_POOL_ABOVE = 160


@keras.saving.register_keras_serializable(package="icao_mtl")
class SpatialSoftArgmax(keras.layers.Layer):
    """Where each channel of a feature map peaks, to a fraction of a cell: per channel, the expected
    (x, y) position under a softmax over the map's cells (Levine et al., "End-to-end training of
    deep visuomotor policies", 2016).

    Pooling forgets where a feature is, and a coarse layout map knows it only to a cell (32 px of a
    224 px portrait for the whole-image map); a soft arg-max is a weighted mean of cell centres, so
    it moves continuously with the feature: a head turned by 8° shifts the nose by about 6 px.

    Input (batch, H, W, K); output (batch, 2K): ``x_1 .. x_K, y_1 .. y_K`` in [-1, 1] (the centres
    of the first and last cells). The softmax temperature is learnt (one scalar, starting at
    ``temperature``): over a 27 x 52 map a peak must stand about log(1404) ~ 7 above the other cells'
    logits to hold most of the mass, so supervised points start colder (0.1) than free keypoints (1).
    """

    def __init__(self, temperature: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.temperature = float(temperature)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}

    def build(self, input_shape):
        if None in tuple(input_shape[1:]):
            raise ValueError(f"SpatialSoftArgmax needs a map of known size. Received: input_shape={input_shape}")
        self._map_shape = tuple(int(v) for v in input_shape[1:])  # the graph's; a traced call may not know it
        self.log_temperature = self.add_weight(shape=(), initializer=keras.initializers.Constant(
            math.log(self.temperature)), name="log_temperature")

    def call(self, x):
        ops = keras.ops
        h, w, k = self._map_shape
        logits = ops.reshape(ops.transpose(ops.cast(x, "float32"), (0, 3, 1, 2)), (-1, k, h * w))
        p = ops.softmax(logits / ops.exp(ops.cast(self.log_temperature, "float32")), axis=-1)
        grid_x = ops.tile(ops.linspace(-1.0, 1.0, w), (h,))
        grid_y = ops.repeat(ops.linspace(-1.0, 1.0, h), w)
        return ops.concatenate([ops.sum(p * grid_x, axis=-1), ops.sum(p * grid_y, axis=-1)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2 * input_shape[-1])


@keras.saving.register_keras_serializable(package="icao_mtl")
class CoordinateChannels(keras.layers.Layer):
    """Two channels appended to a map: each cell's x and y in [-1, 1] (CoordConv, Liu et al. 2018).

    Convolutions see the same features at every position; a point that must be told from its mirror
    image (the left eye from the right one) needs to know where it is. A 1x1 convolution after this
    layer gives each map a learnt linear preference across the band. Input (batch, H, W, C); output
    (batch, H, W, C + 2).
    """

    def build(self, input_shape):
        if None in tuple(input_shape[1:3]):
            raise ValueError(f"CoordinateChannels needs a map of known size. Received: input_shape={input_shape}")
        self._map_shape = tuple(int(v) for v in input_shape[1:3])

    def call(self, x):
        ops = keras.ops
        h, w = self._map_shape
        gx = ops.tile(ops.reshape(ops.linspace(-1.0, 1.0, w), (1, w, 1)), (h, 1, 1))
        gy = ops.tile(ops.reshape(ops.linspace(-1.0, 1.0, h), (h, 1, 1)), (1, w, 1))
        grid = ops.cast(ops.concatenate([gx, gy], axis=-1), x.dtype)[None]  # (1, h, w, 2)
        return ops.concatenate([x, grid * ops.ones_like(x[..., :1])], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] + 2)


#: Side in pixels at which the regions model's geometry branch reads the whole image.
GEOMETRY_SIDE = 112
#: How the geometry branch begins: "shared" reads the small CNN's second block, "own" has four layers of
#: its own, "auto" is "shared" where :func:`resolve_geometry_trunk` allows it and "own" elsewhere.
GEOMETRY_TRUNKS = ("auto", "shared", "own")
#: The small CNN's layer the shared branch reads: its second block, max-pooled (28 x 28 x 32 at 224 px).
GEOMETRY_TRUNK_LAYER = "small_cnn_block1_pool"


def geometry_trunk_fits(size: int) -> bool:
    """Whether the small CNN's second block, at input side ``size``, is the map the geometry branch's
    own first two layers make (cell for cell): the small CNN reads the image 2x pooled above
    :data:`REGIONS_POOL_ABOVE` px, the branch ``size // GEOMETRY_SIDE`` times pooled, and both halve
    it twice with no rounding. True for multiples of 8 up to 160 px and of 16 from 224 to 320 px."""
    downsample = 2 if size > REGIONS_POOL_ABOVE else 1
    return max(1, size // GEOMETRY_SIDE) == downsample and size % (8 * downsample) == 0


def resolve_geometry_trunk(trunk: str, backbone: str, size: int, pretrained: bool = False) -> str:
    """"shared" or "own" for ``trunk`` (one of :data:`GEOMETRY_TRUNKS`): "auto" shares the small CNN's
    second block when the small CNN trains from scratch (not ``pretrained``: a loaded backbone is
    frozen by default, and the landmark and pose terms could not train the shared layers) at a
    ``size`` where :func:`geometry_trunk_fits`.

    Raises:
        ConfigError: an unknown value, or "shared" with another backbone or at a size that does not fit.
    """
    if trunk not in GEOMETRY_TRUNKS:
        raise ConfigError(f"geometry_trunk must be one of {', '.join(GEOMETRY_TRUNKS)}. Received: {trunk!r}.")
    if trunk == "auto":
        return "shared" if backbone == "small_cnn" and geometry_trunk_fits(size) and not pretrained else "own"
    if trunk == "shared" and backbone != "small_cnn":
        raise ConfigError(f"--geometry-trunk shared reads the small CNN's second block; the backbone is {backbone!r}. "
                          "Fix: --geometry-trunk own (or auto), or --backbone small_cnn.")
    if trunk == "shared" and not geometry_trunk_fits(size):
        raise ConfigError(f"--geometry-trunk shared: at {size} px the small CNN's second block is not the map the "
                          "geometry branch reads. Fix: --geometry-trunk own (or auto), or an image size that is a "
                          "multiple of 8 up to 160 px or of 16 from 224 to 320 px.")
    return trunk


def _geometry_branch(inputs, size: int, points: int, trunk=None):
    """The regions model's geometry branch: where ``points`` landmarks lie, and the head pose they show.

    The whole image, average-pooled to about :data:`GEOMETRY_SIDE` px, through four 3x3 conv-BN-ReLU
    layers (16, 32, 48, 48 filters; max pooling after the first two; the cells' coordinates before the
    last, :class:`CoordinateChannels`) to a map of 8-px cells (28 x 28 at 224 px). With ``trunk`` (the
    small CNN's second block max-pooled, 28 x 28 x 32 at 224 px: the map the branch's own second layer
    and pooling give), the branch starts from it and only its last two layers are its own; a 1x1
    convolution to one map per point (``head_geometry_landmark_maps``, trained as heat maps) and a
    :class:`SpatialSoftArgmax` (``head_geometry_landmarks``, (batch, 2P) in [-1, 1]); from the points'
    coordinates, D(64) -> D(64) -> D(3) ``head_geometry_pose``, the signed roll, yaw and pitch in units
    of 10 degrees. Roll, yaw and pitch are functions of where the inner features (eyes, nose, mouth)
    lie against the head's outline (cheeks, chin): a few coordinates, where from pooled appearance
    features they are a few pixels of shift among thousands of values.

    Returns the pose's positive and negative parts, (batch, 6): the ``rotation`` head reads them (its
    label is a threshold on the largest absolute angle).
    """
    if trunk is None:
        pool = max(1, size // GEOMETRY_SIDE)
        g = (keras.layers.AveragePooling2D(pool, name=f"{HEAD_PREFIX}geometry_pool", dtype=INPUT_STAGE_DTYPE)(inputs)
             if pool > 1 else inputs)
        g = Preprocess("unit", name=f"{HEAD_PREFIX}geometry_preprocess", dtype=INPUT_STAGE_DTYPE)(g)
        first = 0
    else:
        g, first = trunk, 2
    for i, filters in list(enumerate((16, 32, 48, 48)))[first:]:
        if i == 3:
            g = CoordinateChannels(name=f"{HEAD_PREFIX}geometry_coordinates")(g)
        g = conv_bn_relu(g, filters, f"{HEAD_PREFIX}geometry_block{i}", dtype=INPUT_STAGE_DTYPE if i == 0 else None)
        if i < 2:
            g = keras.layers.MaxPooling2D(name=f"{HEAD_PREFIX}geometry_block{i}_pool")(g)
    # From the maps' logits on, float32 under any policy (0.3 M of 127 M multiply-adds): a soft arg-max at
    # temperature 0.1 turns bfloat16's rounding of a logit of 8 (0.03) into 0.3 in an exponent, and the
    # pose is a function of coordinate differences of a fraction of a cell.
    maps = keras.layers.Conv2D(points, 1, name=f"{HEAD_PREFIX}geometry_landmark_maps", dtype="float32")(g)
    located = SpatialSoftArgmax(temperature=0.1, name=f"{HEAD_PREFIX}geometry_landmarks", dtype="float32")(maps)
    h = located
    for j in range(2):
        h = keras.layers.Dense(64, activation="relu", name=f"{HEAD_PREFIX}geometry_dense_{j + 1}", dtype="float32")(h)
    pose = keras.layers.Dense(3, name=f"{HEAD_PREFIX}geometry_pose", dtype="float32")(h)
    turned_back = keras.layers.Rescaling(-1.0, name=f"{HEAD_PREFIX}geometry_pose_negated")(pose)
    return keras.layers.Concatenate(name=f"{HEAD_PREFIX}geometry_pose_parts")(
        [keras.layers.ReLU(name=f"{HEAD_PREFIX}geometry_pose_positive")(pose),
         keras.layers.ReLU(name=f"{HEAD_PREFIX}geometry_pose_negative")(turned_back)])


def build_regions_model(cfg: ModelConfig, tasks, groups) -> keras.Model:
    """The ``regions`` approach: what a requisite concerns decides the resolution it is seen at.

    At 128 px a pupil is about 2 px wide and an iris 4 px; the small CNN's stride-2 stem and three
    poolings leave them a fraction of one feature cell, and global average pooling then dilutes the
    few cells they touch among 64. This model reads the photo twice:

    - the **whole image** through the backbone (the small CNN reads it 2x average-pooled when the
      input is larger than 160 px, e.g. 112 px from 224), pooled three ways: average, max (a few
      bright or dark cells, such as a flash spot), and a 1x1 convolution to 8 channels kept as a
      flattened map (the layout that head pose changes);
    - the **eye band** (rows 0.29-0.53, columns 0.27-0.73 of the side: both eyes for every training
      framing) cropped from the input at its full resolution, through four 3x3 conv-BN-ReLU layers
      (16, 24, 48, 64 filters; the first two at stride 1, then max pooling after each), average- and
      max-pooled, and (``extra["eye_layout"]``, default on) a 1x1 convolution to 4 channels kept as a
      flattened 6 x 13 map (at 224 px): the eyes' positions against the cheeks' edges, which head
      roll and yaw move by a few pixels;
    - with ``extra["landmarks"]`` P > 0, a geometry branch (:func:`_geometry_branch`): P supervised
      points located on the whole image (the synthetic set's seven: eyes, cheeks, nose, mouth, chin)
      and the signed head pose computed from them; the ``rotation`` head reads that pose instead of
      the appearance features. :func:`with_landmark_outputs` and :func:`with_pose_outputs` expose the
      points and the pose for training against ``landmarks.csv`` and ``pose.csv``. With
      ``extra["geometry_trunk"]`` "shared" (what "auto" gives the small CNN trained from scratch at
      224 px, :func:`resolve_geometry_trunk`) the branch reads the small CNN's second block and has
      two layers of its own (20 M fewer multiply-adds at 224 px, 127 M instead of 147 M); "own" gives
      it four, sharing nothing with the other branches;
    - with ``extra["keypoints"]`` K > 0, K learnt keypoints in each branch (a 1x1 convolution to K
      maps, then :class:`SpatialSoftArgmax`): on the whole-image map and on the eye band's 27 x 52
      map (at 224 px), their coordinates to a fraction of a cell (pose, gaze, where the rims sit).

    Every requisite has its own D(64) -> D(2) on the concatenation, as in Handcrafted 2. Photos
    must be framed as the training portraits are (``check`` aligns real photos on the eyes). The eye
    branch's layers are head layers (``head_eyes_*``): they train when a pretrained backbone is
    frozen, and Grad-CAM explains the whole-image branch.

    Shapes at 224 px: eye band 54 x 104 px; whole-image map 7 x 7 x 128; geometry maps 28 x 28 x P.
    """
    size = cfg.resolved_size()
    inputs = keras.Input((size, size, 3), name="image")
    pool = 2 if cfg.backbone == "small_cnn" and size > REGIONS_POOL_ABOVE else 1
    fmap, backbone = build_backbone(cfg.backbone, inputs, weights=cfg.weights, alpha=cfg.alpha, downsample=pool)
    g_avg = keras.layers.GlobalAveragePooling2D(name=f"{HEAD_PREFIX}global_gap")(fmap)
    g_max = keras.layers.GlobalMaxPooling2D(name=f"{HEAD_PREFIX}global_gmp")(fmap)
    g_map = keras.layers.Conv2D(8, 1, activation="relu", name=f"{HEAD_PREFIX}global_layout")(fmap)
    g_map = keras.layers.Flatten(name=f"{HEAD_PREFIX}global_layout_flat")(g_map)

    top, bottom, left, right = eye_band_box(size)
    # The eye branch is part of the head (HEAD_PREFIX): it trains even when a pretrained backbone is frozen.
    e = keras.layers.Cropping2D(((top, size - bottom), (left, size - right)), name=f"{HEAD_PREFIX}eyes_crop",
                                dtype=INPUT_STAGE_DTYPE)(inputs)
    e = Preprocess("unit", name=f"{HEAD_PREFIX}eyes_preprocess", dtype=INPUT_STAGE_DTYPE)(e)
    for i, filters in enumerate((16, 24, 48, 64)):
        e = conv_bn_relu(e, filters, f"{HEAD_PREFIX}eyes_block{i}", dtype=INPUT_STAGE_DTYPE if i == 0 else None)
        if i == 2:
            eye_fine = e  # 27 x 52 at 224 px: the finest map with 48 features
        if i >= 1:
            e = keras.layers.MaxPooling2D(name=f"{HEAD_PREFIX}eyes_block{i}_pool")(e)
    parts = [g_avg, g_max, g_map,
             keras.layers.GlobalAveragePooling2D(name=f"{HEAD_PREFIX}eyes_gap")(e),
             keras.layers.GlobalMaxPooling2D(name=f"{HEAD_PREFIX}eyes_gmp")(e)]
    keypoints = int(cfg.extra.get("keypoints", 0))
    if keypoints:
        for where, fmap_k in (("global", fmap), ("eyes", eye_fine)):
            maps = keras.layers.Conv2D(keypoints, 1, name=f"{HEAD_PREFIX}{where}_keypoint_maps", dtype="float32")(fmap_k)
            parts.append(SpatialSoftArgmax(name=f"{HEAD_PREFIX}{where}_keypoints", dtype="float32")(maps))
    if cfg.extra.get("eye_layout", True):
        # where each eye lies against the cheeks' edges: roll and yaw move them by a few pixels
        e_map = keras.layers.Conv2D(4, 1, activation="relu", name=f"{HEAD_PREFIX}eyes_layout")(e)
        parts.append(keras.layers.Flatten(name=f"{HEAD_PREFIX}eyes_layout_flat")(e_map))
    joined = keras.layers.Concatenate(name=f"{HEAD_PREFIX}regions")(parts)
    landmarks = int(cfg.extra.get("landmarks", 0))
    trunk = None
    if landmarks and resolve_geometry_trunk(cfg.extra.get("geometry_trunk", "auto"), cfg.backbone, size,
                                            pretrained=cfg.weights not in (None, "none")) == "shared":
        trunk = backbone.get_layer(GEOMETRY_TRUNK_LAYER).output
    pose = _geometry_branch(inputs, size, landmarks, trunk) if landmarks else None
    outputs = {t: _dense_branch(pose if pose is not None and t == POSE_ANCHOR else joined, t, 1) for t in tasks}
    return keras.Model(inputs, outputs, name=f"regions_{cfg.backbone}")


#: Approaches that build the whole model from the image (not a head on one backbone map).
MODEL_BUILDERS: dict[str, Callable] = {"regions": build_regions_model}


def build_model(cfg: ModelConfig, tasks, groups: dict | None = None) -> keras.Model:
    """Build the model ``cfg.approach`` for ``tasks``.

    Args:
        cfg: what to build (validated here, before any layer exists).
        tasks: task ids, in the order of the output dict.
        groups: task groups (needed by hc3 and nas), group name -> task ids.

    Returns:
        A functional model: input "image" (size, size, 3) raw RGB; outputs {task: (batch, 2)}.
    """
    cfg.validate()
    tasks = tuple(tasks)
    if not tasks:
        raise ConfigError("No tasks to build a model for. Fix: pass at least one task id.")
    if cfg.approach in MODEL_BUILDERS:
        return MODEL_BUILDERS[cfg.approach](cfg, tasks, groups or {"all": tasks})
    size = cfg.resolved_size()
    inputs = keras.Input((size, size, 3), name="image")
    features, _ = build_backbone(cfg.backbone, inputs, weights=cfg.weights, alpha=cfg.alpha)
    outputs = ARCHITECTURES[cfg.approach](features, tasks, groups or {"all": tasks}, cfg)
    name = f"{cfg.approach}_{cfg.backbone}" + (f"_{tasks[0]}" if cfg.approach == "stl" else "")
    return keras.Model(inputs, outputs, name=name)


def with_severity_outputs(model: keras.Model, tasks) -> keras.Model:
    """``model`` with one more output, :data:`~icao_mtl.data.SEVERITY_KEY` -> (batch, tasks): for every
    task a linear D(1) on the input of the task's output layer (the last hidden layer of its head), for
    :class:`~icao_mtl.losses.GradedMultiTaskLoss`. The new layers are head layers
    (``head_<task>_severity``); the model's other layers are shared, not copied. Works for every
    approach, whose output layers are named by their task ids. :func:`task_outputs` gives back the
    model without it (what a run saves)."""
    from .data.pipeline import SEVERITY_KEY

    tasks = tuple(tasks)
    heads = [keras.layers.Dense(1, name=f"{HEAD_PREFIX}{t}_severity", dtype="float32")(model.get_layer(t).input)
             for t in tasks]
    graded = heads[0] if len(heads) == 1 else keras.layers.Concatenate(name=f"{HEAD_PREFIX}severities",
                                                                        dtype="float32")(heads)
    outputs = {t: model.get_layer(t).output for t in tasks}
    outputs[SEVERITY_KEY] = graded
    return keras.Model(model.inputs, outputs, name=model.name)


def with_pose_outputs(model: keras.Model) -> keras.Model:
    """``model`` with one more output, :data:`~icao_mtl.data.POSE_KEY` -> (batch, 3): the head's roll,
    yaw and pitch in units of 10 degrees, for :class:`~icao_mtl.losses.GradedMultiTaskLoss`'s pose term.
    A regions model with a geometry branch already computes it (``head_geometry_pose``, from the located
    points); in any other model it is a linear D(3) on the last hidden layer of the :data:`POSE_ANCHOR`
    (``rotation``) head (``head_pose``): the label says only whether the largest angle exceeds 8
    degrees, the signed angles give that layer a target linear in what the image shows. The model's
    other outputs (tasks, severities, landmarks) are kept. :func:`task_outputs` gives back the model
    without it.

    Raises:
        ConfigError: the model has no ``rotation`` output.
    """
    from .data.pipeline import POSE_KEY

    if POSE_ANCHOR not in model.output_names:
        raise ConfigError(f"The pose regression serves the {POSE_ANCHOR!r} head, which this model does not have "
                          f"(outputs: {model.output_names}). Fix: train {POSE_ANCHOR!r} among the tasks, or set "
                          "--pose-weight 0.")
    outputs = dict(model.output) if isinstance(model.output, dict) else {model.output_names[0]: model.output}
    try:
        outputs[POSE_KEY] = model.get_layer(f"{HEAD_PREFIX}geometry_pose").output
    except ValueError:
        outputs[POSE_KEY] = keras.layers.Dense(3, name=f"{HEAD_PREFIX}pose", dtype="float32")(
            model.get_layer(POSE_ANCHOR).input)
    return keras.Model(model.inputs, outputs, name=model.name)


def _landmark_maps(model: keras.Model):
    try:
        return model.get_layer(f"{HEAD_PREFIX}geometry_landmark_maps")
    except ValueError:
        raise ConfigError("Landmark targets need the regions approach built with landmarks (--landmark-weight "
                          "builds them). Fix: --approach regions, or set --landmark-weight 0.") from None


def landmark_grid(model: keras.Model) -> tuple:
    """Where the cells of the regions model's landmark maps lie on the image: ``(x, y)``, float32 arrays
    of shape (W,) and (H,) of cell-centre coordinates in fractions of the image side.

    The geometry branch pools the whole image to cells of ``step = size // W`` pixels (8 at 224 px);
    cell j covers pixels ``step j .. step (j + 1) - 1``, its centre ``step (j + 1/2)`` pixels from the
    edge (continuous coordinates).

    Raises:
        ConfigError: the model has no supervised points.
    """
    import numpy as np

    _, rows, cols, _ = _landmark_maps(model).output.shape
    size = int(model.inputs[0].shape[1])
    step_y, step_x = size // rows, size // cols
    return ((step_x * np.arange(cols) + step_x / 2) / size).astype("float32"), \
        ((step_y * np.arange(rows) + step_y / 2) / size).astype("float32")


def with_landmark_outputs(model: keras.Model) -> keras.Model:
    """``model`` (the regions approach built with ``extra["landmarks"]`` P) with two more outputs for
    :class:`~icao_mtl.losses.GradedMultiTaskLoss`'s landmark terms: :data:`~icao_mtl.data.LANDMARK_KEY`
    -> (batch, 2P), the points' ``x_1 .. x_P, y_1 .. y_P`` in fractions of the image side (the soft
    arg-max's -1 .. 1 over the cell centres of :func:`landmark_grid`, mapped by a fixed
    :class:`keras.layers.Rescaling`, ``head_landmarks``), and :data:`~icao_mtl.data.LANDMARK_MAPS_KEY`
    -> (batch, H, W, P), the maps' logits (trained as heat maps: a soft arg-max alone learns where a
    point is slowly, its gradient spread over 784 cells). :func:`task_outputs` gives back the model
    without them (the points stay what the pose is computed from).

    Raises:
        ConfigError: the model has no supervised points.
    """
    from .data.pipeline import LANDMARK_KEY, LANDMARK_MAPS_KEY

    xs, ys = landmark_grid(model)
    maps = _landmark_maps(model)
    count = int(maps.output.shape[-1])
    scale = [float(xs[-1] - xs[0]) / 2] * count + [float(ys[-1] - ys[0]) / 2] * count
    offset = [float(xs[-1] + xs[0]) / 2] * count + [float(ys[-1] + ys[0]) / 2] * count
    outputs = dict(model.output) if isinstance(model.output, dict) else {model.output_names[0]: model.output}
    outputs[LANDMARK_KEY] = keras.layers.Rescaling(scale, offset, name=f"{HEAD_PREFIX}landmarks", dtype="float32")(
        model.get_layer(f"{HEAD_PREFIX}geometry_landmarks").output)
    outputs[LANDMARK_MAPS_KEY] = keras.layers.Activation("linear", name=f"{HEAD_PREFIX}landmark_logits",
                                                         dtype="float32")(maps.output)
    return keras.Model(model.inputs, outputs, name=model.name)


def geometry_reader(model: keras.Model, pose: bool = True) -> keras.Model | None:
    """What a regions model's geometry branch finds in an image, for reports (``check``): a model from
    the same input to ``{"points": (batch, 2P), "pose": (batch, 3)}``, the located points' ``x_1 ..
    x_P, y_1 .. y_P`` in fractions of the image side (as :func:`with_landmark_outputs` gives them) and
    the signed roll, yaw and pitch in units of 10 degrees (``pose.csv``'s signs); the layers are the
    model's own. ``pose=False`` leaves the pose out: a run trained with ``--pose-weight 0`` has the
    layer, but as a hidden feature of the rotation head, not angles. None for a model without the
    branch (other approaches, or regions trained with ``--landmark-weight 0``)."""
    from .data.pipeline import LANDMARK_KEY

    try:
        angles = model.get_layer(f"{HEAD_PREFIX}geometry_pose")
        model.get_layer(f"{HEAD_PREFIX}geometry_landmark_maps")
    except ValueError:
        return None
    outputs = {"points": with_landmark_outputs(model).output[LANDMARK_KEY]}
    if pose:
        outputs["pose"] = angles.output
    return keras.Model(_model_inputs(model), outputs, name=f"{model.name}_geometry")


def _model_inputs(model: keras.Model):
    """The inputs to build a model of ``model``'s layers on: one input stays one tensor, not a list of
    one, so that a saved model's ``input`` is the image's."""
    return model.inputs[0] if len(model.inputs) == 1 else model.inputs


def task_outputs(model: keras.Model, tasks) -> keras.Model:
    """The model restricted to the tasks' outputs (sharing its layers and weights): the inference model of
    one trained with :func:`with_severity_outputs`; ``model`` itself when it has no other output."""
    tasks = tuple(tasks)
    if set(model.output_names) == set(tasks):
        return model
    return keras.Model(_model_inputs(model), {t: model.get_layer(t).output for t in tasks}, name=model.name)


def build_stl_models(cfg: ModelConfig, tasks) -> dict[str, keras.Model]:
    """One STL model per task (each with its own backbone, as in the paper)."""
    return {t: build_model(cfg, (t,)) for t in tasks}


def count_params(model: keras.Model) -> dict[str, int]:
    """Trainable, non-trainable and total parameter counts."""
    import numpy as np

    trainable = int(sum(np.prod(v.shape) for v in model.trainable_weights))
    frozen = int(sum(np.prod(v.shape) for v in model.non_trainable_weights))
    return {"trainable": trainable, "non_trainable": frozen, "total": trainable + frozen}
