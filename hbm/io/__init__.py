"""Files: run directories written atomically and never overwritten (``rundir``), checkpoints
(``checkpoint``)."""
from hbm.io.rundir import new_run_dir, load_run, save_fit
from hbm.io.checkpoint import Checkpointer

__all__ = ['new_run_dir', 'load_run', 'save_fit', 'Checkpointer']
