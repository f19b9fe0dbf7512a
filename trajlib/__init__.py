"""trajlib: learned hyperparameter controllers.

Stages, left to right (each imports only from those on its left):
``tasks`` -> ``collect`` -> ``store`` -> ``features`` -> ``labels`` -> ``controllers`` -> ``deploy``
-> ``evaluate``; ``cli`` drives them. Shared vocabulary lives in :mod:`trajlib.space`,
:mod:`trajlib.schema` and :mod:`trajlib.errors`. Importing trajlib does no work.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
