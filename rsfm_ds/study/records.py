"""Small JSON records that mark a stage of the study as finished (written atomically, read back)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

STUDY_FORMAT_VERSION = 2
"""Version of the files under a study's out_dir (docs/study.md): 2 added pretraining, inits and
seeds to the cell layout."""


def write_record(path: Path, record: Dict[str, Any]) -> None:
    """Write ``record`` as JSON so that ``path`` exists only with its whole content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)  # atomic rename: a reader sees the old state or the whole record


def read_record(path: Path) -> Optional[Dict[str, Any]]:
    """The record at ``path``, or None when it does not exist."""
    return json.loads(path.read_text()) if path.is_file() else None
