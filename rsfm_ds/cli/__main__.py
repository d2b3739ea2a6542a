"""``python -m rsfm_ds.cli`` (what ``deepspeed --module rsfm_ds.cli`` runs in every rank)."""
from .entry import run

run()
