"""What users do with a trained model.

* `metrics`: retrieval metrics with the original's conventions (`retrieval_metrics`, `t2v_ranks`, `v2t_ranks`).
* `checkpoint`: `load_model` for model folders, DeepSpeed runs/checkpoints and original MCQ checkpoints.
* `data`: evaluation clips (frames, transform, sliding windows) from shards or video files.
* `retrieval`: `mcq-ds eval`, the multi-rank zero-shot retrieval launcher.
* `extract`: `mcq-ds extract`, video files and texts to embeddings (.npy + ids), resumable.
* `search`: `mcq-ds search`, top-k over saved embeddings (chunked exact, or FAISS).
* `attention`, `visualize`: the BridgeFormer's cross-attention maps and `mcq-ds visualize`.
"""
