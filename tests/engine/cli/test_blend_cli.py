"""The real `approxft` with blends of any number of models: --blend, --term, --fix."""

import json
import shutil

import numpy as np
import pytest

from engine.generation.tuned import TunedBlend, read_tuned
from engine.masks import Mask
from tests.helpers import GRIMM_DIR, ROLE_ARGS, approxft

FOUR = ("grimm-big", "grimm-small-tuned", "grimm-small", "grimm-big-tuned")
EXPR = "grimm-big + grimm-small-tuned - 1.0*grimm-small + 0.5*grimm-big-tuned"


def test_eval_blend_and_term_give_the_same_four_model_figures(grimm_store, grimm_dataset):
    by_expr = approxft("eval", grimm_store, "--blend", EXPR, "--format", "json")
    by_term = approxft("eval", grimm_store, *(f"--term={m}={w}" for m, w in zip(FOUR, (1, 1, -1, 0.5), strict=True)),
                       "--format", "json")
    assert by_expr.returncode == 0 and by_term.returncode == 0, by_expr.stderr + by_term.stderr
    blend = json.loads(by_expr.stdout)["blend"]
    assert blend == json.loads(by_term.stdout)["blend"]
    assert blend["terms"] == [{"model": m, "weight": w} for m, w in zip(FOUR, (1.0, 1.0, -1.0, 0.5), strict=True)]
    assert blend["models"] is None and blend["params"] == {"a_1": 1.0, "a_2": 1.0, "a_3": -1.0, "a_4": 0.5}
    direct = grimm_dataset.blend(FOUR).mean_nll([1.0, 1.0, -1.0, 0.5], split="test")
    assert blend["test"] == pytest.approx(np.exp(direct), rel=1e-9)
    table = approxft("eval", grimm_store, "--blend", EXPR)
    assert f"blend {EXPR.replace('1.0*', '')}, estimate: zipf-tail" in table.stdout


def test_the_role_flags_are_a_three_term_blend(grimm_store):
    roles = json.loads(approxft("eval", grimm_store, *ROLE_ARGS, "--format", "json").stdout)["blend"]
    expr = json.loads(approxft("eval", grimm_store, "--blend", "grimm-big + grimm-small-tuned - grimm-small",
                               "--format", "json").stdout)["blend"]
    assert roles == expr and roles["models"] == {"big": "grimm-big", "tuned": "grimm-small-tuned",
                                                 "untuned": "grimm-small"}


def test_tune_a_four_model_blend(grimm_store, tmp_path):
    newton = approxft("tune", grimm_store, "--blend", EXPR, "--method", "newton", "--format", "json")
    assert newton.returncode == 0, newton.stderr
    best = json.loads(newton.stdout)["best"]
    assert [t["model"] for t in best["terms"]] == list(FOUR) and len(best["weights"]) == 4
    (tmp_path / "tuned.json").write_text(newton.stdout)  # what generate --params reads of it
    assert read_tuned(tmp_path / "tuned.json") == TunedBlend(tuple(best["weights"]), best["estimator"], FOUR)
    tpe = approxft("tune", grimm_store, "--blend", EXPR, "--trials", 16, "--fix", "grimm-big", "--fix", "a_3=-0.5",
                   "--format", "json", "--quiet")
    assert tpe.returncode == 0, tpe.stderr
    weights = json.loads(tpe.stdout)["best"]["weights"]
    assert weights[0] == 1.0 and weights[2] == -0.5
    # Newton's exact optimum over all four is at least as good as TPE's over two.
    assert best["val"] <= json.loads(tpe.stdout)["best"]["val"]


@pytest.mark.parametrize("args, message", [
    (["eval", "--blend", "grimm-big + 2*davinci"], "term 2: unknown model 'davinci'; the store holds"),
    (["eval", "--term", "grimm-big=1", "--term", "grimm-small=nan"], "--term 'grimm-small=nan': weight 'nan' is not finite"),
    (["eval", "--blend", "grimm-big - inf*grimm-small"], "term 2 ('inf*grimm-small') of --blend"),
    (["eval", "--blend", "grimm-big", "--big", "grimm-big"], "not the role flags and --blend"),
    (["eval", "--blend", "grimm-big + grimm-small", "--weights", "1,2"], "--weights applies to the role flags"),
    (["eval", "--big", "grimm-big"], "the blend needs --tuned, --untuned"),
    (["tune", "--blend", EXPR, "--param", "temperatures"], "'temperatures' is a formula over 3 models"),
    (["tune", "--blend", EXPR, "--fix", "davinci"], "'davinci' is neither a model of the blend"),
    (["tune", *ROLE_ARGS, "--fix", "grimm-big"], "give its value, NAME=VALUE"),
    (["eval", "--blend", EXPR, "--estimator", "calibrated-tail"], "needs a calibration fit for grimm-big, "),
])
def test_bad_blends_are_one_line_naming_the_term(grimm_store, args, message):
    done = approxft(args[0], grimm_store, *args[1:])
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith(f"approxft {args[0]}: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr


def test_calibrate_takes_any_models_in_blend_order(grimm_store, tmp_path):
    store = tmp_path / "grimm.store"
    shutil.copytree(grimm_store, store)
    deep = GRIMM_DIR / "deep"
    done = approxft("calibrate", store, "--deep", deep, "--model", "grimm-small=top1000_small.npz",
                    "--model", "grimm-big=top1000_big.npz")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("grimm-small+grimm-big.json")
    blend = json.loads(approxft("eval", store, "--blend", "grimm-small - 0.5*grimm-big", "--format", "json").stdout)
    assert blend["blend"]["estimator"] == "calibrated-tail"
    mixed = approxft("calibrate", store, "--deep", deep, "--model", "grimm-small=top1000_small.npz",
                     "--big", "grimm-big=top1000_big.npz")
    assert mixed.returncode == 1 and mixed.stderr == ("approxft calibrate: error: give the models by --model or by the "
                                                      "role flags, not both\n")


def test_eval_and_tune_a_masked_formula(grimm_store, tmp_path):
    done = approxft("eval", grimm_store, *ROLE_ARGS, "--formula", "dexperts=1,0.9", "--estimator", "zipf-tail",
                    "--format", "json")
    assert done.returncode == 0, done.stderr
    blend = json.loads(done.stdout)["blend"]
    assert blend["parametrization"] == "dexperts" and blend["params"] == {"alpha": 1.0, "top_p": 0.9}
    assert blend["val"] is None and blend["mask"]["targets_outside"]["val"] > 0  # infinite, and counted
    table = approxft("eval", grimm_store, *ROLE_ARGS, "--formula", "contrastive", "--mask-floor", "30")
    assert "blend contrastive(0.1,0.5) [mask relative:grimm-big=0.1]" in table.stdout
    assert "note: mask relative:grimm-big=0.1: the target falls outside it at " in table.stderr
    assert "each charged a floor of 30 nats" in table.stderr
    tuned = approxft("tune", grimm_store, *ROLE_ARGS, "--param", "dexperts", "--trials", 8, "--mask-floor", 30,
                     "--fix", "top_p=0.95", "--format", "json", "--quiet")
    assert tuned.returncode == 0, tuned.stderr
    best = json.loads(tuned.stdout)["best"]
    assert best["params"]["top_p"] == 0.95 and best["mask"]["floor"] == 30.0
    (tmp_path / "tuned.json").write_text(tuned.stdout)  # generate --params samples under the same mask
    assert read_tuned(tmp_path / "tuned.json").mask == Mask("top-p", "grimm-big", 0.95)


@pytest.mark.parametrize("args, message", [
    (["eval", *ROLE_ARGS, "--formula", "dexperts=1,0"], "parametrization 'dexperts': top_p must be in (0, 1], got top_p=0"),
    (["eval", *ROLE_ARGS, "--formula", "contrastive=2"], "parametrization 'contrastive': alpha must be in (0, 1]"),
    (["eval", *ROLE_ARGS, "--mask", "top-p:grimm-big-tuned=0.9"], "'grimm-big-tuned' is not a model of the blend"),
    (["eval", *ROLE_ARGS, "--formula", "dexperts", "--mask", "top-p:grimm-big=0.5"], "brings its own mask"),
    (["eval", *ROLE_ARGS, "--mask-floor", "30"], "--mask-floor applies to a masked blend"),
    (["tune", *ROLE_ARGS, "--param", "dexperts"], "drops the target at"),
])
def test_bad_masks_are_one_line(grimm_store, args, message):
    done = approxft(args[0], grimm_store, *args[1:])
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


def test_a_bad_mask_flag_is_a_usage_error(grimm_store):
    done = approxft("eval", grimm_store, *ROLE_ARGS, "--mask", "top-p:grimm-big=0")
    assert done.returncode == 2 and "top_p must be in (0, 1], got 0" in done.stderr
