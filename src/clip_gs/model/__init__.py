"""The CLIP-GS network: configs and registry, input features, GS Tokenizer, encoder, the fused
inference form, CLIPGS, Uni3D conversion.

Nothing here imports Lightning: ``CLIPGS.from_pretrained(...)`` and ``encode`` work without it.
"""

from clip_gs.model.clipgs import CLIPGS
from clip_gs.model.config import MODEL_CONFIGS, CLIPGSConfig, get_model_config, list_models
from clip_gs.model.encoder import GaussianEncoder, PatchDropout
from clip_gs.model.features import FEATURE_LAYOUT, gaussian_features, preprocess, preprocess_cloud
from clip_gs.model.fused import Encoded, FusedEncoder
from clip_gs.model.inputs import GaussianInputDataset
from clip_gs.model.tokenizer import GSTokenizer, make_patches
from clip_gs.model.uni3d import UNI3D_CHECKPOINTS, convert_uni3d_state_dict

__all__ = [
    "CLIPGS",
    "FEATURE_LAYOUT",
    "MODEL_CONFIGS",
    "UNI3D_CHECKPOINTS",
    "CLIPGSConfig",
    "Encoded",
    "FusedEncoder",
    "GSTokenizer",
    "GaussianEncoder",
    "GaussianInputDataset",
    "PatchDropout",
    "convert_uni3d_state_dict",
    "gaussian_features",
    "get_model_config",
    "list_models",
    "make_patches",
    "preprocess",
    "preprocess_cloud",
]
