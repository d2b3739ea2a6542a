"""``python -m rsfm_ds.cli`` (what ``deepspeed --module rsfm_ds.cli`` runs in every rank)."""
import sys

from . import main

sys.exit(main())
