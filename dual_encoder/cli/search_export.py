"""`python evaluate.py export-search --index PATH --out DIR`: one SavedModel that searches an index.

The library call is `dual_encoder.search.search_model.export_search_model`; this module only
parses the flags and prints where the SavedModel went and how to use it.
"""

from __future__ import annotations

import argparse
import json

from dual_encoder.cli.help import HelpFormatter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evaluate.py export-search",
        description="Write one SavedModel holding the text encoder and an index's embeddings and image paths, with a "
        "`search(queries, k)` signature: TF Serving or any TensorFlow program (with tensorflow_text imported) can load "
        "it and search the index without this package. Search is exact, by cosine similarity.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--index", required=True, metavar="PATH",
                        help="an index folder built by evaluate.py index with an exported SavedModel as --model")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="the folder to write the search SavedModel to (created; a search SavedModel written there "
                        "before is replaced, any other non-empty folder is refused)")
    parser.add_argument("--model", metavar="M",
                        help="the training run folder or SavedModel the index was built with (default: the one its "
                        "manifest.json records; another model is refused)")
    return parser


def run(args) -> None:
    from dual_encoder.search.search_model import SEARCH_RECORD, USAGE, export_search_model

    path = export_search_model(args.index, args.out, args.model)
    record = json.loads((path / SEARCH_RECORD).read_text())
    print(f"wrote a search SavedModel of {record['index_size']} images ({record['dim']}-d) to {path}; use it with:")
    print(USAGE.format(path=path), end="")
