import pytest

from pipedecode.planner.lp import Builder


def test_builder_merges_terms_and_checks_names():
    b = Builder("t")
    b.var("x")
    b.add("c", [("x", 1.0), ("x", 2.0)], "<=", 3)
    lp = b.build({"x": 1.0})
    assert lp.constraints[0].terms == (("x", 3.0),)
    b.add("c", {"x": 1.0}, ">=", 0)
    with pytest.raises(ValueError, match="duplicate constraint"):
        b.build({"x": 1.0})


def test_unknown_variable_and_sense_are_rejected():
    b = Builder("t")
    b.add("c", {"y": 1.0}, "<=", 1)
    with pytest.raises(ValueError, match="unknown var"):
        b.build({})
    with pytest.raises(ValueError, match="sense"):
        Builder("t").add("c", {}, "<", 1)
