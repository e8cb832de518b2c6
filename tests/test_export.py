"""The model for serving elsewhere: `mcq-ds export-onnx` run with ONNX Runtime, and the MLflow pyfunc model loaded
back with `mlflow.pyfunc.load_model`; both must give the embeddings `mcq-ds extract` writes for the same videos and
texts. (The pyfunc model logged by a training run to a real MLflow server, and its registration by name, are tested
in test_tracking.py.)"""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from mcq_ds.cli import main
from mcq_ds.model.presets import preset
from mcq_ds.eval.data import ClipSpec, video_file_clip
from mcq_ds.model import MCQ, load_tokenizer, save_pretrained
from shards_fixtures import encode_video

TEXTS = ["a blue square is sinking", "a dog", "a red circle is moving to the left on a striped background"]


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """A tiny model, two real encoded videos and what `mcq-ds extract` wrote for them and for TEXTS."""
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = MCQ(preset("tiny"))
    save_pretrained(model, load_tokenizer(model.cfg.text), root / "model")
    (root / "videos").mkdir()
    encode_video(root / "videos" / "a.mp4", "h264", seconds=3)
    encode_video(root / "videos" / "b.webm", "vp9", seconds=2, fps=8)
    (root / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    assert main(["extract", str(root / "model"), str(root / "videos"), "--texts", str(root / "texts.txt"),
                 "-o", str(root / "features"), "--workers", "0", "--quiet"]) == 0
    features = root / "features"
    return {"root": root, "model": root / "model", "videos": (features / "video_ids.txt").read_text().split(),
            "video_embeddings": np.load(features / "video_embeddings.npy"),
            "text_embeddings": np.load(features / "text_embeddings.npy")}


def test_onnx_encoders_give_the_extracted_embeddings_in_onnx_runtime(extracted, capsys):
    import onnxruntime
    from transformers import AutoTokenizer

    out = extracted["root"] / "onnx"
    assert main(["export-onnx", str(extracted["model"]), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "text: max |ONNX Runtime − PyTorch| = " in printed and "video: max" in printed
    about = json.loads((out / "onnx.json").read_text())
    assert max(about["max_abs_difference_vs_pytorch"].values()) < 1e-4
    assert about["video_encoder"]["normalisation"]["mean"] == [0.485, 0.456, 0.406]

    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    tokens = tokenizer(TEXTS, padding=True, return_tensors="np")  # another batch and length than the export's
    text = onnxruntime.InferenceSession(str(out / "text_encoder.onnx")).run(
        ["text_embedding"], {"input_ids": tokens["input_ids"].astype(np.int64),
                             "attention_mask": tokens["attention_mask"].astype(np.int64)})[0]
    np.testing.assert_allclose(text, extracted["text_embeddings"], atol=1e-5)

    video_session = onnxruntime.InferenceSession(str(out / "video_encoder.onnx"))
    spec = ClipSpec(num_frames=about["video_encoder"]["frames"], img_size=about["video_encoder"]["shape"][-1])
    clips = np.concatenate([video_file_clip(path, spec)[0].numpy() for path in extracted["videos"]])
    videos = video_session.run(["video_embedding"], {"video": clips})[0]
    np.testing.assert_allclose(videos, extracted["video_embeddings"], atol=1e-5)
    fewer = video_session.run(["video_embedding"], {"video": clips[:1, :2]})[0]  # two frames: the axis is dynamic
    assert fewer.shape == (1, 64) and np.isclose(np.linalg.norm(fewer), 1, atol=1e-5)


def test_pyfunc_model_predicts_text_and_video_embeddings(extracted):
    import mlflow

    from mcq_ds.serve.pyfunc import save_pyfunc

    saved = save_pyfunc(extracted["model"], extracted["root"] / "mlflow-model")
    weights = saved / "artifacts" / "model" / "model.safetensors"
    assert weights.stat().st_ino == (extracted["model"] / "model.safetensors").stat().st_ino  # stored once
    model = mlflow.pyfunc.load_model(str(saved))
    inputs = model.metadata.get_input_schema().input_names()
    assert inputs == ["text", "video"] and model.metadata.get_output_schema().inputs[0].shape == (-1, 64)
    np.testing.assert_allclose(model.predict(pd.DataFrame({"text": TEXTS})), extracted["text_embeddings"], atol=1e-5)
    np.testing.assert_allclose(model.predict(pd.DataFrame({"video": extracted["videos"]})),
                               extracted["video_embeddings"], atol=1e-5)
    mixed = model.predict(pd.DataFrame({"text": [None, TEXTS[1]], "video": [extracted["videos"][1], None]}))
    np.testing.assert_allclose(mixed, [extracted["video_embeddings"][1], extracted["text_embeddings"][1]], atol=1e-5)
    with pytest.raises(ValueError, match="row 0: give exactly one of 'text'"):
        model.predict(pd.DataFrame({"text": ["a"], "video": [extracted["videos"][0]]}))
