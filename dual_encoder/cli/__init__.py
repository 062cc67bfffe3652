"""The command-line layer: the only argparse, over the library API (which never parses argv or exits).

Importing this module gives the process the tools' TensorFlow defaults, so the tools import it
before anything that loads TensorFlow. A notebook that wants the same speed sets them itself
before importing TensorFlow: `os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")`.
"""

from __future__ import annotations

import os

# Quiet C++ logs, and oneDNN kernels, measured +24-72 % faster for CNN and BERT towers on our AVX2
# CPUs (../shared/DESIGN.md); read once, when TensorFlow is first imported. A value the user set wins.
TENSORFLOW_DEFAULTS = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "1"}


def use_tensorflow_defaults() -> None:
    for name, value in TENSORFLOW_DEFAULTS.items():
        os.environ.setdefault(name, value)


use_tensorflow_defaults()
