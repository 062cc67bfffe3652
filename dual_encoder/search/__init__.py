"""Search as an application: an index folder over a photo collection (exact or FAISS backends),
kept up to date incrementally. The names below are the stage's public API."""

from dual_encoder.search.backends import BACKENDS, BackendConfig, choose_backend
from dual_encoder.search.index import IndexMismatchError, PhotoIndex, build_index, load_index

__all__ = ["BACKENDS", "BackendConfig", "IndexMismatchError", "PhotoIndex", "build_index", "choose_backend", "load_index"]
