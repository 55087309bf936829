"""Larder's Python SDK.

Two ways in:

* :class:`Client` talks to a running ``larder serve`` over HTTP: online reads
  (:meth:`Client.get_online_features`), direct writes (:meth:`Client.push`,
  :meth:`Client.write_to_online_store`, partial updates included) and training sets
  (:meth:`Client.get_historical_features`). Tables travel as Arrow IPC streams both ways, so
  values keep their declared types (int32 stays int32, timestamps are UTC-aware, vectors are
  float32 arrays).
* :class:`FeatureStore` drives a feature repo on this machine by running the ``larder``
  binary: ``apply``, ``materialize``, training sets and small online lookups.

Why local mode runs the binary as a subprocess rather than loading a compiled (pyo3)
extension: the ``larder`` binary is already what users install and run, so the SDK needs no
second build of the Rust workspace (which takes tens of minutes on a small machine and would
need a wheel per platform and Python version), and the CLI's behaviour, its errors included,
is exactly the one the SDK reports. The cost is one process start per call: with a debug
build, ``FeatureStore.apply(dry_run=True)`` on the demo repo takes a few tens of
milliseconds (see the README's measurement), which does not matter for the batch-sized
operations local mode offers. Latency-sensitive online reads belong to :class:`Client`.
"""

from ._client import Client
from ._errors import (
    Conflict,
    ConversionError,
    InvalidArgument,
    LarderError,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    ServerError,
    Unauthenticated,
    Unavailable,
)
from ._local import FeatureStore, find_binary
from ._response import ForgetResult, OnlineResponse, TrainingSet, WriteResult

__version__ = "0.1.0"

__all__ = [
    "Client",
    "FeatureStore",
    "ForgetResult",
    "OnlineResponse",
    "TrainingSet",
    "WriteResult",
    "LarderError",
    "InvalidArgument",
    "ConversionError",
    "NotFound",
    "Unauthenticated",
    "PermissionDenied",
    "PayloadTooLarge",
    "Conflict",
    "Unavailable",
    "ServerError",
    "find_binary",
    "__version__",
]
