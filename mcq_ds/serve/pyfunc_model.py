"""The code MLflow runs to load an mcq-ds model saved by `mcq_ds.serve.pyfunc.save_pyfunc` ("models from code":
the model is this file plus the model folder, and nothing is unpickled)."""
import mlflow

from mcq_ds.serve.pyfunc import MCQEmbedder

mlflow.models.set_model(MCQEmbedder())
