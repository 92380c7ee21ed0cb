"""The ``hbm`` command: ``check``, ``fit``, ``simulate``, ``predict``, ``compare``."""
from hbm.cli.main import main

__all__ = ['main']
