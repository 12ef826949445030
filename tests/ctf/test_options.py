"""CTFOptions (prunekit.ctf.options): validation naming the option, dependent defaults, keywords = options object."""
import dataclasses

import pytest

from prunekit.ctf import CTF, CTFOptions, DEFAULT_A_INIT
from tests.ctf.helpers import gcn, inputs

BAD = [
    ({"cost": "flops"}, "cost"),
    ({"granularities": ()}, "granularities"),
    ({"granularities": ("entry", "block")}, "granularities"),
    ({"thresholds": "learned"}, "thresholds"),
    ({"budget": "hard"}, "budget"),
    ({"tau_start": 0.0}, "tau_start"),
    ({"tau_end": -0.1}, "tau_end"),
    ({"ramp": 1.5}, "ramp"),
    ({"settle": -0.1}, "settle"),
    ({"hard": 1.0}, "hard"),
    ({"lam": -1.0}, "lam"),
    ({"threshold_lr": float("nan")}, "threshold_lr"),
    ({"a_init": {"block": 0.1}}, "a_init"),
    ({"a_init": {"entry": -0.5}}, "a_init"),
    ({"layouts": {"blocks.0.tcn.weight": 0}}, "layouts"),
    ({"thresholds": "fixed", "threshold_control": True}, "threshold_control"),
    ({"thresholds": "fixed", "weight_penalty": False}, "weight_penalty"),
]


@pytest.mark.parametrize("bad,option", BAD, ids=[f"{o}-{i}" for i, (_, o) in enumerate(BAD)])
def test_a_bad_value_raises_naming_the_option(bad, option):
    with pytest.raises(ValueError, match=f"CTFOptions: {option}"):
        CTFOptions(**bad)
    with pytest.raises(ValueError, match=f"CTFOptions: {option}"):  # the same through CTF's keywords
        CTF(gcn(), 0.5, example_inputs=inputs(batch=2), **bad)


def test_an_unknown_option_is_named():
    with pytest.raises(TypeError, match="'lambda'"):
        CTF(gcn(), 0.5, example_inputs=inputs(batch=2), **{"lambda": 3.0})
    with pytest.raises(TypeError, match="CTFOptions"):
        CTF(gcn(), 0.5, {"lam": 3.0}, example_inputs=inputs(batch=2))


def test_keywords_and_an_options_object_give_the_same_ctf():
    settings = {"lam": 20.0, "hard": 0.0, "granularities": ["entry", "column"], "a_init": {"entry": 0.1}}
    by_keywords = CTF(gcn(), 0.7, example_inputs=inputs(batch=2), **settings)
    by_object = CTF(gcn(), 0.7, CTFOptions(**settings), example_inputs=inputs(batch=2))
    assert by_keywords.options == by_object.options
    assert by_object.granularities == ("column", "entry")  # coarse to fine, whatever the order given
    assert (by_object.lam, by_object.hard, by_object.relative, by_object.a_init) == (
        20.0, 0.0, True, {**DEFAULT_A_INIT["learnable"], "entry": 0.1})
    assert by_keywords.kept_fraction() == by_object.kept_fraction()
    over = CTF(gcn(), 0.7, CTFOptions(**settings), example_inputs=inputs(batch=2), lam=5.0, thresholds="fixed")
    assert over.lam == 5.0 and over.weight_penalty and over.a_init["channel"] == 0.5  # keywords win; fixed defaults
    assert over.options == dataclasses.replace(by_object.options, lam=5.0, thresholds="fixed", relative=False,
                                               weight_penalty=True, threshold_control=False,
                                               a_init={**DEFAULT_A_INIT["fixed"], "entry": 0.1})


def test_dependent_defaults_follow_the_thresholds():
    learn, fixed = CTFOptions().resolved(), CTFOptions(thresholds="fixed").resolved()
    assert (learn.lam, learn.relative, learn.weight_penalty, learn.threshold_control) == (50.0, True, False, True)
    assert (fixed.lam, fixed.relative, fixed.weight_penalty, fixed.threshold_control) == (200.0, False, True, False)
    assert learn.a_init == DEFAULT_A_INIT["learnable"] and fixed.a_init == DEFAULT_A_INIT["fixed"]
    explicit = CTFOptions(thresholds="fixed", lam=7.0, relative=True).resolved()
    assert (explicit.lam, explicit.relative) == (7.0, True)  # given values are kept
    assert explicit.resolved() == explicit
