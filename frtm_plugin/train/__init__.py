"""Offline training of the segmentation network S (``python -m frtm_plugin.train --help``)."""

from .data import TrainSequence, davis_sequences, fiftyone_sequences
from .trainer import TrainConfig, Trainer, latest_checkpoint
from .validate import evaluate_model, format_comparison

__all__ = ["TrainSequence", "davis_sequences", "fiftyone_sequences", "TrainConfig", "Trainer", "latest_checkpoint",
           "evaluate_model", "format_comparison"]
