"""Printing `pipeline plan`: one line per stage and per actor (the numbers come from ``memory.py``)."""
from __future__ import annotations

from ..recipe import Recipe
from .dims import GB, Cluster, Dims, local_machine, parse_cluster
from .memory import StagePlan, _fmt, build_plan


def render(recipe: Recipe, source: str, cluster: Cluster, dims: Dims, plans: list[StagePlan]) -> list[str]:
    out = [f"plan: {source} ({recipe.name}) on {cluster.describe() if cluster.described else 'an undescribed cluster'}",
           f"model: {recipe.model.path or 'embedded tiny Qwen3-MoE'} -- {dims.describe()}"]
    if not cluster.described:
        out.append(f"note: the recipe joins ray.address={recipe.ray.address}; pass --cluster "
                   "\"nodes=..,gpus=..,gpu_mem_gb=..,cpus=..,ram_gb=..\" to check that it fits")
    for sp in plans:
        node = f"node {sp.node}" if sp.node is not None else ("queued" if cluster.described else "node ?")
        gp = f"{sp.gpus:g} GPU, " if sp.gpus else ""
        pl = f"; placement {sp.placement}" if sp.placement != "-" else ""
        peak = max(sp.gpu_use.values(), default=0.0)
        peak_s = f"; peak {_fmt(peak)}/GPU" + (f" of {cluster.gpu_mem_gb:g} GB" if cluster.described else "") \
            if sp.gpus else ""
        head = "fleet" if sp.kind == "fleet" else f"stage {sp.id}"
        wave = "the whole run" if sp.kind == "fleet" else f"wave {sp.wave}"
        out.append(f"{head} [{sp.kind}; {gp}{sp.cpus:g} CPU{pl}] -> {node}, {wave}{peak_s}; "
                   f"host RAM {_fmt(sp.ram_use)}")
        if sp.layout is not None:
            out += [f"    placement group: {line}" for line in sp.layout.describe()]
        for a in sp.actors:
            where = _gpus_str(a.gpus) if a.gpus else "CPU/RAM"
            parts = ", ".join(f"{k} {_fmt(v)}" for k, v in a.parts.items() if v)
            alt = ""
            if "acts_ckpt" in a.alt:
                alt = f" [acts with checkpointing {_fmt(a.alt['acts_ckpt'])}]"
            if "reserved" in a.alt:
                res = (f" [vLLM reserves {a.alt['reserved']:g} x GPU"
                       + (f" = {_fmt(a.alt['reserved'] * cluster.gpu_mem_gb * GB)}]" if cluster.described else "]"))
                alt += res
            per = "/GPU" if a.gpus else ""
            out.append(f"    {a.name:22s} {where:10s} {parts} = {_fmt(a.total)}{per}{alt}; {'; '.join(a.notes)}")
        for n in sp.notes:
            out.append(f"    note: {n}")
    return out


def _gpus_str(g: list[int]) -> str:
    if not g:
        return ""
    if g == list(range(g[0], g[-1] + 1)) and len(g) > 1:
        return f"GPU {g[0]}-{g[-1]}"
    return "GPU " + ",".join(map(str, g))


def main_plan(recipe: Recipe, source: str, cluster_text: str | None, echo=print, graph=None
              ) -> tuple[int, str | None]:
    """Returns (exit code, the one error line or None)."""
    from ..recipe import cross_check

    if cluster_text:
        cluster = parse_cluster(cluster_text)
    elif recipe.ray.address:
        cluster = Cluster(nodes=1, gpus=0, gpu_mem_gb=0, cpus=0, ram_gb=0, described=False)
    else:
        cluster = local_machine(recipe)
    if cluster.described:
        graph = cross_check(recipe, source, cluster={"CPU": cluster.cpus, "GPU": cluster.gpus, **cluster.custom},
                            graph=graph)
    else:
        graph = cross_check(recipe, source, cluster={}, graph=graph)
    dims, plans, problems = build_plan(recipe, cluster, graph)
    for line in render(recipe, source, cluster, dims, plans):
        echo(line)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return 2, f"does not fit: {problems[0]}{more}"
    echo("fits" if cluster.described else "fit not checked (no --cluster)")
    return 0, None
