"""EfficientViT-SAM at work: prompts in, masks out, as MIT's and Meta's predictor classes.

``SamPredictor(model, variables)``: ``set_image`` then ``predict`` (points, boxes, masks) or
``predict_batch``; ``SamAutomaticMaskGenerator(model, variables)``: ``generate`` every mask of
an image from a grid of points. The preprocessing (``sam.transforms``) and the generator's
utilities (``sam.amg``) follow the reference to its precision. The model itself is
``zoo.create_model("efficientvit_sam_l0")`` (``zoo.sam``); this package imports the zoo, never
the other way round.
"""

from efficientvit_jax.sam.generator import OUTPUT_MODES, SamAutomaticMaskGenerator
from efficientvit_jax.sam.predictor import SamPredictor

__all__ = ["OUTPUT_MODES", "SamAutomaticMaskGenerator", "SamPredictor"]
