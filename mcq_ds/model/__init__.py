"""The three-former MCQ model and its weight loading: `MCQ`, `Tokens`, `Embeddings`, `from_original`,
`save_pretrained`, `load_pretrained`, `load_timm_vit`; the CLIP-initialised `CLIPMCQ` (`from_clip`), and
`preset`/`create_model`/`create_tokenizer` for a config of either family."""
from ..config import CLIPMCQConfig, model_config_from_dict
from .clip import CLIPMCQ
from .clip_loading import from_clip
from .loading import from_original, load_pretrained, save_pretrained
from .mcq import MCQ, Embeddings, Tokens
from .presets import create_model, create_tokenizer, preset
from .text_former import load_tokenizer
from .vit_init import load_timm_vit

__all__ = ["CLIPMCQ", "CLIPMCQConfig", "MCQ", "Embeddings", "Tokens", "create_model", "create_tokenizer", "from_clip",
           "from_original", "load_pretrained", "load_timm_vit", "load_tokenizer", "model_config_from_dict",
           "preset", "save_pretrained"]
