"""`mcq-ds serve`: a local search server and web page over extracted video embeddings (app.py), and the model
exported for serving elsewhere: ONNX encoders (onnx_export.py) and an MLflow pyfunc model (pyfunc.py)."""
