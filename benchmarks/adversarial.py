"""Probe: every case of the bad-input corpus through the DAG's own steps, counted handled / tried.

The corpus is ``tests/badinput.py`` (files users really send, each broken its own way, built
from the production sample writer). Each case is uploaded to ``incoming/`` of an S3 lake on
``rclone serve s3`` and run through :func:`pipelines.orchestration.steps.ingest_upload` then
``validate_upload``, as the ingest DAG's tasks call them, one at a time; after every
adversarial case a fresh good upload goes through the same steps.

An adversarial case counts as **handled** when all of these hold:

* the steps returned (no exception escaped: a task would have failed and retried in vain);
* the upload is ``quarantined`` by the expected stage with the expected code, its reason
  holds the expected words and comes with a hint (what to do);
* ``quarantine/<id>/reason.json`` says the same, and the original sits beside it,
  byte-identical; nothing of it is in ``raw/``, ``zarr/`` or ``incoming/``;
* the good upload that follows it passes (other files keep flowing).

The valid cases of the corpus are run too and must pass (reported apart). Prints the JSON
result and writes ``benchmarks/results/adversarial.json``.

Usage::

    .venv/bin/python benchmarks/adversarial.py [--workdir /tmp/sclake-adversarial]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from benchmarks.common import write_result  # noqa: E402
from benchmarks.s3_ingest import Server  # noqa: E402

MODEL = "gf-6L-10M-i2048"


def run_steps(settings, key: str) -> dict:
    """What the ingest DAG does with one upload: ingest, then validate."""
    from pipelines.orchestration import steps

    return steps.validate_upload(settings, steps.ingest_upload(settings, key))


def check_refused(lake, case, key: str, data: bytes, manifest: dict) -> list[str]:
    """What is wrong with how an adversarial upload was refused (empty: handled)."""
    from pipelines.lake import PATHS

    dataset_id = hashlib.sha256(data).hexdigest()[:16]
    problems = []
    if manifest.get("outcome") != "quarantined":
        return [f"outcome {manifest.get('outcome')!r}, not quarantined"]
    if manifest.get("code") != case.code:
        problems.append(f"code {manifest.get('code')!r}, expected {case.code!r}")
    reason = manifest.get("reason") or ""
    problems += [f"reason lacks {w!r}: {reason!r}" for w in case.reason_has if w not in reason]
    if not manifest.get("hint"):
        problems.append("no hint")
    q = PATHS.quarantine(dataset_id)
    try:
        saved = lake.read_json(f"{q}/reason.json")
    except Exception as e:  # noqa: BLE001 - a missing reason is a finding, not a crash
        return [*problems, f"no reason.json: {e}"]
    if (saved.get("stage"), saved.get("code")) != (case.stage, case.code):
        problems.append(f"reason.json says {saved.get('stage')}/{saved.get('code')}")
    if not saved.get("reason"):
        problems.append("reason.json has no reason")
    name = key.rsplit("/", 1)[-1]
    if not lake.exists(f"{q}/{name}") or lake.read_bytes(f"{q}/{name}") != data:
        problems.append("original not kept byte-identical in quarantine")
    if lake.exists(PATHS.raw(dataset_id)) or lake.is_published(PATHS.zarr(dataset_id)) or lake.exists(key):
        problems.append("left in raw/, zarr/ or incoming/")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sclake-adversarial"))
    args = parser.parse_args()
    from badinput import CASES, build_corpus

    from pipelines.lake import Lake
    from pipelines.models.synthesize import synthesize
    from pipelines.sample import write_sample

    work = args.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    corpus = build_corpus(work / "corpus")
    server = Server(work / "s3")
    try:
        models = work / "models"
        settings = server.settings("adversarial").model_copy(
            update={"models_dir": models, "models": MODEL, "part_cells": 64, "shard_cells": 16, "dask_workers": 1}
        )
        synthesize(settings, MODEL, tiny=True)
        lake = Lake(settings)
        started = time.perf_counter()
        cases, valid = [], []
        for i, case in enumerate(CASES):
            key = f"incoming/corpus/{case.name}.h5ad"
            data = corpus[case.name].read_bytes()
            lake.put(corpus[case.name], key)
            t = time.perf_counter()
            try:
                manifest = run_steps(settings, key)
                error = None
            except Exception as e:  # noqa: BLE001 - an escaped error is what the probe counts
                manifest, error = {}, f"{type(e).__name__}: {e}"
                traceback.print_exc()
            seconds = round(time.perf_counter() - t, 2)
            if case.valid:
                ok = error is None and manifest.get("outcome") == case.outcome
                valid.append({"case": case.name, "passed": ok, "outcome": manifest.get("outcome"), "error": error})
                continue
            problems = [f"raised {error}"] if error else check_refused(lake, case, key, data, manifest)
            # Another upload right after: it must go through as if nothing happened.
            good = write_sample(work / f"good-{i}.h5ad", cells=120, genes=400, seed=1000 + i)
            lake.put(good, f"incoming/good/good-{i}.h5ad")
            try:
                after = run_steps(settings, f"incoming/good/good-{i}.h5ad").get("outcome")
            except Exception as e:  # noqa: BLE001
                after = f"raised {type(e).__name__}: {e}"
            if after != "pass":
                problems.append(f"the next upload did not pass: {after}")
            cases.append(
                {
                    "case": case.name,
                    "description": case.description,
                    "handled": not problems,
                    "stage": manifest.get("stage", case.stage),
                    "code": manifest.get("code"),
                    "reason": manifest.get("reason"),
                    "problems": problems,
                    "seconds": seconds,
                }
            )
        result = {
            "probe": "adversarial uploads through steps.ingest_upload + steps.validate_upload on an S3 lake",
            "handled": sum(c["handled"] for c in cases),
            "tried": len(cases),
            "valid_passed": sum(v["passed"] for v in valid),
            "valid_tried": len(valid),
            "seconds": round(time.perf_counter() - started, 1),
            "cases": cases,
            "valid": valid,
        }
    finally:
        server.close()
    path = write_result("adversarial", result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("cases", "valid")}))
    for c in cases:
        print(f"  {'handled' if c['handled'] else 'NOT HANDLED'}: {c['case']} ({c['code']}) {c['problems'] or ''}")
    print(f"result: {path}")


if __name__ == "__main__":
    main()
