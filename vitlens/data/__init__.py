"""Image inputs: files and folders on disk (``images``) and generated data sets."""

from .images import ImageSet, Skipped, find_images, model_transform, open_rgb

__all__ = ["ImageSet", "Skipped", "find_images", "model_transform", "open_rgb"]
