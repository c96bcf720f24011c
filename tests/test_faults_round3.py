"""Reliability, round 3: the grounding study and train-grounding under interruption (docs/reliability.md).

A study killed with SIGKILL mid-training leaves finished runs (``summary.json`` written last) and an
unfinished run directory; the rerun of the same command reuses the finished runs, says it retrains the
unfinished one, and ends with encoders and tables byte-identical to an uninterrupted study (``slow``:
real subprocesses).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

STUDY = [sys.executable, "-m", "spatial_probing.studies.grounding", "--arms", "mlm", "text_pair", "--seeds", "0", "1",
         "--steps", "40", "--n_probe", "24", "--n_boot", "100", "--train_args",
         "--data.batch_size 16 --data.n_train 128 --data.n_val 16 --trainer.val_check_interval 10 --model.warmup_steps 2"]
# measured per run, so they differ between any two runs of the same command: compared apart from the checksums
TIMED = {"runs.csv"}


def _checksums(out: Path) -> dict[str, str]:
    files = sorted(out.glob("runs/*/*/encoder.ckpt")) + sorted(p for p in (out / "tables").glob("*.csv")
                                                                 if p.name not in TIMED)
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.mark.slow
def test_sigkilled_study_resumes_to_the_same_encoders_and_tables(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    reference = tmp_path / "reference"
    subprocess.run([*STUDY, "--out_dir", str(reference)], check=True, env=env, capture_output=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen([*STUDY, "--out_dir", str(out)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    # kill once the first run has finished and the second has started (its directory exists, no summary yet)
    while not (out / "runs" / "mlm" / "seed1").exists() and time.monotonic() < deadline:
        assert proc.poll() is None, "the study ended before it could be interrupted"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "runs/mlm/seed0/summary.json").is_file() and not (out / "runs/mlm/seed1/summary.json").exists()
    first = (out / "runs/mlm/seed0/encoder.ckpt").read_bytes()
    rerun = subprocess.run([*STUDY, "--out_dir", str(out)], check=True, env=env, capture_output=True, text=True)
    assert "training mlm seed 0" not in rerun.stdout  # the finished run is reused ...
    assert "holds an unfinished run (no summary.json); training it again from step 0" in rerun.stdout  # ... said
    assert (out / "runs/mlm/seed0/encoder.ckpt").read_bytes() == first
    assert _checksums(out) == _checksums(reference)
    assert not list(out.rglob("*.partial"))  # no half-written checkpoint left behind


def test_study_report_escapes_hostile_text(tmp_path: Path) -> None:
    import pandas as pd

    from spatial_probing.studies.report import write_report

    hostile = "<script>alert('x')</script> & \"quotes\""
    write_report(tmp_path, hostile, [("h1", hostile), ("p", f"**{hostile}** `{hostile}`"),
                                      ("table", pd.DataFrame({"arm": [hostile], "value": [0.5]}))])
    page = (tmp_path / "report.html").read_text()
    assert "<script>" not in page and page.count("&lt;script&gt;") == 5  # title, heading, bold, code, table cell
    assert "<b>&lt;script&gt;" in page and "<code>&lt;script&gt;" in page
