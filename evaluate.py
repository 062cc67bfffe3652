#!/usr/bin/env python
"""`python evaluate.py ...`: zero-shot, retrieval and search (see --help). A shim: the tool is
dual_encoder.cli.evaluate, also installed as the `dual-encoder-evaluate` command."""

import sys

from dual_encoder.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
