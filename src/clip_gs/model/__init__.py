"""The CLIP-GS network: configs and registry, input features, GS Tokenizer, encoder, the fused
inference form, CLIPGS, Uni3D conversion and named pretrained models; :func:`create_model` makes
every model, :func:`load_model` loads one with its teacher.

Nothing here imports Lightning: ``create_model(...)`` and ``encode`` work without it.
"""

from clip_gs.model.clipgs import CLIPGS
from clip_gs.model.config import MODEL_CONFIGS, CLIPGSConfig, get_model_config
from clip_gs.model.encoder import GaussianEncoder, PatchDropout
from clip_gs.model.factory import create_model, list_models
from clip_gs.model.features import FEATURE_LAYOUT, gaussian_features, preprocess, preprocess_cloud
from clip_gs.model.fused import Encoded, FusedEncoder
from clip_gs.model.inputs import GaussianInputDataset
from clip_gs.model.loaded import LoadedModel, load_model
from clip_gs.model.pretrained import PRETRAINED
from clip_gs.model.tokenizer import GSTokenizer, make_patches
from clip_gs.model.uni3d import convert_uni3d_state_dict

__all__ = [
    "CLIPGS",
    "FEATURE_LAYOUT",
    "MODEL_CONFIGS",
    "PRETRAINED",
    "CLIPGSConfig",
    "Encoded",
    "FusedEncoder",
    "GSTokenizer",
    "GaussianEncoder",
    "GaussianInputDataset",
    "LoadedModel",
    "PatchDropout",
    "convert_uni3d_state_dict",
    "create_model",
    "gaussian_features",
    "get_model_config",
    "list_models",
    "load_model",
    "make_patches",
    "preprocess",
    "preprocess_cloud",
]
