"""Training and evaluation: the Task protocol, the model registry and the trainer loop."""

from .task import Task

__all__ = ["Task"]
