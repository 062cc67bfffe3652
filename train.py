#!/usr/bin/env python
"""`python train.py ...`: train a dual encoder (see --help). A shim: the tool is dual_encoder.cli.train,
also installed as the `dual-encoder-train` command."""

import sys

from dual_encoder.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
