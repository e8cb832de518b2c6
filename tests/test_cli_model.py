"""`mcq-ds init` and `mcq-ds convert-original` as a user runs them."""
import subprocess
import sys

import timm
import torch

from mcq_ds.model import MCQ, load_pretrained
from mcq_ds.model.loading import mcq_to_original
from mcq_ds.model.text_former import default_vocab
from test_model import tiny_config


def mcq_ds(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mcq_ds.cli", *args], capture_output=True, text=True)


def test_init_from_timm_vit_and_a_real_pretrained_text_folder(tmp_path):
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=64, embed_dim=128, depth=4,
                            num_heads=4, num_classes=0)
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    minilm = default_vocab().parent  # 384-wide BERT, beside a 128-wide VideoFormer
    result = mcq_ds("init", "-o", str(tmp_path / "init"), "--preset", "tiny", "--vit-weights",
                    str(tmp_path / "vit.pth"), "--text-model", str(minilm))
    assert result.returncode == 0, result.stderr
    model, tokenizer = load_pretrained(tmp_path / "init")
    assert model.text_model.width == 384
    assert model.bridge_model.blocks[0].cross_attn.q.in_features == 384
    assert torch.equal(model.video_model.blocks[3].attn.qkv.weight, vit.blocks[3].attn.qkv.weight)
    assert torch.equal(model.video_model.norm.weight, torch.ones(128))  # the final norm is not loaded (SPEC §1.2)
    assert tokenizer("a horse")["input_ids"] == [101, 1037, 3586, 102]


def test_convert_original_and_its_errors(tmp_path):
    model = MCQ(tiny_config())
    torch.save({"state_dict": {"module." + k: v for k, v in mcq_to_original(model.state_dict()).items()}},
               tmp_path / "MCQ.pth")
    # tiny_config uses 16-wide heads, which a checkpoint cannot tell; released ones use 64 (the default)
    result = mcq_ds("convert-original", str(tmp_path / "MCQ.pth"), "-o", str(tmp_path / "out"), "--no-bridge")
    assert result.returncode == 0, result.stderr
    retrieval, _ = load_pretrained(tmp_path / "out")
    assert not hasattr(retrieval, "bridge_model")
    assert torch.equal(retrieval.video_proj.weight, model.video_proj.weight)

    missing = mcq_ds("convert-original", str(tmp_path / "nope.pth"), "-o", str(tmp_path / "out2"))
    assert missing.returncode == 2 and "weight file not found" in missing.stderr
