from pipeline.graph import ancestors, build_graph, dependants, fingerprints
from pipeline.recipe import load_recipe


def test_graph_order_and_ids(recipe_file):
    g = build_graph(load_recipe(recipe_file))
    ids = [s.id for s in g]
    assert ids[0] == "bootstrap" and set(ids[1:]) == {"sft.math", "sft.code"}
    assert all(s.deps == ["bootstrap"] for s in g[1:])


def test_fingerprints_chain(recipe_file):
    r1 = load_recipe(recipe_file)
    r2 = load_recipe(recipe_file, ["model.tiny.hidden_size=96"])
    r3 = load_recipe(recipe_file, ["sft.per_domain.math.steps=9"])
    f1, f2, f3 = (fingerprints(build_graph(r)) for r in (r1, r2, r3))
    assert f1["bootstrap"] != f2["bootstrap"] and f1["sft.math"] != f2["sft.math"]  # upstream change flows down
    assert f1["bootstrap"] == f3["bootstrap"] and f1["sft.code"] == f3["sft.code"]
    assert f1["sft.math"] != f3["sft.math"]
    # re-running an upstream stage (new completion token) invalidates its dependants
    g = build_graph(r1)
    assert fingerprints(g, {"bootstrap": "a"})["sft.math"] != fingerprints(g, {"bootstrap": "b"})["sft.math"]


def test_dependants_and_ancestors(recipe_file):
    g = build_graph(load_recipe(recipe_file))
    assert dependants(g, {"bootstrap"}) == {"bootstrap", "sft.math", "sft.code"}
    assert ancestors(g, {"sft.code"}) == {"sft.code", "bootstrap"}
