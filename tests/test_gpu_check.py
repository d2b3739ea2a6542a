"""bench/gpu_check.sh --smoke: every part of the GPU check runs at toy sizes on the CPU and the
JSON report has every section with figures; the run leaves no process behind. Budgets are scaled
up (``--budget-scale``) so that a machine shared with other jobs still runs every part: the test
checks the report, never the time."""
import json
import math
import os
import subprocess
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("environment", "mae", "memory", "loader", "rotated_ops", "finetune")


def _processes_with(marker: str):
    """Pids of live processes whose environment holds ``marker`` (every descendant inherits it,
    also one that started its own session or lost its parent)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def _numbers(row):
    return [v for v in row.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]


@pytest.mark.slow
def test_smoke_run_reports_every_section(tmp_path):
    out = tmp_path / "report.json"
    cmd = ["bash", "bench/gpu_check.sh", "--smoke", "--workdir", str(tmp_path / "work"), "--out", str(out),
           "--budget-scale", "10"]
    token = uuid.uuid4().hex
    marker = f"RSFM_GPU_CHECK_TEST={token}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RSFM_GPU_CHECK_TEST": token}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        text, _ = proc.communicate(timeout=1200)
    finally:
        proc.kill()
    assert proc.returncode == 0, text[-3000:]
    assert _processes_with(marker) == []  # parts, fine-tuning runs and data workers all gone

    report = json.loads(out.read_text())
    assert report["mode"] == "smoke"
    sections = report["sections"]
    assert set(SECTIONS) <= set(sections)
    assert sections["environment"]["torch"] and sections["environment"]["cores"] >= 1
    for name in SECTIONS[1:]:
        rows = sections[name].get("rows")
        assert rows, f"{name}: {sections[name]}"
        measured = [r for r in rows if "error" not in r and "skipped" not in r]
        assert measured, f"{name}: nothing measured: {rows}"
        for r in measured:
            assert _numbers(r) and all(math.isfinite(v) and v >= 0 for v in _numbers(r)), (name, r)
        assert f"## {name}" in text  # and the markdown table was printed

    mae = [r for r in sections["mae"]["rows"] if "images_per_s" in r]
    assert {r["checkpointing"] for r in mae} == {False, True}
    for r in mae:
        assert r["images_per_s"] > 0 and 0 < r["mfu"] < 1
        assert r["memory_ratio"] == pytest.approx(r["peak_memory_bytes"] / r["predicted_peak_bytes"])
    # A precision the CPU cannot run is reported with the reason, not dropped.
    for precision in ("bf16", "fp16"):
        assert any(r.get("precision") == precision for r in sections["mae"]["rows"])
    loader = {r["pipeline"]: r for r in sections["loader"]["rows"]}
    assert loader["loader, decode on cpu"]["ratio_to_decode_only"] == pytest.approx(
        loader["loader, decode on cpu"]["images_per_s"] / loader["decode-only cv2"]["images_per_s"])
    assert {r["task"] for r in sections["finetune"]["rows"] if "images_per_s" in r} == {"det", "seg"}
