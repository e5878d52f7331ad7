"""The catalogue of bad inputs (issue 10): each fails fast, as one line, changing nothing.

Every case runs against a copy of the tiny study (its model, data, similarity cache and
database) and asserts, for the command line, exit status 2 and exactly one stderr line
``lrf-optuna <command>: error: ...`` holding the expected words, and for the Python API a
:class:`~lrf_optuna.errors.UserError` whose message is one line with those words. Then every
stored file (database, cache, artifacts, model and data files) must be byte-identical and
no file may have appeared. The similarity cache is never built during these cases (its
``build`` is replaced by a function that fails the test): everything is found before the
calibration pass. A few cases run as real processes, to see the exit status and that no
traceback is printed end to end.
"""

from __future__ import annotations

import gc
import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import optuna
import pytest

import lrf_optuna.scoring.cache as cache_mod
from lrf_optuna.cli import main
from lrf_optuna.errors import UserError
from lrf_optuna.scoring.cache import SimilarityCache
from lrf_optuna.study import original_info

L = keras.layers
STUDY = "tiny"


# -- the workspace: a copy of the tiny study and a collection of bad files -------------------

def _backup(src: Path, dst: Path) -> None:
    """Copy a (WAL-mode) SQLite database consistently."""
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)


def _npz(path: Path, x_train, y_train, x_test, y_test) -> None:
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


@keras.saving.register_keras_serializable(package="lrf_bad_inputs")
class SubclassedNet(keras.Model):
    """A subclassed model (lrf_optuna rewrites only Sequential and Functional ones)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.flat = L.Flatten()
        self.fc = L.Dense(4)

    def call(self, x):
        return self.fc(self.flat(x))


def _bad_files(ws: Path) -> None:
    net = (ws / "net.keras").read_bytes()
    with np.load(ws / "data.npz") as z:
        x_tr, y_tr, x_te, y_te = (z[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    # models
    corrupt = bytearray(net)
    with zipfile.ZipFile(ws / "net.keras") as z:  # flip bytes in the weights member
        info = z.getinfo("model.weights.h5")
    middle = info.header_offset + info.file_size // 2
    corrupt[middle:middle + 64] = bytes(b ^ 0xFF for b in corrupt[middle:middle + 64])
    (ws / "corrupt.keras").write_bytes(bytes(corrupt))
    (ws / "zip_named.h5").write_bytes(net)
    (ws / "truncated.keras").write_bytes(net[: len(net) // 2])
    (ws / "text.keras").write_text("this is not a model\n")
    (ws / "model.txt").write_bytes(net)
    model = keras.saving.load_model(ws / "net.keras")
    weights = model.get_weights()
    weights[4] = weights[4].copy()
    weights[4][0, 0] = np.nan  # fc1's kernel
    model.set_weights(weights)
    model.save(ws / "nan_weights.keras")
    weights[4][0, 0] = 0.123  # finite again, but not the study's model
    model.set_weights(weights)
    model.save(ws / "other.keras")
    keras.Sequential([keras.Input((16, 16, 1)), L.Cropping2D(7), L.Flatten()],
                     name="weightless").save(ws / "no_layers.keras")
    keras.Sequential([keras.Input((16, 16, 1)), L.Flatten(), L.Dense(4, name="fc")],
                     name="dense_only").save(ws / "dense_only.keras")
    sub = SubclassedNet(name="sub")
    sub(np.zeros((1, 16, 16, 1), "float32"))
    sub.save(ws / "subclassed.keras")
    # data
    (ws / "text.npz").write_text("hello\n")
    with open(ws / "array.npz", "wb") as f:
        np.save(f, x_tr)  # one .npy array, named .npz
    np.savez(ws / "missing.npz", x_train=x_tr, y_train=y_tr)
    _npz(ws / "int_images.npz", x_tr.astype(np.int64), y_tr, x_te.astype(np.int64), y_te)
    _npz(ws / "str_images.npz", x_tr.astype(str), y_tr, x_te.astype(str), y_te)
    _npz(ws / "float_labels.npz", x_tr, y_tr + 0.5, x_te, y_te + 0.5)
    y99 = y_tr.copy()
    y99[3] = 99
    _npz(ws / "label99.npz", x_tr, y99, x_te, y_te)
    big = np.zeros((len(x_tr), 20, 20), np.uint8)
    _npz(ws / "size.npz", big, y_tr, big[: len(x_te)], y_te)
    rgb = np.repeat(x_tr[..., None], 3, axis=-1)
    _npz(ws / "channels.npz", rgb, y_tr, rgb[: len(x_te)], y_te)
    nan = x_tr.astype(np.float32) / 255
    nan[0, 0, 0] = np.nan
    _npz(ws / "nan_images.npz", nan, y_tr, x_te.astype(np.float32) / 255, y_te)
    _npz(ws / "other_data.npz", 255 - x_tr, y_tr, x_te, y_te)
    # storages
    (ws / "random.db").write_bytes(np.random.default_rng(0).bytes(4096))
    (ws / "text.db").write_text("not a database\n")
    with sqlite3.connect(ws / "other_app.db") as con:
        con.execute("CREATE TABLE customers (id INTEGER, name TEXT)")
    (ws / "a_file").write_text("x")
    (ws / "a_directory.db").mkdir()


@pytest.fixture(scope="module")
def ws(tiny_study, tmp_path_factory) -> Path:
    src = tiny_study["dir"]
    ws = tmp_path_factory.mktemp("bad_inputs")
    for name in ("net.keras", "data.npz"):
        shutil.copy(src / name, ws / name)
    shutil.copytree(src / "cache", ws / "cache")
    _backup(src / "study.db", ws / "study.db")
    _bad_files(ws)
    return ws


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (SQLite's shared-memory index aside) by content hash, and
    every database's logical content."""
    # An engine of an earlier command that is no longer referenced closes its connection
    # when collected, and SQLite then deletes an empty WAL: collect now, not mid-listing.
    gc.collect()
    out = {}
    for path in sorted(root.rglob("*")):
        try:
            size = path.stat().st_size
        except FileNotFoundError:  # deleted after the listing all the same (an empty WAL)
            continue
        empty_wal = path.name.endswith("-wal") and size == 0  # holds nothing
        if path.is_file() and not path.name.endswith("-shm") and not empty_wal:
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    db = root / "study.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        out["study.db (content)"] = hashlib.sha256(
            "\n".join(con.iterdump()).encode()).hexdigest()
    finally:
        con.close()
    return out


@pytest.fixture
def no_calibration_pass(monkeypatch):
    """The similarity cache must not be built: every check comes before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("the calibration pass started before the input was refused")

    monkeypatch.setattr(cache_mod.SimilarityCache, "build", classmethod(refuse))


# -- the command line ------------------------------------------------------------------------

def search(ws: Path, *extra: str, model: str = "net.keras", data: str = "data.npz",
           storage: str | None = None) -> list[str]:
    """``lrf-optuna search`` resuming the tiny study (as its fixture made it)."""
    argv = ["search", "--model", str(ws / model), "--dataset", str(ws / data),
            "--calibration-size", "64", "--study-name", STUDY, "--cache-dir",
            str(ws / "cache"), "--population-size", "10", "-q", "--n-trials", "50"]
    argv += ["--storage", storage or f"sqlite:///{ws / 'study.db'}"]
    return [*argv, *extra]


def new(ws: Path) -> str:
    """A storage that does not exist yet (it must not be created)."""
    return f"sqlite:///{ws / 'new' / 'fresh.db'}"


# (id, argv builder, words the one error line must hold)
CLI_CASES: list[tuple[str, Callable[[Path], list[str]], str]] = [
    # storages
    ("url-no-scheme-slashes", lambda ws: search(ws, storage="sqlite//x"),
     r"storage 'sqlite//x' is not a database URL \(expected sqlite:///"),
    ("url-unknown-database", lambda ws: search(ws, storage="foo://bar"),
     r"unsupported database 'foo'"),
    ("url-two-slashes", lambda ws: search(ws, storage="sqlite://x.db"),
     r"a SQLite URL has three slashes"),
    ("url-a-path", lambda ws: search(ws, storage="studies/x.db"),
     r"did you mean sqlite:///studies/x\.db\?"),
    ("storage-random-bytes", lambda ws: search(ws, storage=f"sqlite:///{ws / 'random.db'}"),
     r"random\.db is not a SQLite database"),
    ("storage-text-file", lambda ws: search(ws, storage=f"sqlite:///{ws / 'text.db'}"),
     r"text\.db is not a SQLite database \(it starts with b'not a da'\)"),
    ("storage-other-application",
     lambda ws: search(ws, storage=f"sqlite:///{ws / 'other_app.db'}"),
     r"other_app\.db is a SQLite database of another application \(tables \['customers'\]\)"),
    ("storage-parent-is-a-file",
     lambda ws: search(ws, storage=f"sqlite:///{ws / 'a_file' / 'x.db'}"),
     r"cannot create the study database .*a_file is not a directory"),
    ("storage-is-a-directory",
     lambda ws: search(ws, storage=f"sqlite:///{ws / 'a_directory.db'}"),
     r"a_directory\.db is a directory"),
    ("storage-unreachable-postgresql",
     lambda ws: search(ws, storage="postgresql+psycopg://postgres@127.0.0.1:1/postgres"),
     r"cannot use the storage postgresql\+psycopg://postgres@127\.0\.0\.1:1/postgres: "
     r"connection failed"),
    # models
    ("model-missing", lambda ws: search(ws, model="nothing.keras"),
     r"model '.*nothing\.keras' is neither a reference model"),
    ("model-corrupt-zip", lambda ws: search(ws, model="corrupt.keras"),
     r"corrupt\.keras is not a usable \.keras file: its member 'model\.weights\.h5' is "
     r"damaged"),
    ("model-keras-named-h5", lambda ws: search(ws, model="zip_named.h5"),
     r"zip_named\.h5 is a \.keras \(zip\) model file with the suffix \.h5; rename it to "
     r"zip_named\.keras"),
    ("model-truncated", lambda ws: search(ws, model="truncated.keras"),
     r"truncated\.keras is not a \.keras model file: a \.keras file is a zip archive"),
    ("model-text-file", lambda ws: search(ws, model="text.keras"),
     r"text\.keras is not a \.keras model file"),
    ("model-wrong-suffix", lambda ws: search(ws, model="model.txt"),
     r"must end in \.keras \(or \.h5 for legacy files\), but its suffix is '\.txt'"),
    ("model-subclassed", lambda ws: search(ws, model="subclassed.keras"),
     r"model 'sub' is a subclassed keras\.Model \(SubclassedNet\); lrf_optuna rewrites "
     r"Sequential and Functional models"),
    ("model-nan-weights", lambda ws: search(ws, model="nan_weights.keras"),
     r"weight 'fc1/kernel' has 1 NaN or Inf value"),
    ("model-without-factorizable-layer",
     lambda ws: search(ws, model="no_layers.keras", storage=new(ws)),
     r"model 'weightless' has no layer lrf_optuna can factorize"),
    # data
    ("data-text-named-npz", lambda ws: search(ws, data="text.npz"),
     r"text\.npz is not a \.npz archive"),
    ("data-one-array-named-npz", lambda ws: search(ws, data="array.npz"),
     r"array\.npz is not a \.npz archive"),
    ("data-missing-arrays", lambda ws: search(ws, data="missing.npz"),
     r"missing\.npz lacks arrays \['x_test', 'y_test'\]"),
    ("data-not-npz", lambda ws: search(ws, data="data.csv"),
     r"dataset must be 'fashion-mnist' or an existing \.npz file"),
    ("data-int64-images", lambda ws: search(ws, data="int_images.npz"),
     r"int_images\.npz: x_train: integer images must be uint8"),
    ("data-string-images", lambda ws: search(ws, data="str_images.npz"),
     r"str_images\.npz: x_train: expected a numeric image array"),
    ("data-float-labels", lambda ws: search(ws, data="float_labels.npz"),
     r"float_labels\.npz: y_train: expected integer class ids"),
    ("data-nan-images", lambda ws: search(ws, data="nan_images.npz"),
     r"nan_images\.npz: x_train: contains NaN or infinite values"),
    ("data-label-outside-classes", lambda ws: search(ws, data="label99.npz"),
     r"labels of .*label99\.npz go up to 99 but model 'tiny' has 4 output\(s\)"),
    ("data-image-size", lambda ws: search(ws, data="size.npz"),
     r"images of .*size\.npz are 20x20x1 but model 'tiny' expects inputs of 16x16x1"),
    ("data-channels", lambda ws: search(ws, data="channels.npz"),
     r"images of .*channels\.npz are 16x16x3 but model 'tiny' expects inputs of 16x16x1"),
    ("calibration-size-zero", lambda ws: search(ws, "--calibration-size", "0"),
     r"calibration_size must be an integer >= 1, but got 0"),
    # the search space and the constraints
    ("methods-unknown", lambda ws: search(ws, "--methods", "svdd"),
     r"unknown --methods \['svdd'\]"),
    ("methods-empty-space",
     lambda ws: search(ws, "--methods", "tucker2", model="dense_only.keras", storage=new(ws)),
     r"the search space is empty: no layer of model 'dense_only' keeps a candidate"),
    ("layers-unknown", lambda ws: search(ws, "--layers", "fc9"),
     r"layer\(s\) \['fc9'\] are not factorizable layers of model 'tiny'"),
    ("layers-not-factorizable", lambda ws: search(ws, "--layers", "pool"),
     r"layer\(s\) \['pool'\] are not factorizable layers of model 'tiny'"),
    ("layers-and-methods-leave-nothing",
     lambda ws: search(ws, "--layers", "fc1", "--methods", "tucker2"),
     r"layer 'fc1' keeps no candidate with methods \['tucker2'\]"),
    ("max-params-negative", lambda ws: search(ws, "--max-params", "-1"),
     r"--max-params -1 cannot be met: the smallest model this search space allows has "
     r"[\d,]+ parameters"),
    ("max-flops-zero", lambda ws: search(ws, "--max-flops", "0"),
     r"--max-flops 0 cannot be met"),
    ("min-proxy-above-one", lambda ws: search(ws, "--min-proxy", "2"),
     r"--min-proxy 2 cannot be met: the proxy is at most 1\.0"),
    ("n-trials-negative", lambda ws: search(ws, "--n-trials", "-1"),
     r"--n-trials must be >= 0, but got -1"),
    ("population-size-one", lambda ws: search(ws, "--population-size", "1"),
     r"population_size 1: "),
    ("grace-period-zero", lambda ws: search(ws, "--grace-period", "0"),
     r"grace_period must be a positive number of seconds"),
    # resuming the study with something else
    ("resume-other-model", lambda ws: search(ws, model="other.keras"),
     r"cannot resume study 'tiny' in sqlite:///.*study\.db: the model differs \(the study "
     r"was made with .*net\.keras, fingerprint [0-9a-f]{8}\)\. .*start a new study instead: "
     r"pass another --study-name"),
    ("resume-other-data", lambda ws: search(ws, data="other_data.npz"),
     r"cannot resume study 'tiny' .*: the data or its splits differ \(the study was made with "
     r"dataset '.*data\.npz', seed 0, val_fraction auto\)"),
    ("resume-other-seed", lambda ws: search(ws, "--seed", "1"),
     r"the data or its splits differ .* seed 0"),
    ("resume-other-calibration-size", lambda ws: search(ws, "--calibration-size", "32"),
     r"the calibration images differ \(the study was made with calibration_size 64\)"),
    ("resume-other-methods", lambda ws: search(ws, "--methods", "svd", "tucker2"),
     r"the search settings differ \(methods: None when the study was made, now "
     r"\['svd', 'tucker2'\]\)"),
    ("resume-other-metric", lambda ws: search(ws, "--metric", "cka"),
     r"the search settings differ \(metric: 'cosine' when the study was made, now 'cka'\)"),
    ("resume-other-objectives", lambda ws: search(ws, "--objectives", "params", "proxy"),
     r"the search settings differ \(objectives: \['params', 'flops', 'proxy'\]"),
    # the other commands
    ("show-not-a-database", lambda ws: ["show", "--study-name", STUDY, "--storage",
                                        f"sqlite:///{ws / 'text.db'}"],
     r"text\.db is not a SQLite database"),
    ("show-unknown-study", lambda ws: ["show", "--study-name", "nope", "--storage",
                                       f"sqlite:///{ws / 'study.db'}"],
     r"no study 'nope' in sqlite:///"),
    ("finetune-other-application", lambda ws: ["finetune", "--study-name", STUDY, "--storage",
                                               f"sqlite:///{ws / 'other_app.db'}"],
     r"is a SQLite database of another application"),
    ("export-unknown-trial", lambda ws: ["export", "--study-name", STUDY, "--storage",
                                         f"sqlite:///{ws / 'study.db'}", "--trial", "9999",
                                         "--out", str(ws / "exported")],
     r"study 'tiny' has no trial 9999"),
    ("report-bad-url", lambda ws: ["report", "--storage", "foo://bar"],
     r"unsupported database 'foo'"),
    ("dashboard-bad-url", lambda ws: ["dashboard", "--storage", "sqlite//x"],
     r"is not a database URL"),
]


@pytest.mark.parametrize(("build", "expected"), [c[1:] for c in CLI_CASES],
                         ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(ws, build, expected, capsys, no_calibration_pass) -> None:
    argv = build(ws)
    before = snapshot(ws)
    status = main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert status == 2, (out[-2000:], err[-2000:])
    assert len(lines) == 1, err
    assert lines[0].startswith(f"lrf-optuna {argv[0]}: error: "), lines[0]
    assert re.search(expected, lines[0]), lines[0]
    assert snapshot(ws) == before, "a stored file changed or appeared"


def test_the_catalogue_covers_every_kind_of_input() -> None:
    kinds = {c[0].split("-")[0] for c in CLI_CASES}
    assert kinds >= {"url", "storage", "model", "data", "methods", "layers", "resume"}
    assert len({c[0] for c in CLI_CASES}) == len(CLI_CASES)


# -- unwritable storages (run as a process without root's permission override) ----------------

def _as_unprivileged() -> list[str]:
    """Command prefix making file permissions apply (root ignores them)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: file permissions cannot be tested")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all", "--"]


def run_cli(argv: list[str], *, prefix: list[str] | None = None, cwd: Path | None = None
            ) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([*(prefix or []), sys.executable, "-m", "lrf_optuna.cli", *argv],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def our_lines(stderr: str) -> list[str]:
    """stderr without TensorFlow's native log lines (printed before Python starts them)."""
    native = re.compile(r"^([IWE]\d{4} |WARNING: All log messages before absl)")
    return [ln for ln in stderr.splitlines() if ln.strip() and not native.match(ln)]


@pytest.mark.parametrize("what", ["read-only-database", "unwritable-directory"])
def test_unwritable_storage(ws, tmp_path, what) -> None:
    prefix = _as_unprivileged()
    shutil.copy(ws / "study.db", tmp_path / "study.db")
    target = tmp_path / ("study.db" if what == "read-only-database" else "")
    argv = search(ws, storage=f"sqlite:///{tmp_path / 'study.db'}")
    before = snapshot(ws), (tmp_path / "study.db").read_bytes()
    target.chmod(0o444 if target.is_file() else 0o555)
    try:
        res = run_cli(argv, prefix=prefix)
    finally:
        target.chmod(0o644 if target.is_file() else 0o755)
    lines = our_lines(res.stderr)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert len(lines) == 1, lines
    what = (f"the file {tmp_path / 'study.db'}" if what == "read-only-database"
            else f"its directory {tmp_path}")
    assert lines[0].startswith(f"lrf-optuna search: error: cannot write to the study database "
                               f"{tmp_path / 'study.db'}: {what} is read-only"), lines
    assert (snapshot(ws), (tmp_path / "study.db").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.db"]


#: In a fresh process the subclassed model's class is not registered: Keras cannot load it.
UNREGISTERED = ("model-unregistered-subclass", lambda ws: search(ws, model="subclassed.keras"),
                r"Keras cannot rebuild one of its classes .*SubclassedNet")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["model-corrupt-zip", "url-no-scheme-slashes",
                                  "resume-other-model", "data-label-outside-classes",
                                  UNREGISTERED[0]])
def test_bad_input_end_to_end(ws, case) -> None:
    """As a real process: exit status 2, one line, no traceback."""
    _, build, expected = next(c for c in [*CLI_CASES, UNREGISTERED] if c[0] == case)
    before = snapshot(ws)
    res = run_cli(build(ws))
    lines = our_lines(res.stderr)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert len(lines) == 1 and re.search(expected, lines[0]), lines
    assert snapshot(ws) == before


# -- the Python API ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def api(ws):
    """The tiny model, its calibration images and its (complete) cache."""
    from lrf_optuna.problem import ProblemSpec

    problem = ProblemSpec(model=str(ws / "net.keras"), dataset=str(ws / "data.npz"),
                          calibration_size=64).load(verbose=False)
    recorded = Path(original_info(optuna.load_study(
        study_name=STUDY, storage=f"sqlite:///{ws / 'study.db'}")).cache)
    cache = SimilarityCache.load(ws / "cache" / recorded.name)  # the copy in the workspace
    return problem, cache


def objective(api, *, x=None, **kwargs):
    """An objective on the tiny model and cache (``x``: other calibration data)."""
    from lrf_optuna.search import LRFObjective

    problem, cache = api
    kwargs.setdefault("cache", cache)
    return LRFObjective(problem.model, problem.splits.x_cal if x is None else x,
                        progress=False, **kwargs)


def scored(api, plan):
    return objective(api).score(plan)


def built(api, plan):
    return objective(api).build_model(plan)


def nan_images(api):
    return objective(api, cache=None, x=np.full_like(api[0].splits.x_cal, np.nan))


API_CASES: list[tuple[str, Callable[..., object], str]] = [
    ("rank-none", lambda a: scored(a, {"fc1": ("svd", None)}),
     r"plan entry of layer 'fc1': the rank must be a positive integer, but got None"),
    ("rank-text", lambda a: scored(a, {"fc1": ("svd", "abc")}),
     r"layer 'fc1': the rank must be a positive integer, but got 'abc' \(str\)"),
    ("rank-float", lambda a: scored(a, {"fc1": ("svd", 2.7)}),
     r"layer 'fc1': the rank must be a positive integer, but got 2\.7 \(float\)"),
    ("rank-zero", lambda a: scored(a, {"fc1": ("svd", 0)}),
     r"layer 'fc1': the rank must be a positive integer, but got 0"),
    ("rank-bool", lambda a: built(a, {"fc1": ("svd", True)}),
     r"layer 'fc1': the rank must be a positive integer, but got True \(bool\)"),
    ("plan-entry-method-only", lambda a: scored(a, {"fc1": "svd"}),
     r"plan entry of layer 'fc1' must be \(method, rank\), None or 'keep', but got 'svd'"),
    ("plan-entry-method-only-build", lambda a: built(a, {"conv1": "tucker2"}),
     r"plan entry of layer 'conv1' must be \(method, rank\)"),
    ("plan-entry-encode", lambda a: objective(a).params_for_plan({"fc1": ["svd"]}),
     r"plan entry of layer 'fc1' must be \(method, rank\)"),
    ("plan-unknown-layer", lambda a: scored(a, {"fc9": ("svd", 4)}),
     r"the plan names layer 'fc9', which this objective does not search"),
    ("plan-unknown-method", lambda a: scored(a, {"fc1": ("svdd", 4)}),
     r"layer 'fc1': method 'svdd' was not scored for it"),
    ("plan-not-a-mapping", lambda a: scored(a, [("fc1", ("svd", 4))]),
     r"a plan is a mapping \{layer: \(method, rank\)\}, but got list"),
    ("ranks-reversed", lambda a: objective(a, ranks={"fc1": (10, 2)}),
     r"ranks\['fc1'\] must be \(min_rank, max_rank\) with 1 <= min_rank <= max_rank, but "
     r"got \(10, 2\)"),
    ("ranks-negative", lambda a: objective(a, ranks={"fc1": (-3, 4)}),
     r"ranks\['fc1'\] must be .* but got \(-3, 4\)"),
    ("ranks-float", lambda a: objective(a, ranks={"fc1": (1.5, 4)}),
     r"ranks\['fc1'\] must be .* but got \(1\.5, 4\)"),
    ("ranks-unknown-layer", lambda a: objective(a, ranks={"d1": (1, 4)}),
     r"layer\(s\) \['d1'\] are not factorizable layers of model 'tiny'"),
    ("ranks-leave-no-candidate", lambda a: objective(a, ranks={"fc1": (500, 600)}),
     r"layer 'fc1' keeps no candidate with ranks \(500, 600\)"),
    ("methods-unknown", lambda a: objective(a, methods=["svdd"]),
     r"unknown LRF method\(s\) \['svdd'\] in methods; registered:"),
    ("methods-a-string", lambda a: objective(a, methods="svd"),
     r"methods must be a list of names, but got 'svd'"),
    ("methods-per-layer-unknown", lambda a: objective(a, methods={"fc1": ["svdd"]}),
     r"unknown LRF method\(s\) \['svdd'\] in methods\['fc1'\]"),
    ("methods-per-unknown-layer", lambda a: objective(a, methods={"fc9": ["svd"]}),
     r"layer\(s\) \['fc9'\] are not factorizable"),
    ("layers-a-string", lambda a: objective(a, layers="fc1"),
     r"layers must be a list of names, but got 'fc1'"),
    ("layers-empty", lambda a: objective(a, layers=[]), r"layers is empty"),
    ("metric-unknown", lambda a: objective(a, metric="cosin"),
     r"unknown similarity metric 'cosin'"),
    ("aggregation-unknown", lambda a: objective(a, aggregation="median"),
     r"unknown aggregation 'median'"),
    ("objectives-unknown", lambda a: objective(a, objectives=["accuracy"]),
     r"unknown objectives \['accuracy'\]"),
    ("max-params-negative", lambda a: objective(a, max_params=-1),
     r"--max-params -1 cannot be met"),
    ("min-proxy-above-one", lambda a: objective(a, min_proxy=2.0),
     r"--min-proxy 2 cannot be met"),
    ("constraint-not-a-number", lambda a: objective(a, max_params="10"),
     r"max_params must be a number, but got '10'"),
    ("calibration-all-nan", nan_images,
     r"calibration_data: \d+ of \d+ values are NaN or Inf"),
    ("calibration-wrong-shape",
     lambda a: objective(a, cache=None, x=np.zeros((8, 28, 28, 1))),
     r"calibration_data: expected an array of shape \(n, 16, 16, 1\) .* but got shape "
     r"\(8, 28, 28, 1\)"),
    ("calibration-text",
     lambda a: objective(a, cache=None, x=np.array([["a"]])),
     r"calibration_data: expected a numeric array, but got dtype <U1"),
]


@pytest.mark.parametrize(("call", "expected"), [c[1:] for c in API_CASES],
                         ids=[c[0] for c in API_CASES])
def test_api_bad_input(ws, api, call, expected, no_calibration_pass) -> None:
    before = snapshot(ws)
    with pytest.raises(UserError) as caught:
        call(api)
    message = str(caught.value)
    assert "\n" not in message and re.search(expected, message), message
    assert snapshot(ws) == before


STUDY_API_CASES: list[tuple[str, Callable[[Path, tuple], object], str]] = [
    ("create-bad-storage", lambda ws, a: _create(ws, a, storage="foo://bar"),
     r"unsupported database 'foo'"),
    ("create-unknown-argument", lambda ws, a: _create(ws, a, method=["svd"]),
     r"unknown argument\(s\) \['method'\]; LRFObjective takes"),
    ("create-negative-n-trials", lambda ws, a: _create(ws, a, n_trials=-5),
     r"n_trials must be an integer >= 0"),
    ("create-other-model", lambda ws, a: _create(ws, a, model="other.keras"),
     r"cannot resume study 'tiny' .*: the model differs"),
    ("create-labels-outside-classes", lambda ws, a: _create(ws, a, data="label99.npz"),
     r"go up to 99 but model 'tiny' has 4 output\(s\)"),
    ("problem-labels-outside-classes", lambda ws, a: _from_objects(ws, a, "label99.npz"),
     r"go up to 99 but model 'tiny' has 4 output\(s\)"),
    ("problem-calibration-size", lambda ws, a: _from_objects(ws, a, "data.npz",
                                                            calibration_size=-1),
     r"calibration_size must be an integer >= 1, but got -1"),
]


def _create(ws, api, *, model="net.keras", data="data.npz", **kwargs):
    from lrf_optuna.search import create_lrf_study

    kwargs.setdefault("storage", f"sqlite:///{ws / 'study.db'}")
    return create_lrf_study(str(ws / model), str(ws / data), study_name=STUDY,
                            calibration_size=64, cache_dir=ws / "cache",
                            population_size=10, show_progress_bar=False, **kwargs)


def _from_objects(ws, api, data, **kwargs):
    from lrf_optuna.problem import Problem, ProblemSpec

    dataset = ProblemSpec(model="", dataset=str(ws / data)).load_dataset()
    return Problem.from_objects(api[0].model, dataset, **kwargs)


@pytest.mark.parametrize(("call", "expected"), [c[1:] for c in STUDY_API_CASES],
                         ids=[c[0] for c in STUDY_API_CASES])
def test_study_api_bad_input(ws, api, call, expected, no_calibration_pass) -> None:
    before = snapshot(ws)
    with pytest.raises(UserError) as caught:
        call(ws, api)
    message = str(caught.value)
    assert "\n" not in message and re.search(expected, message), message
    assert snapshot(ws) == before
