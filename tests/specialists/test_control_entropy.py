"""controls.entropy: the reward-free control's only loss is the entropy term, so a recipe whose control would train
nothing (grpo.entropy_coef 0 in some cell) is refused at load (a stage check: validate and run), naming the first
such stage."""
import pytest

from conftest import ROOT
from pipeline.recipe import RecipeError, load_recipe, load_with_graph

ABLATIONS = ROOT / "recipes" / "ablations.yaml"     # think_max (entropy_coef -0.1) plus the controls


def test_controls_with_an_entropy_term_load():
    _, graph = load_with_graph(ABLATIONS)
    controls = [s for s in graph if s.kind == "control.entropy"]
    assert len(controls) == 12 and all(s.config.grpo.entropy_coef == -0.1 for s in controls)


def test_controls_without_an_entropy_term_are_refused():
    with pytest.raises(RecipeError, match=r"controls.entropy: grpo.entropy_coef is 0 for control.entropy.math.non_think: "
                                          r".*SFT start unchanged"):
        load_recipe(ABLATIONS, ["grpo.entropy_coef=0"])


def test_one_cell_without_an_entropy_term_is_named():
    with pytest.raises(RecipeError, match=r"entropy_coef is 0 for control.entropy.math.think_high: "):
        load_recipe(ABLATIONS, ["grpo.per_mode.think_high.entropy_coef=0"])


def test_a_run_directory_of_such_a_recipe_still_reads():
    """The refusal is a stage check: the graph of an existing run's recipe still builds without checks (status,
    report, efficacy read it)."""
    from pipeline.graph import build_graph

    rc = load_recipe(ABLATIONS, ["grpo.entropy_coef=0"], check=False)
    assert sum(s.kind == "control.entropy" for s in build_graph(rc, check=False)) == 12
