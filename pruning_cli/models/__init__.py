"""Models and the registry that says which of their layers are prunable, under the paper's layer names. Imports
only errors: data, training, the run and the readers build on it."""

from pruning_cli.models.registry import MODELS, ModelSpec, get_model_spec

__all__ = ["MODELS", "ModelSpec", "get_model_spec"]
