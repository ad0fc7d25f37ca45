"""DVC stage `ingest`: the source in `data` → data/ingested/{sessions,messages,users}.parquet,
rejected rows → data/quarantine/ingest.parquet, counts → reports/data.json."""

from pathlib import Path

from dial import paths
from dial.data.ingest import run_ingest
from dial.params import load_params
from dial.stage import run_stage


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    run_ingest(
        params.data, out_dir=paths.INGESTED_DIR, quarantine_dir=paths.QUARANTINE_DIR, report_path=paths.DATA_REPORT
    )


if __name__ == "__main__":
    run_stage(main)
