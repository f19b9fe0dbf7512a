"""The trajectory store: atomic, crash-safe commits of finished runs; lazy reads of committed ones.

A store is a directory or an fsspec URL such as ``s3://bucket/prefix`` (layout and guarantees in
``docs/store.md``)::

    from trajlib.store import create_store, open_store
    store = create_store("data/demo")              # or open_store(...); or "s3://bucket/prefix"
    store.write_run(run, steps, decisions, branches, layers, layer_names)   # -> bool
    store.steps(task="mnist1d").collect()          # polars LazyFrame of committed runs only

Importing this package does no work.
"""

from trajlib.store._export import export_tensorboard
from trajlib.store._fs import redact as redact_location
from trajlib.store._store import Store, create_store, open_store

__all__ = ["Store", "create_store", "open_store", "export_tensorboard", "redact_location"]
