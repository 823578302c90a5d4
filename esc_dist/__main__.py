import logging
import os
import sys

from . import dist
from .cli import main

rc = main()
if dist.world_size() > 1:
    # A rank of a multi-process run has torn its process group down and finished its W&B run
    # (cli.main); it leaves without interpreter finalization, where gloo's and the rendezvous
    # store's threads can still abort a finished rank (SIGABRT, "terminate called ...") and turn
    # a successful run into a failed launch.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)
raise SystemExit(rc)
