"""Search as an application: an index folder over a photo collection (exact or FAISS backends),
kept up to date incrementally; one SavedModel that searches it (`search_model`); an HTTP API and a
web page over it (`service`, loaded on first use of its names: it needs FastAPI). The names below are the
stage's public API."""

from dual_encoder.search.backends import BACKENDS, BackendConfig, choose_backend
from dual_encoder.search.index import IndexMismatchError, PhotoIndex, build_index, load_index
from dual_encoder.search.search_model import export_search_model

_SERVICE_NAMES = ("BackgroundServer", "ServiceConfig", "create_app")  # FastAPI loads only when one is used

__all__ = ["BACKENDS", "BackendConfig", "IndexMismatchError", "PhotoIndex", "build_index", "choose_backend",
           "export_search_model", "load_index", *_SERVICE_NAMES]


def __getattr__(name: str):
    if name in _SERVICE_NAMES:
        from dual_encoder.search import service

        return getattr(service, name)
    raise AttributeError(f"module 'dual_encoder.search' has no attribute {name!r}")
