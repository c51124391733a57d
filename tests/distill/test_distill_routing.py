"""Distill stage, pure parts: routing of trajectories to teachers, prompt draws, micro-batches and the loss."""
import pytest
import torch

from distill.kl import reverse_kl_from_logits
from distill.loss import kl_means, make_loss_fn, micro_batches
from distill.rollouts import Trajectory, loss_positions
from distill.config import mixture_weights
from distill.routing import Draw, Teacher, draw_prompts, route, route_table, teachers_of
from pipeline.graph import build_graph
from pipeline.recipe import Recipe


def _recipe(**distill):
    return Recipe.model_validate({"name": "r", "domains": ["math", "code"], "modes": ["non_think", "think_max"],
                                  "distill": distill})


def _resolved(recipe):
    """The distill stage's resolved config, as the graph builds it."""
    return next(s for s in build_graph(recipe, check=False) if s.id == "distill").config


def test_route_table_defaults_and_weights():
    r = _recipe(teachers={"math.think_max": [{"stage": "sft.math", "weight": 0.7},
                                             {"path": "/models/big-math", "weight": 0.3}]})
    table = route_table(_resolved(r).teachers, dep=lambda s: f"/run/{s}/final")
    # no grpo section: every other domain x mode falls back to its SFT specialist, weight 1
    assert [(t.name, w) for t, w in route(table, "code", "non_think")] == [("sft.code", 1.0)]
    assert [(t.name, t.folder, w) for t, w in route(table, "math", "think_max")] == [
        ("sft.math", "/run/sft.math/final", 0.7), ("big-math", "/models/big-math", 0.3)]
    assert sorted(teachers_of(table)) == ["big-math", "sft.code", "sft.math"]
    with_grpo = Recipe.model_validate({"name": "r", "domains": ["math"], "modes": ["think_max"], "grpo": {},
                                       "distill": {}})
    assert [t.name for t, _ in route(route_table(_resolved(with_grpo).teachers), "math", "think_max")] == [
        "grpo.math.think_max"]


def test_mixture_and_draws_are_deterministic():
    r = _recipe(mixture={"math.think_max": 3.0, "code.non_think": 1.0})
    w = mixture_weights(r.distill, r.domains, r.modes)
    assert _resolved(r).weights == w
    assert w == {"math.non_think": 0.0, "math.think_max": 3.0, "code.non_think": 1.0, "code.think_max": 0.0}
    draws = [draw_prompts(w, {"math": 50, "code": 50}, 8, seed=1, step=s) for s in range(200)]
    assert draws[17] == draw_prompts(w, {"math": 50, "code": 50}, 8, seed=1, step=17)   # resume replays nothing
    assert draws[17] != draws[18]
    keys = [d.key for ds in draws for d in ds]
    assert set(keys) == {"math.think_max", "code.non_think"}
    assert 0.70 < keys.count("math.think_max") / len(keys) < 0.80
    with pytest.raises(ValueError, match="distill.mixture.agent.non_think"):
        mixture_weights(_recipe(mixture={"agent.non_think": 1.0}).distill, r.domains, r.modes)


def test_micro_batches_route_rows_to_teachers_with_weights():
    a, b = Teacher("A", "/a"), Teacher("B", "/b")
    table = {"math.think_max": [(a, 0.7), (b, 0.3)], "code.non_think": [(b, 1.0)]}
    t0 = Trajectory(Draw("math", "think_max", 0), [1, 2, 3, 4, 5], loss_positions([0, 0, 1, 1, 1]))
    t1 = Trajectory(Draw("code", "non_think", 3), [1, 2, 3], loss_positions([0, 1, 1]))
    assert t0.positions == [1, 2, 3] and t1.positions == [0, 1]
    pay = {"A": [torch.full((3, 2), 1.0)], "B": [torch.full((3, 2), 2.0), torch.full((2, 2), 3.0)]}
    [mb] = micro_batches([t0, t1], lambda t: route(table, t.draw.domain, t.draw.mode), pay, pad_id=0)
    assert mb.weight == 5 and mb.flat_positions_N.tolist() == [1, 2, 3, 5, 6]
    assert mb.teachers["A"].rows_Nt.tolist() == [0, 1, 2]
    assert mb.teachers["A"].w_Nt.tolist() == pytest.approx([0.7] * 3)
    assert mb.teachers["B"].rows_Nt.tolist() == [0, 1, 2, 3, 4]
    assert mb.teachers["B"].w_Nt.tolist() == pytest.approx([0.3] * 3 + [1.0] * 2)
    assert mb.teachers["B"].payload_Nt_X[:, 0].tolist() == [2, 2, 2, 3, 3]
    # a token budget splits the batch without losing any teacher row
    mbs = micro_batches([t0, t1], lambda t: route(table, t.draw.domain, t.draw.mode), pay, pad_id=0, max_tokens=3)
    assert [m.weight for m in mbs] == [3, 2] and "A" not in mbs[1].teachers


@pytest.mark.parametrize("fused", [False, True])
def test_loss_is_weighted_full_vocab_reverse_kl(tiny_dir, fused):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    V, H = model.get_output_embeddings().weight.shape
    a, b = Teacher("A", "/a"), Teacher("B", "/b")
    table = {"math.think_max": [(a, 0.7), (b, 0.3)]}
    heads = {"A": torch.randn(V, 48) * 0.2, "B": torch.randn(V, 32) * 0.2}
    trajs = [Trajectory(Draw("math", "think_max", i), list(range(5 + i, 17 + 2 * i)), list(range(4, 10 + i)))
             for i in range(2)]
    pay = {"A": [torch.randn(t.n_tokens, 48).bfloat16() for t in trajs],
           "B": [torch.randn(t.n_tokens, 32).bfloat16() for t in trajs]}
    [mb] = micro_batches(trajs, lambda t: route(table, "math", "think_max"), pay, pad_id=0)
    loss, stats = make_loss_fn(heads, "hidden", 4, 1.0, fused=fused)(model, mb)
    loss.backward()
    assert model.get_output_embeddings().weight.grad is not None          # the student's head is trained too
    with torch.no_grad():                                                  # naive: full logits, plain autograd
        want, per = 0.0, {}
        for t, pa, pb in zip(trajs, pay["A"], pay["B"]):
            logits = model(input_ids=torch.tensor([t.ids])).logits[0, t.positions]
            ka = reverse_kl_from_logits(logits, pa.float() @ heads["A"].T)
            kb = reverse_kl_from_logits(logits, pb.float() @ heads["B"].T)
            want += float(0.7 * ka.sum() + 0.3 * kb.sum())
            per.setdefault("A", []).append(ka)
            per.setdefault("B", []).append(kb)
    assert float(loss.detach()) == pytest.approx(want, rel=1e-4)
    means = kl_means(stats)
    assert means["kl.A"] == pytest.approx(float(torch.cat(per["A"]).mean()), rel=1e-4)
    assert means["kl.B"] == pytest.approx(float(torch.cat(per["B"]).mean()), rel=1e-4)


class _FakeRay:
    """Stands in for ray in TeacherPool: actors are local objects, ``get`` is the identity, ``kill`` is recorded."""

    def __init__(self):
        self.killed, self.started = [], []

    def get(self, x):
        return x

    def kill(self, actor):
        self.killed.append(actor.folder)


class _Remote:
    def __init__(self, fn):
        self.remote = fn


class _FakeActor:
    def __init__(self, ray, folder):
        ray.started.append(folder)
        self.folder = folder
        self.load = _Remote(lambda: 300 * 2**20)                       # 300 MiB resident after loading
        self.head = _Remote(lambda: torch.zeros(4, 2))
        self.forward = _Remote(lambda seqs, pos, payload: [torch.zeros(len(p), 2) for p in pos])


def test_pool_evicts_least_recently_used_under_the_budget():
    from distill.teachers import TeacherPool

    teachers = {n: Teacher(n, f"/t/{n}") for n in "ABC"}
    pool = TeacherPool(teachers, budget_gb=1.0)          # 1 GiB: two teachers fit (300 MiB + 0.45 GiB estimate)
    fake = pool.ray = _FakeRay()
    pool.remote_cls = _Remote(lambda folder, threads, dtype: _FakeActor(fake, folder))
    req = ([[1, 2, 3]], [[0, 1]])
    pool.run({"A": req})
    pool.run({"B": req})
    pool.run({"A": req})                                 # A is now the most recently used
    assert fake.started == ["/t/A", "/t/B"] and pool.evictions == 0
    out = pool.run({"C": req, "A": req})                 # C needs room: B (least recently used) goes, A stays
    assert fake.killed == ["/t/B"] and list(pool.actors) == ["A", "C"] and pool.evictions == 1
    assert out["C"][0].shape == (2, 2) and set(pool.heads) == {"A", "B", "C"}   # heads stay on the learner
    pool.run({"B": req})
    assert fake.killed == ["/t/B", "/t/A"] and list(pool.actors) == ["C", "B"] and pool.loads == 4


def test_pool_starts_the_teachers_that_fit_together():
    from distill.teachers import TeacherPool

    teachers = {n: Teacher(n, f"/t/{n}") for n in "ABC"}
    pool = TeacherPool(teachers, budget_gb=1.0)          # two fit at a time
    fake = pool.ray = _FakeRay()
    gets = []
    fake.get = lambda x: (gets.append(len(x) if isinstance(x, list) else 1), x)[1]
    pool.remote_cls = _Remote(lambda folder, threads, dtype: _FakeActor(fake, folder))
    req = ([[1, 2, 3]], [[0, 1]])
    out = pool.run({"A": req, "B": req, "C": req})
    assert set(out) == {"A", "B", "C"} and pool.loads == 3
    assert gets[0] == 2                                  # A and B loaded by one parallel get, then C alone
    assert fake.killed == ["/t/A"] and list(pool.actors) == ["B", "C"]

    big = TeacherPool(teachers, budget_gb=8.0)
    fake2 = big.ray = _FakeRay()
    gets.clear()
    fake2.get = lambda x: (gets.append(len(x) if isinstance(x, list) else 1), x)[1]
    big.remote_cls = _Remote(lambda folder, threads, dtype: _FakeActor(fake2, folder))
    big.run({"A": req, "B": req, "C": req})
    assert gets[0] == 3 and big.evictions == 0           # all three start at once


def test_domain_repeats_follow_the_mixture():
    from distill.config import domain_repeats

    doms = ["math", "code", "agent"]
    uniform = {f"{d}.{m}": 1.0 for d in doms for m in ("non_think", "think_max")}
    assert domain_repeats(uniform, doms) == {"math": 1, "code": 1, "agent": 1}
    w = {**uniform, "math.non_think": 3.0, "math.think_max": 3.0, "agent.non_think": 0.0, "agent.think_max": 0.0}
    assert domain_repeats(w, doms) == {"math": 3, "code": 1, "agent": 0}
