"""Model configurations as data: :class:`CLIPGSConfig` and the registry of named sizes.

The named configurations follow Uni3D's sizes (the transformer is initialised from Uni3D), all
aligned to the 1024-d embedding space of Uni3D's teacher ``EVA02-E-14-plus``
(``laion2b_s9b_b144k``). ``CLIPGSConfig`` is what ``config.json`` holds on the Hub.

Every :class:`CLIPGSConfig` is checked when it is made (from code, ``config.json``, a checkpoint's
hyperparameters or a YAML override): each field must have its declared type (an ``int`` field takes
no float, bool or string; a ``float`` field takes a finite int or float; a tuple field a list or tuple
of its element type), and no size may exceed :data:`SIZE_CAPS`, :data:`SIZE_MARGIN` times the largest
value of any registered configuration, so a configuration no registered model comes near is refused
before anything is allocated for it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import typing
from collections.abc import Mapping
from dataclasses import dataclass

from clip_gs.errors import ConfigError
from clip_gs.gaussians.frames import MODEL_FRAME, UP_AXES
from clip_gs.ops.curves import MAX_BITS

SERIALIZATION_ORDERS = ("xyz", "hilbert", "z")


@dataclass(frozen=True)
class CLIPGSConfig:
    """Architecture and preprocessing of a CLIP-GS encoder.

    Transformer (Uni3D / timm EVA blocks, called without RoPE):
        width: token width (Uni3D ``pc_feat_dim``). depth / num_heads: blocks and heads.
        mlp_ratio, swiglu_mlp, scale_mlp, qkv_fused: EVA block variant of the Uni3D size (see
        the registry); they decide the parameter names the Uni3D converter maps onto.
        embed_dim: output embedding size = the CLIP teacher's (1024 for EVA02-E-14-plus).
        drop_path_rate / patch_dropout: regularisation during training only.

    Tokenizer (FPS + kNN patches):
        num_gaussians: Gaussians sampled per object (Uni3D: 10,000).
        num_groups / group_size: patches g and Gaussians per patch n (Uni3D: 512 x 64).
        fps_start: ``"first"`` (index 0, as Uni3D's pointnet2 FPS) or ``"farthest"`` (the Gaussian
            farthest from the centroid). With ``"farthest"`` the embedding does not depend on the
            order of Gaussians in the file when the object has exactly ``num_gaussians`` of them;
            otherwise the seeded resampling picks Gaussians by index and so still depends on it.
        point_encoder_dim: output width of the mini-PointNet (Uni3D ``pc_encoder_dim`` = 512).
        gaussian_branch: True for CLIP-GS's GS refinement block; False gives the "P&C baseline",
            exactly Uni3D's point encoder on Gaussian positions and colours.
        serialization: orders used to serialize the Gaussians of a patch (paper: xyz-order,
            Hilbert and Z-order). The paper does not say how the orders are combined; here each
            order is processed by the shared convolution stack with its own learnable order
            indicator (a per-order scale and shift, PointMamba style) and the pooled outputs
            are averaged over orders (``order_fusion="mean"``).
        serialization_bits: grid bits per axis for the space-filling curves.
        gaussian_embed_dim: width of the "Linear & Norm" stem of the Gaussian branch.
        gaussian_channels: output widths of the four 1x3 convolutions (strides 1, 1, 2, 2).
        gaussian_pooling: global pooling of the conv features, ``"max"`` or ``"mean"`` (the paper
            says "global pooling"; max matches the point branch).
        scale_activation: how scales enter the Gaussian branch: ``"sigmoid"`` of the log-scale
            (the paper) or ``"exp"``.

    Frame:
        up_axis: the world up axis of the objects the model was trained on (``"+y"``: Uni3D's and
            OpenShape's data, and every clip-gs dataset, stand y-up). Files given to ``encode`` and
            every command are brought into it (:func:`~clip_gs.gaussians.assets.load_asset`).

    Teacher (used by training and zero-shot utilities, not by the encoder itself):
        clip_model / clip_pretrained: open_clip model name and pretrained tag.
    """

    name: str = "custom"
    # transformer
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4 * 2 / 3
    swiglu_mlp: bool = True
    scale_mlp: bool = True
    qkv_fused: bool = False
    embed_dim: int = 1024
    drop_path_rate: float = 0.0
    patch_dropout: float = 0.0
    # tokenizer
    num_gaussians: int = 10_000
    num_groups: int = 512
    group_size: int = 64
    fps_start: str = "first"
    point_encoder_dim: int = 512
    gaussian_branch: bool = True
    serialization: tuple[str, ...] = SERIALIZATION_ORDERS
    serialization_bits: int = 10
    order_fusion: str = "mean"
    gaussian_embed_dim: int = 64
    gaussian_channels: tuple[int, ...] = (64, 64, 128, 256)
    gaussian_pooling: str = "max"
    scale_activation: str = "sigmoid"
    # provenance
    uni3d_model: str | None = None
    up_axis: str = MODEL_FRAME
    clip_model: str = "EVA02-E-14-plus"
    clip_pretrained: str = "laion2b_s9b_b144k"

    def __post_init__(self) -> None:
        type_problems = _type_problems(self)
        if type_problems:
            raise ConfigError(f"invalid CLIPGSConfig {self.name!r}: " + "; ".join(type_problems))
        # JSON gives lists; keep tuples so configs compare and hash consistently.
        object.__setattr__(self, "serialization", tuple(self.serialization))
        object.__setattr__(self, "gaussian_channels", tuple(int(c) for c in self.gaussian_channels))
        problems = []
        for name in ("width", "depth", "num_heads", "embed_dim", "num_gaussians", "num_groups", "group_size",
                     "point_encoder_dim", "gaussian_embed_dim"):  # fmt: skip
            if int(getattr(self, name)) <= 0:
                problems.append(f"{name} must be positive")
        if any(c <= 0 for c in self.gaussian_channels):
            problems.append(f"gaussian_channels must be positive, got {self.gaussian_channels}")
        problems += _cap_problems(self)
        if problems:
            raise ConfigError(f"invalid CLIPGSConfig {self.name!r}: " + "; ".join(problems))
        if self.width % self.num_heads:
            problems.append(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.num_groups > self.num_gaussians:
            problems.append(f"num_groups {self.num_groups} > num_gaussians {self.num_gaussians}")
        if self.group_size > self.num_gaussians:
            problems.append(f"group_size {self.group_size} > num_gaussians {self.num_gaussians}")
        if self.fps_start not in ("first", "farthest"):
            problems.append(f"fps_start must be 'first' or 'farthest', got {self.fps_start!r}")
        unknown = [o for o in self.serialization if o not in SERIALIZATION_ORDERS]
        if unknown or (self.gaussian_branch and not self.serialization):
            problems.append(
                f"serialization must be a non-empty subset of {SERIALIZATION_ORDERS}, got {self.serialization}"
            )
        if not 1 <= self.serialization_bits <= MAX_BITS:
            problems.append(f"serialization_bits must be in [1, {MAX_BITS}], got {self.serialization_bits}")
        if len(self.gaussian_channels) != 4:
            problems.append("gaussian_channels must have 4 entries (one per 1x3 convolution)")
        if self.gaussian_pooling not in ("max", "mean"):
            problems.append(f"gaussian_pooling must be 'max' or 'mean', got {self.gaussian_pooling!r}")
        if self.order_fusion != "mean":
            problems.append(f"order_fusion must be 'mean', got {self.order_fusion!r}")
        if self.scale_activation not in ("sigmoid", "exp"):
            problems.append(f"scale_activation must be 'sigmoid' or 'exp', got {self.scale_activation!r}")
        if not 0.0 < self.mlp_ratio:
            problems.append(f"mlp_ratio must be positive, got {self.mlp_ratio}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            problems.append(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if not 0.0 <= self.patch_dropout < 1.0:
            problems.append(f"patch_dropout must be in [0, 1), got {self.patch_dropout}")
        if self.up_axis not in UP_AXES:
            problems.append(f"up_axis must be one of {list(UP_AXES)}, got {self.up_axis!r}")
        if problems:
            raise ConfigError(f"invalid CLIPGSConfig {self.name!r}: " + "; ".join(problems))

    def replace(self, **overrides) -> CLIPGSConfig:
        """A copy with fields overridden; unknown field names raise :class:`ConfigError`."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(f"unknown CLIPGSConfig field(s) {unknown}; fields are {sorted(names)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping, complete: bool = False) -> CLIPGSConfig:
        """The configuration a mapping of fields describes (``config.json``'s form).

        Args:
            complete: every field must be given (a file written by ``save_pretrained`` holds them all;
                a missing one would silently take its default).

        Raises:
            ConfigError: a field the class does not have, a missing field (``complete``), or a value of
                the wrong type or out of range (the message names the field).
        """
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(f"unknown CLIPGSConfig field(s) {unknown}")
        missing = [name for name in names if name not in data] if complete else []
        if missing:
            raise ConfigError(f"missing CLIPGSConfig field(s) {missing}")
        return cls(**data)


_HINTS = typing.get_type_hints(CLIPGSConfig)
_TYPE_NAMES = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string",
               str | None: "a string or null", tuple[str, ...]: "a list of strings",
               tuple[int, ...]: "a list of integers"}  # fmt: skip


def _type_problems(config: CLIPGSConfig) -> list[str]:
    """Fields whose value is not of the declared type; int-like and real values are normalised in place."""
    problems = []
    for field in dataclasses.fields(config):
        value, hint = getattr(config, field.name), _HINTS[field.name]
        if hint is int:
            ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
            if ok:
                object.__setattr__(config, field.name, int(value))
        elif hint is float:
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and _finite(value)
            if ok:
                object.__setattr__(config, field.name, float(value))
        elif hint is bool:
            ok = isinstance(value, bool)
        elif hint is str:
            ok = isinstance(value, str)
        elif hint == str | None:
            ok = value is None or isinstance(value, str)
        else:  # tuple[str, ...] or tuple[int, ...]
            element = typing.get_args(hint)[0]
            ok = isinstance(value, list | tuple) and all(
                isinstance(v, element) and not isinstance(v, bool) for v in value
            )
        if not ok:
            problems.append(f"{field.name} must be {_TYPE_NAMES.get(hint, hint)}, got {_shown(value)}")
    return problems


def _finite(value: numbers.Real) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int beyond the float range
        return False


def _shown(value: object, limit: int = 60) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= limit else text[:limit] + '...'}"


def _cap_problems(config: CLIPGSConfig) -> list[str]:
    problems = []
    for name, cap in SIZE_CAPS.items():
        value = getattr(config, name)
        largest = max(value) if isinstance(value, tuple) and value else value
        if isinstance(largest, int | float) and largest > cap:
            problems.append(f"{name} {value} exceeds the cap {cap} ({SIZE_MARGIN}x the largest registered model's)")
    return problems


_EVA02_SMALL_BLOCK = {"mlp_ratio": 4 * 2 / 3, "swiglu_mlp": True, "scale_mlp": False, "qkv_fused": True}
_EVA02_BASE_BLOCK = {"mlp_ratio": 4 * 2 / 3, "swiglu_mlp": True, "scale_mlp": True, "qkv_fused": False}
_EVA_GIANT_BLOCK = {"mlp_ratio": 6144 / 1408, "swiglu_mlp": False, "scale_mlp": False, "qkv_fused": True}


def _uni3d(uni3d_model: str, width: int, depth: int, heads: int, block: dict) -> dict:
    return {"uni3d_model": uni3d_model, "width": width, "depth": depth, "num_heads": heads, **block}


_REGISTERED: dict[str, dict] = {
    "clip-gs-tiny": _uni3d("eva02_tiny_patch14_224", 192, 12, 3, _EVA02_SMALL_BLOCK),
    "clip-gs-small": _uni3d("eva02_small_patch14_224", 384, 12, 6, _EVA02_SMALL_BLOCK),
    "clip-gs-base": _uni3d("eva02_base_patch14_448", 768, 12, 12, _EVA02_BASE_BLOCK),
    "clip-gs-large": _uni3d("eva02_large_patch14_448", 1024, 24, 16, _EVA02_BASE_BLOCK),
    "clip-gs-giant": _uni3d("eva_giant_patch14_560", 1408, 40, 16, _EVA_GIANT_BLOCK),
}
"""The fields of each registered configuration that differ from :class:`CLIPGSConfig`'s defaults."""

SIZE_MARGIN = 4
"""How far beyond the registered configurations a size may go (see :data:`SIZE_CAPS`)."""

_SIZE_FIELDS = ("width", "depth", "num_heads", "mlp_ratio", "embed_dim", "num_gaussians", "num_groups", "group_size",
                "point_encoder_dim", "gaussian_embed_dim", "gaussian_channels")  # fmt: skip


def _largest_registered(name: str) -> int | float:
    default = CLIPGSConfig.__dataclass_fields__[name].default
    values = [spec.get(name, default) for spec in _REGISTERED.values()]
    return max(max(v) if isinstance(v, tuple) else v for v in values)


SIZE_CAPS: dict[str, int | float] = {name: SIZE_MARGIN * _largest_registered(name) for name in _SIZE_FIELDS}
"""The largest value each size field may take: :data:`SIZE_MARGIN` times the largest value of any
registered configuration (``gaussian_channels``: each entry). With the registry of this version:
width 5632, depth 160, num_heads 64, mlp_ratio 17.45, embed_dim 4096, num_gaussians 40000,
num_groups 2048, group_size 256, point_encoder_dim 2048, gaussian_embed_dim 256, gaussian channels 1024.
A larger value is refused (:class:`ConfigError`) when the configuration is made: it is a corrupt or
hostile ``config.json``, not a model (an ``embed_dim`` of 1e9 or ``num_gaussians`` of 1e11 would
allocate until the machine gives up)."""

MODEL_CONFIGS: dict[str, CLIPGSConfig] = {name: CLIPGSConfig(name=name, **spec) for name, spec in _REGISTERED.items()}
"""Named configurations, one per Uni3D size (:func:`~clip_gs.model.create_model` builds them)."""

UNI3D_SIZES = {"tiny": "clip-gs-tiny", "small": "clip-gs-small", "base": "clip-gs-base",
               "large": "clip-gs-large", "giant": "clip-gs-giant"}  # fmt: skip
"""Uni3D size names -> registry names."""


def get_model_config(registered: str, /, **overrides) -> CLIPGSConfig:
    """The registered configuration ``registered`` with optional field overrides (``name=`` renames it)."""
    if registered not in MODEL_CONFIGS:
        raise ConfigError(f"unknown model configuration {registered!r}; registered: {list(MODEL_CONFIGS)}")
    return MODEL_CONFIGS[registered].replace(**overrides) if overrides else MODEL_CONFIGS[registered]


def _overrides_dict(self) -> dict:
    """The fields that are set (not None), as ``CLIPGSConfig.replace`` keywords."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


ConfigOverrides = dataclasses.make_dataclass(
    "ConfigOverrides",
    [(f.name, _HINTS[f.name] | None, dataclasses.field(default=None)) for f in dataclasses.fields(CLIPGSConfig)
     if f.name != "name"],
    frozen=True,
    namespace={"as_dict": _overrides_dict, "__module__": __name__},
)  # fmt: skip
ConfigOverrides.__doc__ = """Typed overrides of a registered configuration: every :class:`CLIPGSConfig` field but ``name``,
each None (keep the registered value) or a value of the field's type. Made from ``CLIPGSConfig``'s
fields, so the two never drift apart; what ``clip-gs fit`` validates under ``model.config`` (a
misspelt field or a value of the wrong type is refused when the YAML is read). ``as_dict()``
gives the set fields."""


def as_overrides(value: ConfigOverrides | Mapping | None) -> ConfigOverrides:
    """``value`` as :data:`ConfigOverrides` (a mapping, e.g. from a checkpoint's hyperparameters, is converted).

    Raises:
        ConfigError: a mapping with a field ``CLIPGSConfig`` does not have.
    """
    if value is None:
        return ConfigOverrides()
    if isinstance(value, ConfigOverrides):
        return value
    if isinstance(value, Mapping):
        names = {f.name for f in dataclasses.fields(ConfigOverrides)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ConfigError(f"unknown model config field(s) {unknown}; fields are {sorted(names)}")
        return ConfigOverrides(**value)
    raise ConfigError(f"model config overrides must be a mapping of CLIPGSConfig fields, got {type(value).__name__}")
