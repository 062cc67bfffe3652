"""The dual encoder: projection heads, contrastive losses, the class prior, and the model itself.

`heads`, `losses`, `class_prior`, `replicas` (its view of tf.distribute) and `dual_encoder`
(the Keras model with its contrastive train step). The names below are the stage's public API.
"""

from dual_encoder.model.class_prior import ClassPrior, ClassPriorUnavailable, build_class_prior
from dual_encoder.model.dual_encoder import DualEncoder
from dual_encoder.model.heads import FeatureDropout, ProjectionHead
from dual_encoder.model.losses import LOSSES, get_loss
from dual_encoder.model.replicas import num_workers

__all__ = ["LOSSES", "ClassPrior", "ClassPriorUnavailable", "DualEncoder", "FeatureDropout", "ProjectionHead",
           "build_class_prior", "get_loss", "num_workers"]
