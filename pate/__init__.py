"""pate: label public data privately with a PATE teacher ensemble (Papernot et al. 2017, 2018).

From Python: ``pate.load_run(RUN_DIR)`` and ``pate.load_student(MODEL)`` (``pate.api``); torch is
imported only when a student is loaded, so ``import pate`` and ``pate --help`` stay fast.
"""
__version__ = "0.1.0"

from .api import load_run, load_student  # noqa: E402  (after __version__, which the views read)

__all__ = ["__version__", "load_run", "load_student"]
