"""`cxrdet predict --engine spark`: batch scoring on Apache Spark, the model as an
`mlflow.pyfunc.spark_udf`, writing the same submission as `cxrdet predict`.

    cxrdet predict --engine spark --spark-master 'local[*]' --model models:/cxrdet-rsna@champion \\
        --input images/ --out submission.csv
    spark-submit --master yarn "$(python -c 'import cxrdet.cli as c; print(c.__file__)')" predict \\
        --engine spark --model models:/cxrdet-rsna@champion --input images.parquet \\
        --out submission.csv

--input: a folder of DICOM/PNG/JPEG images (ids: file names), or a table (.parquet or .csv)
with columns image_id and path. The paths must be readable where the executors run (a shared
file system on a cluster); relative ones are taken against the current folder, and the model
is loaded with its `path_root` at the paths' common folder (cxrdet.serving.path_root).
--model: an MLflow model (models:/<name>@<alias> is resolved to its version on the driver, so
every executor scores the same version). The driver reads the model's format and classes,
Spark ships the model to the executors, each scores its partition's images in Arrow batches of
--chunk rows in its own Python (env_manager local: cxrdet and its dependencies must be
installed there). The boxes come back to the driver, which writes the submission with the
writers `cxrdet predict` uses.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrdet.errors import CxrdetError

if TYPE_CHECKING:  # `cxrdet --help` builds this module's arguments: no heavy import at the top
    import pandas as pd

ENGINES = ("local", "spark")
BOX_COLUMNS = ["image_id", "x", "y", "w", "h", "score", "class_id"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`cxrdet predict`'s engine options."""
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="local: this process; spark: a Spark job, the model as an MLflow Spark UDF",
    )
    parser.add_argument(
        "--spark-master",
        help="Spark master URL, e.g. local[4] (default: spark-submit's, else local[*])",
    )


def image_table(source: Path) -> pd.DataFrame:
    """(image_id, path) rows of a folder of images or of a .parquet/.csv table holding them."""
    import pandas as pd

    from cxrdet.infer.predictor import find_images
    from cxrdet.serving.inputs import ID, PATH

    if source.is_dir():
        table = pd.DataFrame([(i, str(p)) for i, p in find_images(source)], columns=[ID, PATH])
    elif source.suffix.lower() in (".parquet", ".csv") and source.is_file():
        table = (
            pd.read_parquet(source)
            if source.suffix.lower() == ".parquet"
            else pd.read_csv(source, dtype=str)
        )
        missing = [c for c in (ID, PATH) if c not in table.columns]
        if missing:
            raise CxrdetError(
                f"{source}: no column {missing[0]!r} (columns: {list(map(str, table.columns))})"
            )
        table = table[[ID, PATH]].astype(str)
        duplicated = table[ID][table[ID].duplicated()]
        if len(duplicated):
            raise CxrdetError(f"{source}: image_id {duplicated.iloc[0]!r} appears more than once")
    else:
        raise CxrdetError(
            f"{source}: not a folder of images nor a .parquet or .csv table of image_id, path"
        )
    if table.empty:
        raise CxrdetError(f"{source}: no images")
    return table


def check_java() -> None:
    """CxrdetError unless Spark can start a JVM (JAVA_HOME, else java on PATH)."""
    home = os.environ.get("JAVA_HOME")
    java = Path(home) / "bin" / "java" if home else shutil.which("java")
    if java is None or not Path(java).is_file():
        raise CxrdetError(
            "--engine spark needs Java 17 or later: no java on PATH and JAVA_HOME is not set "
            "(Debian: apt-get install openjdk-17-jre-headless)"
        )


def spark_session(master: str | None, chunk: int) -> tuple[Any, bool]:
    """(a Spark session whose Arrow batches hold at most `chunk` rows, whether it is ours to
    stop): the active one (a Databricks job, a notebook), else a new one on `master` (None:
    spark-submit's, or local[*])."""
    check_java()
    try:
        from pyspark.errors import PySparkException
        from pyspark.sql import SparkSession
    except ImportError:
        raise CxrdetError("--engine spark needs pyspark: pip install -e '.[spark]'") from None
    builder = SparkSession.builder.appName("cxrdet predict")
    if master:
        builder = builder.master(master)
        if master.startswith("local"):  # the executors are this machine's: this Python
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    active = SparkSession.getActiveSession()
    try:
        spark = active or builder.getOrCreate()
    except PySparkException as error:
        raise CxrdetError(f"cannot start Spark (master {master or 'default'}): {error}") from None
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(chunk))
    return spark, active is None


def score(spark: Any, model_uri: str, table: pd.DataFrame, device: str) -> pd.DataFrame:
    """The model's boxes (BOX_COLUMNS) for every row of `table`, scored by the executors."""
    import mlflow
    import pandas as pd
    from pyspark.sql.functions import struct

    from cxrdet.serving.inputs import ID, PATH
    from cxrdet.serving.path_root import CONFIG_KEY

    # The table is the user's own: its files are allowed, below their common folder only.
    table = table.assign(**{PATH: [str(Path(p).resolve()) for p in table[PATH]]})
    root = os.path.commonpath([str(Path(p).parent) for p in table[PATH]])
    udf = mlflow.pyfunc.spark_udf(
        spark, model_uri, env_manager="local", model_config={"device": device, CONFIG_KEY: root}
    )
    images = spark.createDataFrame(table).repartition(spark.sparkContext.defaultParallelism)
    scored = images.select(udf(struct(ID, PATH)).alias("out")).select("out.image_id", "out.boxes")
    records = [
        (row.image_id, box.x, box.y, box.w, box.h, box.score, box.class_id)
        for row in scored.toLocalIterator()
        for box in row.boxes
    ]
    return pd.DataFrame.from_records(records, columns=BOX_COLUMNS)


def predict_on_spark(args: argparse.Namespace) -> int:
    """`cxrdet predict --engine spark` (its arguments: see cxrdet.commands.predict)."""
    from cxrdet.formats import output_format
    from cxrdet.paths import project_root
    from cxrdet.serving.inputs import ID
    from cxrdet.serving.load import is_mlflow_model, load_predictor
    from cxrdet.tracking.registry import resolve

    if not is_mlflow_model(args.model):
        raise CxrdetError(
            f"--engine spark scores an MLflow model (models:/<name>@<alias>, runs:/..., or an "
            f"MLflow model directory); {args.model!r} is none"
        )
    table = image_table(args.input)
    spark, owned = spark_session(args.spark_master, args.chunk)
    try:
        # The driver reads the model's format and classes; the executors score with it.
        predictor, loaded = load_predictor(args.model, project_root(), device="cpu")
        uri, _ = resolve(args.model)
        print(
            f"model: {loaded}; Spark {spark.version}, master {spark.sparkContext.master}",
            file=sys.stderr,
        )
        boxes = score(spark, uri, table, args.device)
    finally:
        if owned:
            spark.stop()
    fmt = args.format or predictor.spec.fmt
    output_format(fmt).write_submission(
        boxes, args.out, predictor.spec.class_names, table[ID].tolist()
    )
    print(f"{len(table)} images, {len(boxes)} boxes -> {args.out} ({fmt})", file=sys.stderr)
    return 0
