"""DVC stage `scrub_pii`: replace PII in the ingested tables with typed placeholders."""

import os

# The NER's matrix products go through numpy's BLAS (see dial.pii); one thread each is fastest for
# its small matrices, and more processes are `pii.n_process`. Must be set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

from dial import paths  # noqa: E402
from dial.params import load_params  # noqa: E402
from dial.pii import run_scrub  # noqa: E402
from dial.stage import run_stage  # noqa: E402


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    run_scrub(
        params.pii,
        in_dir=paths.INGESTED_DIR,
        out_dir=paths.SCRUBBED_DIR,
        findings_path=paths.SCRUBBED_DIR / "pii_findings.parquet",
        report_path=paths.PII_REPORT,
    )


if __name__ == "__main__":
    run_stage(main)
