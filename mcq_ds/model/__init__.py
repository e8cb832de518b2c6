"""The three-former MCQ model and its weight loading: `MCQ`, `Tokens`, `Embeddings`, `from_original`,
`save_pretrained`, `load_pretrained`, `load_timm_vit`."""
from .loading import from_original, load_pretrained, load_timm_vit, save_pretrained
from .mcq import MCQ, Embeddings, Tokens
from .text_former import load_tokenizer

__all__ = ["MCQ", "Embeddings", "Tokens", "from_original", "load_pretrained", "load_timm_vit", "load_tokenizer",
           "save_pretrained"]
