"""Synthetic VOC-style detection data: 20 classes of textured, coloured shapes.

The point of this dataset is a quick end-to-end check that a detector really learns: each
of the 20 VOC class indices is drawn as a unique (shape, colour family) pair, with a texture
as a third attribute, so no single cue (colour alone, shape alone, texture alone) names the
class. design.py says how each class looks, render.py draws one image in memory
(render_image), write.py writes a dataset in both on-disk layouts (generate).
"""

from yolov3.data.synthetic.design import (
    CLASS_DESIGN,
    COLOUR_HUES,
    COLOURS,
    SHAPES,
    TEXTURES,
    ClassDesign,
    class_design,
)
from yolov3.data.synthetic.render import (
    SPLITS,
    RenderedImage,
    SyntheticObject,
    render_image,
)
from yolov3.data.synthetic.write import generate

__all__ = [
    "CLASS_DESIGN",
    "COLOURS",
    "COLOUR_HUES",
    "SHAPES",
    "SPLITS",
    "TEXTURES",
    "ClassDesign",
    "RenderedImage",
    "SyntheticObject",
    "class_design",
    "generate",
    "render_image",
]
