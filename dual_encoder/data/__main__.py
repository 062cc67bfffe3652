"""`python -m dual_encoder.data ...`: write a caption source as TFRecord shards (see --help). A shim:
the tool is dual_encoder.cli.data, also installed as the `dual-encoder-data` command."""

import sys

from dual_encoder.cli.data import main

if __name__ == "__main__":
    sys.exit(main())
