"""The three-former MCQ model and its weight loading: `MCQ`, `Tokens`, `Embeddings`, `from_original`,
`save_pretrained`, `load_pretrained`, `load_timm_vit`; the CLIP-initialised `CLIPMCQ` (`from_clip`), and
`create_model`/`create_tokenizer` for a config of either family."""
from .clip import CLIPMCQ, CLIPMCQConfig
from .clip_loading import from_clip
from .loading import (create_model, create_tokenizer, from_original, load_pretrained, load_timm_vit,
                      model_config_from_dict, save_pretrained)
from .mcq import MCQ, Embeddings, Tokens
from .text_former import load_tokenizer

__all__ = ["CLIPMCQ", "CLIPMCQConfig", "MCQ", "Embeddings", "Tokens", "create_model", "create_tokenizer", "from_clip",
           "from_original", "load_pretrained", "load_timm_vit", "load_tokenizer", "model_config_from_dict",
           "save_pretrained"]
