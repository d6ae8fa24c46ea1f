import logging
import os

logging.getLogger("lyco").setLevel(logging.ERROR)
logging.getLogger("LyCORIS").setLevel(logging.ERROR)

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one intra-op thread per worker: tiny ops on oversubscribed cores are much slower
    import torch

    torch.set_num_threads(1)


import pytest  # noqa: E402

from lyco.console import QUIET_ENV, VERBOSE_ENV  # noqa: E402


@pytest.fixture(autouse=True)
def _console_environment():
    """A command run in-process (``lyco.cli.main``) sets the quiet/verbose environment for the processes it would
    start; undo that after each test so that later subprocesses start like a fresh shell (else a later
    ``--verbose`` child inherits DIFFUSERS_VERBOSITY=error, or a quiet one LYCO_VERBOSE=1)."""
    keys = (*QUIET_ENV, VERBOSE_ENV)
    saved = {k: os.environ.get(k) for k in keys}
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
