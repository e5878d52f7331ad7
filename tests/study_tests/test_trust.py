"""A study file is not trusted with paths (issue 10, item 7).

Studies are shared files, and PostgreSQL rows anyone with access can write: a crafted or
edited study must not make lrf_optuna read (and export) a file of its choosing, nor write
outside the directories a command writes to. Artifacts come only from the artifact store
the storage URL implies or one the user names; problem files lrf_optuna saved are found in
that store; a path outside it is used only when the study's fingerprints verify what was
loaded; names made from study names stay in their directory.
"""

from __future__ import annotations

import shutil
import sqlite3
import uuid
from pathlib import Path

import numpy as np
import optuna
import pytest
from report_tests.test_report import fake_finetune_study

from lrf_optuna.cli import main
from lrf_optuna.errors import UserError
from lrf_optuna.export import export_trial
from lrf_optuna.search import create_lrf_study
from lrf_optuna.study import load_study_problem, problem_spec
from lrf_optuna.study.finetune_records import REFERENCE_ATTR
from lrf_optuna.study.models import StudyModels
from lrf_optuna.study.records import BINDING_ATTR, PROBLEM_ATTR
from lrf_optuna.study.storage import safe_name

SECRET = b"root:x:0:0:root:/root:/bin/bash\n"


def _copy(tiny_study, dest: Path) -> str:
    dest.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(tiny_study["dir"] / "study.db") as a, \
            sqlite3.connect(dest / "study.db") as b:
        a.backup(b)
    return f"sqlite:///{dest / 'study.db'}"


def _forge_jobs(storage: str, secret_dir: Path, ids: dict[str, str]) -> int:
    """What an attacker writes: a fine-tuning study whose job names ``secret_dir`` and
    artifact ``ids``; returns the job's source trial."""
    jobs = fake_finetune_study(storage, n=1, artifact_dir=str(secret_dir))
    ft = optuna.load_study(study_name="tiny:finetune", storage=storage)
    ft.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.COMPLETE, values=[jobs[0]["params"], 0.99],
        params={"source_trial": jobs[0]["source_trial"]},
        distributions={"source_trial": optuna.distributions.IntDistribution(0, 10**9)},
        user_attrs={**jobs[0], "artifact_dir": str(secret_dir), **ids}))  # the latest job
    return int(jobs[0]["source_trial"])


@pytest.mark.parametrize("artifact_id", ["passwd", "../../../../etc/passwd", "/etc/passwd"])
def test_export_refuses_artifact_ids_that_are_not_optunas(tiny_study, tmp_path, capsys,
                                                          artifact_id) -> None:
    storage = _copy(tiny_study, tmp_path / "db")
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    (secret_dir / "passwd").write_bytes(SECRET)
    source = _forge_jobs(storage, secret_dir, {"keras_artifact_id": artifact_id,
                                                "tflite_artifact_id": artifact_id})
    out = tmp_path / "out"
    assert main(["export", "--study-name", "tiny", "--storage", storage, "--trial",
                 str(source), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"records keras_artifact_id {artifact_id!r}, which is not an Optuna artifact id" in err
    assert len(err.strip().splitlines()) == 1
    assert not any(p.is_file() and p.read_bytes() == SECRET for p in out.rglob("*"))


def test_export_never_reads_the_artifact_dir_a_study_names(tiny_study, tmp_path) -> None:
    storage = _copy(tiny_study, tmp_path / "db")
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    ids = {"keras_artifact_id": str(uuid.uuid4()), "tflite_artifact_id": str(uuid.uuid4())}
    for name in ids.values():  # the attacker's files, named like artifacts
        (secret_dir / name).write_bytes(SECRET)
    source = _forge_jobs(storage, secret_dir, ids)
    study = optuna.load_study(study_name="tiny", storage=storage)
    with pytest.warns(UserWarning, match=r"not in the artifact store .*the fine-tuning study "
                                         r"says it used .*secret.*WITHOUT fine-tuning"):
        keras_path, tflite_path = export_trial(study, source, tmp_path / "out")
    assert keras_path.read_bytes() != SECRET and tflite_path.read_bytes() != SECRET
    assert keras_path.read_bytes()[:2] == b"PK"  # the compressed model, rebuilt
    # a directory the user names is trusted: that is how to use a moved artifact store
    export_trial(study, source, tmp_path / "mine", artifact_dir=secret_dir)
    assert (tmp_path / "mine" / keras_path.name).read_bytes() == SECRET


@pytest.fixture(scope="module")
def made_in_memory(tmp_path_factory):
    """A study made from an in-memory model and dataset (saved in its artifact store)."""
    import keras

    from lrf_optuna.data import from_arrays

    d = tmp_path_factory.mktemp("in_memory")
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(6, 3, name="c"),
                              keras.layers.Flatten(), keras.layers.Dense(3, name="fc")],
                             name="mem")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (90, 8, 8), dtype=np.uint8)
    y = np.arange(90) % 3
    data = from_arrays(x[:70], y[:70], x[70:], y[70:], name="toy")
    create_lrf_study(model, data, study_name="mem", storage=f"sqlite:///{d / 'run' / 'mem.db'}",
                     n_trials=12, calibration_size=24, cache_dir=d / "cache",
                     population_size=6, show_progress_bar=False)
    return d, model


def _moved(made_in_memory, tmp_path) -> optuna.Study:
    """The study folder (database and artifact store) copied elsewhere."""
    d, _ = made_in_memory
    shutil.copytree(d / "run", tmp_path / "moved")
    return optuna.load_study(study_name="mem", storage=f"sqlite:///{tmp_path / 'moved' / 'mem.db'}")


def test_problem_files_are_found_in_the_store_the_url_implies(made_in_memory, tmp_path) -> None:
    d, _ = made_in_memory
    study = _moved(made_in_memory, tmp_path)
    raw = study.user_attrs[PROBLEM_ATTR]
    assert raw["model"] == "problems/mem/model.keras" and raw["dataset"] == "problems/mem/data.npz"
    spec = problem_spec(study)  # resolved in the moved copy's store, not the original's
    assert spec.model == str((tmp_path / "moved" / "mem_artifacts" / "problems" / "mem" /
                              "model.keras").resolve())
    shutil.rmtree(d / "run" / "mem_artifacts" / "problems")  # the original is not needed
    try:
        trial = next(t for t in study.best_trials if t.user_attrs["lrf_plan"])
        assert StudyModels(study).build(trial).count_params() == trial.user_attrs["params"]
    finally:
        shutil.copytree(tmp_path / "moved" / "mem_artifacts" / "problems",
                        d / "run" / "mem_artifacts" / "problems")


def test_a_relative_path_leaving_the_store_is_refused(made_in_memory, tmp_path) -> None:
    study = _moved(made_in_memory, tmp_path)
    raw = dict(study.user_attrs[PROBLEM_ATTR])
    study.set_user_attr(PROBLEM_ATTR, {**raw, "model": "../../../../etc/passwd"})
    with pytest.raises(UserError, match=r"records the model path '\.\./\.\./\.\./\.\./etc/"
                                        r"passwd', which leads out of its artifact store"):
        problem_spec(study)


def test_an_outside_path_must_match_the_fingerprints(made_in_memory, tmp_path) -> None:
    import keras

    _, model = made_in_memory
    study = _moved(made_in_memory, tmp_path)
    raw = dict(study.user_attrs[PROBLEM_ATTR])
    other = keras.models.clone_model(model)  # same architecture, other weights
    other.save(tmp_path / "elsewhere.keras")
    study.set_user_attr(PROBLEM_ATTR, {**raw, "model": str(tmp_path / "elsewhere.keras")})
    with pytest.raises(UserError, match=r"the model and data loaded for study 'mem' .* are "
                                        r"not the ones it was made with: the model differs"):
        load_study_problem(study)
    model.save(tmp_path / "same.keras")  # the same model, elsewhere: verified, accepted
    study.set_user_attr(PROBLEM_ATTR, {**raw, "model": str(tmp_path / "same.keras")})
    assert load_study_problem(study).model.count_params() == model.count_params()
    # without fingerprints a path outside the store cannot be verified: refused
    stripped = optuna.create_study(study_name="nofp", storage=study._storage)
    stripped.set_user_attr(PROBLEM_ATTR, {**raw, "model": str(tmp_path / "same.keras")})
    with pytest.raises(UserError, match=r"names files outside its artifact store .* records "
                                        r"no fingerprints"):
        problem_spec(stripped)
    assert BINDING_ATTR in study.user_attrs and BINDING_ATTR not in stripped.user_attrs


@pytest.mark.parametrize("name", ["..", "../../evil", "/etc/cron.d/x", "a/../../b", ".hidden",
                                  "x" * 300])
def test_names_from_study_names_stay_in_their_directory(name) -> None:
    out = safe_name(name)
    root = Path("/srv/reports").resolve()
    assert (root / out).resolve().parent == root
    assert "/" not in out and not out.startswith(".") and len(out) <= 120


def test_report_and_export_of_a_study_with_a_hostile_name(tiny_study, tmp_path, monkeypatch,
                                                          capsys) -> None:
    storage = f"sqlite:///{tmp_path / 'db' / 'evil.db'}"
    (tmp_path / "db").mkdir()
    optuna.copy_study(from_study_name="tiny", from_storage=tiny_study["storage"],
                      to_storage=storage, to_study_name="../../evil")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["report", "--study-name", "../../evil", "--storage", storage]) == 0
    assert (work / "reports" / "___.._evil" / "report.html").is_file()
    study = optuna.load_study(study_name="../../evil", storage=storage)
    trial = next(t for t in study.best_trials if t.user_attrs.get("lrf_plan"))
    assert main(["export", "--study-name", "../../evil", "--storage", storage, "--trial",
                 str(trial.number), "--out", "exported"]) == 0
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()
                     and "evil" in p.name)
    assert [p.parts[:2] for p in written] == [("db", "evil.db"), ("work", "exported"),
                                              ("work", "exported")], written
    capsys.readouterr()


def test_finetune_refuses_an_untrusted_problem_before_running_a_job(tiny_study, tmp_path,
                                                                    capsys) -> None:
    storage = _copy(tiny_study, tmp_path / "db")
    study = optuna.load_study(study_name="tiny", storage=storage)
    raw = dict(study.user_attrs[PROBLEM_ATTR])
    study.set_user_attr(PROBLEM_ATTR, {**raw, "model": "../../../outside.keras"})
    assert main(["finetune", "--study-name", "tiny", "--storage", storage, "-k", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "leads out of its artifact store" in err[0], err
    ft = optuna.load_study(study_name="tiny:finetune", storage=storage)
    # the trial's job and the recipe's fair reference: queued, not failed
    assert [j.state.name for j in ft.trials] == ["WAITING", "WAITING"]
    assert sorted(bool(j.user_attrs.get(REFERENCE_ATTR)) for j in ft.trials) == [False, True]
