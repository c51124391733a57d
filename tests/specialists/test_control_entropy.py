"""controls.entropy: the reward-free control's only loss is the entropy term, so a recipe whose control would train
nothing (grpo.entropy_coef 0 in some cell) is refused at load, naming the first such stage."""
import pytest

from conftest import ROOT
from pipeline.recipe import RecipeError, load_recipe, load_with_graph

ABLATIONS = ROOT / "recipes" / "ablations.yaml"     # think_max (entropy_coef -0.1) plus the controls


def test_controls_with_an_entropy_term_load():
    _, graph = load_with_graph(ABLATIONS)
    controls = [s for s in graph if s.kind == "control.entropy"]
    assert len(controls) == 12 and all(s.config.grpo.entropy_coef == -0.1 for s in controls)


def test_controls_without_an_entropy_term_are_refused():
    with pytest.raises(RecipeError, match=r"controls.entropy: grpo.entropy_coef is 0 for control.entropy.math.non_think "
                                          r"and 11 more: .*SFT start unchanged"):
        load_recipe(ABLATIONS, ["grpo.entropy_coef=0"])


def test_one_cell_without_an_entropy_term_is_named():
    with pytest.raises(RecipeError, match=r"entropy_coef is 0 for control.entropy.\w+.think_high and 3 more: "):
        load_recipe(ABLATIONS, ["grpo.per_mode.think_high.entropy_coef=0"])
