"""`medmtl tune --storage postgresql://...` against a real PostgreSQL server (tests/_postgres.py:
a throw-away one on 127.0.0.1): two processes share one study and run its budget between them,
none twice, and report the same best configuration; a server that goes away mid-search stops the
search in one line with the finished trials kept, and the next start resumes. Skipped, with the
reason, only where PostgreSQL or its driver cannot be had (.ci/run installs them)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _cli import run_cli
from _postgres import PgServer, free_port, unavailable

TINY = ["--epochs", "1", "--imgsz", "64", "--batch", "16", "--workers", "0", "--diag-steps", "0",
        "--seeds", "0", "--methods", "fixed"]
OVER = {"epochs": 1, "imgsz": 64, "batch": 16, "workers": 0, "diag_steps": 0}  # TINY, in Python


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    why = unavailable()
    if why:
        pytest.skip(why)
    server = PgServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def pg_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 train / 8 val images at 64 px: a trial is one short epoch."""
    from medmtl.data.synth import generate

    return generate(tmp_path_factory.mktemp("pg_data"), n_train=24, n_val=8, imgsz=64, seed=5)


def _tune(data: Path, out: Path, url: str, trials: int) -> list[str]:
    return [sys.executable, "-m", "medmtl", "tune", "--data", str(data), "--out", str(out),
            "--storage", url, "--trials", str(trials), *TINY]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _complete(study) -> list:  # noqa: ANN001
    import optuna

    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def _count(pg: PgServer, db: str, state: str, with_params: bool = False) -> int:
    """Trials of `db` in `state` (with at least one parameter drawn)."""
    join = " JOIN trial_params p ON p.trial_id = t.trial_id" if with_params else ""
    rows = pg.query(db, f"SELECT count(DISTINCT t.trial_id) FROM trials t{join} WHERE "
                        f"t.state::text = '{state}'")
    return int(rows[0][0])


def _has_trials(pg: PgServer, db: str) -> bool:
    """Optuna has created its tables in `db`."""
    return bool(pg.query(db, "SELECT 1 FROM information_schema.tables WHERE table_name = "
                             "'trials'"))


def test_two_processes_share_one_study_and_its_budget(pg: PgServer, pg_data: Path,
                                                      tmp_path: Path, one_thread: None) -> None:
    """A `medmtl tune` process and this one (the same `tune`, in a thread: one process start
    less) search one study at once: exactly the budget of distinct configurations between them,
    none twice, each trained once, and the same best configuration reported by both."""
    import optuna
    from rich.console import Console

    from medmtl.experiments.tune import tune

    url = pg.create_db("shared")
    log = tmp_path / "child.txt"
    with log.open("w") as f:
        child = subprocess.Popen(_tune(pg_data, tmp_path / "w0", url, 3), env=_env(), stdout=f,
                                 stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not (_has_trials(pg, "shared") and _count(pg, "shared", "RUNNING") >= 1):
            assert child.poll() is None, log.read_text()  # its first trial runs: join it
            assert time.monotonic() < deadline, "the other process started no trial"
            time.sleep(0.2)
        console = Console(file=io.StringIO(), width=300)
        here: dict[str, object] = {}

        def search() -> None:
            try:
                here["result"] = tune(str(pg_data), ["fixed"], 3, tmp_path / "w1",
                                      overrides=OVER, storage=url, console=console)
            except BaseException as e:  # noqa: BLE001 - re-raised below, in the test's thread
                here["error"] = e

        worker = threading.Thread(target=search)
        worker.start()
        worker.join(timeout=300)
        assert not worker.is_alive() and "error" not in here, here.get("error")
        assert child.wait(timeout=300) == 0, log.read_text()
    finally:
        if child.poll() is None:
            child.kill()
    logs = [log.read_text(), console.file.getvalue()]

    study = optuna.load_study(study_name="fixed", storage=url)
    done = _complete(study)
    # together: exactly the budget, 3 distinct configurations, none run twice
    assert len(done) == 3
    assert len({tuple(sorted(t.params.items())) for t in done}) == 3
    # any other trial is one that started when the 3 places were taken: it ended unrun
    others = [t for t in study.trials if t not in done]
    assert all(t.user_attrs.get("surplus") and not t.params for t in others), others
    pids = [child.pid, os.getpid()]
    assert {t.user_attrs["pid"] for t in done} == set(pids), logs  # both took part
    for t in done:  # each trial trained once, in the folder of the process that ran it
        w = pids.index(t.user_attrs["pid"])
        assert (tmp_path / f"w{w}" / "trials" / "fixed" / f"t{t.number}" / "metrics.json").exists()
        assert not (tmp_path / f"w{1 - w}" / "trials" / "fixed" / f"t{t.number}").exists()

    # the same best configuration whichever process reports it: the study's best
    results = [json.loads((tmp_path / f"w{i}" / "tune.json").read_text()) for i in range(2)]
    assert results[1] == here["result"]
    best = max(done, key=lambda t: t.value)
    for r in results:
        m = r["methods"]["fixed"]
        assert m["best"] == {"params": best.params, "value": best.value, "trial": best.number}
        assert m["completed"] == 3 and m["failed"] == 0
        # 3 trials are within TPE's random start-up: the record says random, truthfully
        assert m["sampler"]["name"] == "random" and m["sampler"]["drawn"] == {"random": 3}
        assert r["storage"] == url
    for text in logs:
        assert "sampler: random (a budget of 3 is within TPE's 3 random start-up trials" in \
            " ".join(text.split())


def test_a_lost_server_stops_the_search_in_one_line_and_the_next_start_resumes(
        pg: PgServer, pg_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        one_thread: None) -> None:
    import optuna

    pg.create_db("lost")
    url = pg.url("lost", password="s3cret")  # trust authentication: the password is not asked
    out = tmp_path / "t"
    log = tmp_path / "stderr.txt"
    with log.open("w") as f:
        p = subprocess.Popen(_tune(pg_data, out, url, 2), env=_env(), stdout=subprocess.DEVNULL,
                             stderr=f)
    deadline = time.monotonic() + 240
    try:
        while True:  # trial 0 finished and trial 1 drew its parameters: stop the server
            assert p.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no trial finished in time"
            if _has_trials(pg, "lost") and _count(pg, "lost", "COMPLETE") >= 1 and \
                    _count(pg, "lost", "RUNNING", with_params=True) >= 1:
                break
            time.sleep(0.2)
        pg.stop("immediate")
        p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
        pg.start()
    err = log.read_text()
    assert p.returncode == 1, err
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, err
    line = errors[0]
    assert "s3cret" not in err and f"'{url.replace('s3cret', '***')}'" in line
    assert "lost the database during the search" in line and "run the same command" in line

    study = optuna.load_study(study_name="fixed", storage=url)
    kept = _complete(study)
    assert len(kept) == 1  # the finished trial is intact
    cut = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    assert len(cut) == 1 and cut[0].params  # the trial the lost server cut short

    code, _, err = run_cli(["tune", "--data", str(pg_data), "--out", str(out), "--storage", url,
                            "--trials", "2", *TINY], capsys)
    assert code == 0, err
    study = optuna.load_study(study_name="fixed", storage=url)
    done = _complete(study)
    assert len(done) == 2 and len({tuple(sorted(t.params.items())) for t in done}) == 2
    assert {t.number for t in kept} <= {t.number for t in done}  # kept, not re-run
    states = {t.number: t.state for t in study.trials}
    assert states[cut[0].number] == optuna.trial.TrialState.FAIL  # the cut trial: failed, and
    rerun = [t for t in done if t.params == cut[0].params]  # its configuration run again
    assert len(rerun) == 1 and rerun[0].user_attrs["drawn_by"] == "re-run"
    result = json.loads((out / "tune.json").read_text())["methods"]["fixed"]
    assert result["completed"] == 2 and result["failed"] == 1
    assert "was killed; its parameters run again" in err


def test_storage_urls_are_one_line_with_the_password_masked(
        pg: PgServer, pg_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medmtl.errors import InputError
    from medmtl.experiments.storage import check_storage, open_storage

    # the command: one line, exit 2, before any work
    closed = f"postgresql://u:hunter2@127.0.0.1:{free_port()}/db"  # nothing listens there
    for url in (closed, pg.url("nowhere", password="hunter2")):
        code, out, err = run_cli(["tune", "--data", str(pg_data), "--out", str(tmp_path / "t"),
                                  "--storage", url, "--trials", "1", *TINY], capsys)
        lines = [ln for ln in (out + err).splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: --storage '"), lines
        assert "hunter2" not in lines[0] and ":***@127.0.0.1:" in lines[0]
    assert not (tmp_path / "t" / "trials").exists()

    bad = {"postgresql://u:hunter2@127.0.0.1:notaport/db": "not a database URL",
           closed: "cannot connect to 127.0.0.1",
           "postgresql://u:hunter2@127.0.0.1:70000/db": "is not a TCP port"}
    for url, why in bad.items():
        with pytest.raises(InputError) as e:
            check_storage(url)
        msg = str(e.value)
        assert why in msg and "hunter2" not in msg and "u:***@" in msg and "\n" not in msg
    # the server answers, but the database does not exist: one line saying what to do
    missing = pg.url("nowhere", password="hunter2")
    check_storage(missing)  # the port answers
    with pytest.raises(InputError) as e:
        open_storage(missing)
    msg = str(e.value)
    assert 'database "nowhere" does not exist' in msg and "createdb" in msg
    assert "hunter2" not in msg and "\n" not in msg
