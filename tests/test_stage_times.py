"""Stage times read back from the stages' MLflow runs (`make demo` prints them)."""

from __future__ import annotations

import shutil
import time

import mlflow

from cxrdet.cli import main
from cxrdet.tracking.runs import stage_run
from cxrdet.tracking.timings import format_timings, stage_timings


def test_top_level_stage_runs_since_a_moment_in_start_order(tmp_path, capsys, project_root):
    with stage_run("split", root=tmp_path, experiment="timed"):
        pass
    since = time.time()
    time.sleep(0.01)  # MLflow stores milliseconds: the next run starts strictly later
    with stage_run(
        "train_detector", root=tmp_path, experiment="timed", run_name="train_detector@1"
    ):
        time.sleep(0.2)
        with mlflow.start_run(run_name="trial 0", nested=True):
            pass
    with stage_run("evaluate", root=tmp_path, experiment="timed"):
        pass

    timings = stage_timings(tmp_path, "timed", int(since * 1000))
    # The nested run sits in the stage's experiment, not MLflow's Default one.
    assert "trial 0" in set(mlflow.search_runs(experiment_names=["timed"])["tags.mlflow.runName"])
    assert timings["run"].tolist() == ["train_detector@1", "evaluate"]  # not split, not the trial
    assert timings["stage"].tolist() == ["train_detector", "evaluate"]
    assert timings["status"].tolist() == ["FINISHED", "FINISHED"]
    assert 0.2 <= timings["seconds"].iloc[0] < 30
    table = format_timings(timings)
    assert table.splitlines()[1].startswith("train_detector@1")
    assert table.splitlines()[-1].split()[0] == "sum"

    shutil.copy(
        project_root / "params.yaml", tmp_path
    )  # the command reads the experiment name there
    text = (tmp_path / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(text.replace("experiment: cxrdet", "experiment: timed"))
    assert main(["stage-times", "--since", str(since), "--root", str(tmp_path)]) == 0
    assert "train_detector@1" in capsys.readouterr().out
    total = timings["seconds"].sum()
    wall = 3 * total
    assert (
        main(["stage-times", "--since", str(since), "--root", str(tmp_path), "--wall", str(wall)])
        == 0
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"wall time {wall:.0f} s = 3.00x the stages' own time"), last
    assert format_timings(
        stage_timings(tmp_path, "timed", int(time.time() * 1000) + 60_000)
    ).startswith("no stage ran")
