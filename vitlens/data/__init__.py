"""Image inputs: files and folders on disk (``images``), their class labels (``labels``) and the generated
shapes data set (``shapes``)."""

from . import shapes
from .images import ImageSet, Skipped, find_images, model_transform, open_rgb
from .labels import LabelledImages, labelled_images
from .shapes import ShapesDataset, make_shape_image, save_images

__all__ = ["ImageSet", "Skipped", "find_images", "model_transform", "open_rgb", "shapes", "ShapesDataset",
           "make_shape_image", "save_images",
           "LabelledImages", "labelled_images"]
