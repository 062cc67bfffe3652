"""dual-encoder: CLIP-style image-text dual encoders for Keras 3 / TensorFlow.

The package follows the flow data -> towers -> model -> training -> evaluation -> export;
each step is a module (see README.md) and none imports a step that comes after it. Importing it
changes nothing in the process (no environment variables): the command-line tools set their
TensorFlow defaults themselves (`dual_encoder.cli`).
"""

__version__ = "0.1.0"
