"""``approxft calibrate``: a deep sample matched to the store's positions, the fit written into the
store; the default estimator with and without one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.bundled import GRIMM_DEEP_FILES
from engine.calibration.fit import fit_missing_drops
from engine.calibration.fit_file import calibration_path
from engine.cli import main
from engine.estimators import CALIBRATED_ESTIMATOR, FALLBACK_ESTIMATOR
from ingest.store import StoreError
from tests.helpers import GRIMM_DIR, GRIMM_ROLES, approxft

DEEP = GRIMM_DIR / "deep"
MODELS = list(GRIMM_ROLES.values())
FILES = [GRIMM_DEEP_FILES[r] for r in GRIMM_ROLES]


def role_args(**files: str) -> list[str]:
    """``--big grimm-big=top1000_big.npz ...``, with ``role="model=file"`` overrides."""
    out = []
    for role, model in GRIMM_ROLES.items():
        out += [f"--{role}", files.get(role, f"{model}={GRIMM_DEEP_FILES[role]}")]
    return out


@pytest.fixture
def uncalibrated(grimm_store, tmp_path) -> Path:
    """A copy of the Grimm store without its calibration fits."""
    return Path(shutil.copytree(grimm_store, tmp_path / "grimm.store", ignore=shutil.ignore_patterns("calibration")))


def snapshot(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


def test_calibrate_writes_the_fit_into_the_store_and_makes_it_the_default(uncalibrated, grimm_dataset):
    assert engine.open_dataset(uncalibrated).default_estimator(**GRIMM_ROLES) == FALLBACK_ESTIMATOR
    done = approxft("calibrate", uncalibrated, "--deep", DEEP, *role_args())
    assert done.returncode == 0, done.stderr
    path = calibration_path(uncalibrated, MODELS)
    assert done.stdout.strip() == str(path) and str(path) in done.stderr
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left
    meta = json.loads(path.read_text())
    assert meta["models"] == GRIMM_ROLES and meta["estimator"] == CALIBRATED_ESTIMATOR
    assert (meta["k"], meta["depth"], meta["sample_size"]) == (20, 1000, 2000)
    assert meta["source"] == {"deep": str(DEEP.resolve()), "files": dict(zip(GRIMM_ROLES, FILES, strict=True))}
    ds = engine.open_dataset(uncalibrated)
    assert ds.default_estimator(**GRIMM_ROLES) == CALIBRATED_ESTIMATOR
    assert ds.blend(**GRIMM_ROLES).estimator == CALIBRATED_ESTIMATOR
    # The CLI's fit is the Python API's (the session store, conftest).
    mine, theirs = ds.calibration(MODELS), grimm_dataset.calibration(MODELS)
    np.testing.assert_array_equal(mine.drop, theirs.drop)
    np.testing.assert_array_equal(mine.log_weight, theirs.log_weight)


@pytest.fixture(scope="module")
def shallow_deep(tmp_path_factory) -> Path:
    """The Grimm sample cut to 20 entries a list: no deeper than the store's k."""
    out = tmp_path_factory.mktemp("shallow")
    for name in FILES:
        with np.load(DEEP / name) as z:
            np.savez(out / name, ids=z["ids"][:, :20], lp=z["lp"][:, :20], target_lp=z["target_lp"])
    shutil.copy(DEEP / "token_strings.json", out)
    (out / "garbage.npz").write_bytes(b"not a zip archive\n")
    return out


@pytest.mark.parametrize(
    ("deep", "files", "message"),
    [
        (DEEP, {"big": "grimm-big=nope.npz"}, "nope.npz: no such file"),
        (DEEP, {"big": "davinci=top1000_big.npz"}, "unknown model 'davinci'"),
        (DEEP, {"big": "grimm-small=top1000_big.npz", "untuned": "grimm-big=top1000_small.npz"},
         "differ from grimm-small's in the store"),
        ("shallow", {}, "not more than the store's k = 20"),
        ("shallow", {"big": "grimm-big=garbage.npz"}, "garbage.npz: is not an .npz archive"),
    ],
)
def test_bad_input_is_one_line_exit_1_and_the_store_is_unchanged(uncalibrated, shallow_deep, capsys, deep, files,
                                                                   message):
    before = snapshot(uncalibrated)
    deep = shallow_deep if deep == "shallow" else deep
    assert main(["calibrate", str(uncalibrated), "--deep", str(deep), *role_args(**files)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("approxft calibrate: error: "), err
    assert message in err
    assert snapshot(uncalibrated) == before


def test_a_sample_naming_its_positions_matches_the_implicit_layout(grimm_dataset, tmp_path):
    """``approxft collect``'s layout (request/position arrays, rows in any order, int32 ids with -1
    past a shorter list) gives the sample of the same store positions as data/grimm/deep's."""
    implicit, _ = grimm_dataset.calibration_sample(DEEP, models=MODELS, files=FILES)
    rows = np.flatnonzero(grimm_dataset.split_mask("val"))[:300]
    positions = grimm_dataset.store.positions
    request, position = (positions.get_column(c).to_numpy()[rows] for c in ("request", "position"))
    rng = np.random.default_rng(0)
    keep = [np.arange(300), np.arange(10, 300), np.arange(300)]  # the tuned file lacks rows 0-9
    for name, mine in zip(FILES, keep, strict=True):
        mine = rng.permutation(mine)
        with np.load(DEEP / name) as z:
            ids, lp = z["ids"][mine].astype(np.int32), z["lp"][mine].astype(np.float32)
            if name == FILES[2]:
                ids[0, 150:], lp[0, 150:] = -1, -np.inf  # one list of 150 entries
            np.savez(tmp_path / name, ids=ids, lp=lp, target_lp=z["target_lp"][mine],
                     request=request[mine], position=position[mine])
    shutil.copy(DEEP / "token_strings.json", tmp_path)
    named, described = grimm_dataset.calibration_sample(tmp_path, models=MODELS, files=FILES)
    assert described == "290 positions named by request/position"
    want = implicit.subset(np.arange(10, 300), depth=150)
    for field in ("ids", "lp", "target", "target_lp"):
        np.testing.assert_array_equal(getattr(named, field), getattr(want, field), err_msg=field)
    np.testing.assert_array_equal(fit_missing_drops(named, 20).drop, fit_missing_drops(want, 20).drop)


def test_a_store_without_a_fit_defaults_to_the_fallback_and_refuses_calibrated_tail(golden_dataset):
    assert golden_dataset.calibration(MODELS) is None
    assert golden_dataset.default_estimator(**GRIMM_ROLES) == FALLBACK_ESTIMATOR
    assert golden_dataset.blend(**GRIMM_ROLES).estimator == FALLBACK_ESTIMATOR
    assert CALIBRATED_ESTIMATOR not in golden_dataset.usable_estimators(**GRIMM_ROLES)
    with pytest.raises(ValueError, match=r"has none; fit one on a deep sample with `approxft calibrate"):
        golden_dataset.blend(**GRIMM_ROLES, estimator=CALIBRATED_ESTIMATOR)


def test_a_fit_is_found_by_its_models_and_checked_against_the_store(golden_dataset, grimm_store, tmp_path):
    store = Path(shutil.copytree(golden_dataset.store.path, tmp_path / "golden.store"))
    path = calibration_path(store, MODELS)
    path.parent.mkdir()
    meta = json.loads(calibration_path(grimm_store, MODELS).read_text())
    path.write_text(json.dumps(meta))  # the Grimm fit: same models, same k
    ds = engine.open_dataset(store)
    assert ds.default_estimator(**GRIMM_ROLES) == CALIBRATED_ESTIMATOR
    assert ds.calibration(MODELS[::-1]) is None  # another order is another blend
    path.write_text(json.dumps({**meta, "fit": {**meta["fit"], "k": 5}}))
    with pytest.raises(StoreError, match="fitted at k = 5"):
        ds.blend(**GRIMM_ROLES)
    path.write_text("{")
    with pytest.raises(StoreError, match="cannot be read"):
        ds.default_estimator(**GRIMM_ROLES)
