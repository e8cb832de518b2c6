"""Writes miles_original_keys.json: the key names and shapes of the original MILES model, built once from the
original code (TencentARC/MCQ, `model/model_MILES.py`'s MILES): its SpaceTimeTransformer (Frozen-in-Time's divided
space-time ViT-B/16, 4 frames), DistilBERT-base and the two 256-d projections, with the `module.` prefix of a
DistributedDataParallel training checkpoint. Run with the original checkout on the path and a torch + timm + einops +
transformers environment:

    python tests/data/make_miles_original_keys.py PATH/TO/MCQ tests/data/miles_original_keys.json
"""
import json
import sys

from torch import nn
from transformers import DistilBertConfig, DistilBertModel

sys.path.insert(0, sys.argv[1])
from model.video_encoder_MILES import SpaceTimeTransformer  # noqa: E402

video = SpaceTimeTransformer(num_frames=4)
video.head, video.pre_logits, video.fc = nn.Identity(), nn.Identity(), nn.Identity()  # as the original __init__
parts = {"text_model": DistilBertModel(DistilBertConfig()), "video_model": video,
         "text_proj": nn.Sequential(nn.ReLU(), nn.Linear(768, 256)), "vid_proj": nn.Sequential(nn.Linear(768, 256))}
keys = {f"module.{n}.{k}": list(v.shape) for n, p in parts.items() for k, v in p.state_dict().items()}
with open(sys.argv[2], "w") as f:
    f.write("{\n" + ",\n".join(f'  "{k}": {json.dumps(v)}' for k, v in sorted(keys.items())) + "\n}\n")
