"""Our GRPO and distill stages beside TRL's ``GRPOTrainer`` and ``DistillationTrainer`` on SmolLM2-135M-Instruct
(issue 23, "Side by side with TRL"), in one run of this script, on the CPU.

Same model (the packaged SmolLM2-135M-Instruct as our bootstrap stage adopts it: ``bootstrap/final`` of this
script's own run directory, fp32), same prompts (our reasoning-gym math rows from ``recipes/smollm2.yaml``'s source,
encoded with our chat template in ``non_think``; TRL gets them as the rendered prompt text, GRPO in the order our
stage draws them), same group size, token budget (max new tokens), sampler (temperature / top_p / top_k), AdamW
(lr, betas, eps, weight decay, grad clip, constant schedule, no warm-up), one optimizer step per rollout batch, fp32,
the same torch thread count. Both generate with transformers on the CPU: TRL with ``use_vllm=False`` (its
``model.generate``), ours with ``grpo.engine.kind: hf`` / ``distill.engine.kind: hf`` (our own KV-cache decode loop
over the same transformers model). The reward on both sides is our math verifier (``rewards.base.score_batch``);
ours adds the mode's length shaping (a few arithmetic operations). Distillation: one teacher, the GRPO-trained
model of our run (``grpo.math.non_think/final``), the student the adopted model; reverse KL on the student's own
samples on both sides (TRL ``beta=1.0``; ours sends the teacher's last hidden states and recomputes its logits on
the learner, TRL runs the teacher in-process).

Measured, per side, in a subprocess of its own: seconds per optimizer step (first step and the steady state = the
mean of the later steps), rollout tokens/s (completion tokens / seconds of generation + scoring for GRPO, of
generation for distill: what each stage's ``tokens_per_s`` metric means), total wall time of the subprocess (model
loading, Ray start and our stages' held-out evaluation included), peak RSS: the largest single process and the sum
over the process tree (psutil, sampled every 0.2 s; Ray's own daemons and our teacher actor are in our tree).

    python bench/peer_trl.py                                  # ~13-15 min on 2 shared cores
    python bench/peer_trl.py --steps 4 --prompts 4 --group 4 --max-new 64 --out bench/results/peer_trl.md
    python bench/peer_trl.py --only grpo                      # one half
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BASE_RECIPE = ROOT / "recipes" / "smollm2.yaml"
GRPO_STAGE = "grpo.math.non_think"
MODE = "non_think"


# ----------------------------------------------------------------------------------------------------------------
# settings: one dict, from which both sides' configurations are built (pure functions: tests/bench/test_peer_trl.py)

def settings(steps=4, prompts=4, group=4, max_new=64, threads=1, seed=1234, n_train=64, lr=1e-5, distill_lr=2e-5,
             temperature=1.0, top_p=0.95, top_k=64) -> dict:
    return dict(steps=steps, prompts=prompts, group=group, max_new=max_new, threads=threads, seed=seed,
                n_train=n_train, temperature=temperature, top_p=top_p, top_k=top_k,
                grpo_lr=lr, distill_lr=distill_lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, grad_clip=1.0,
                clip_low=0.2, clip_high=0.28)


def our_recipe(base: dict, s: dict, engine: str = "hf") -> dict:
    """recipes/smollm2.yaml shrunk to math in non_think, the GRPO stage from the adopted model, distill from it with
    the GRPO teacher, both on ``engine`` (hf: transformers on the CPU)."""
    import copy

    r = copy.deepcopy(base)
    r["name"] = "peer_trl"
    r["seed"] = s["seed"]
    r["domains"], r["modes"] = ["math"], [MODE]
    r["tasks"] = {"math": {**r["tasks"]["math"], "n_train": s["n_train"], "n_eval": 1}}
    r["learner"].update(qat="none", warmup_steps=0, schedule="constant", betas=list(s["betas"]),
                        weight_decay=s["weight_decay"], grad_clip=s["grad_clip"], precision="fp32", zero_stage=0,
                        optimizer="adamw")
    eng = {"kind": engine, "fp4": False}
    sampling = {"temperature": s["temperature"], "top_p": s["top_p"], "top_k": s["top_k"]}
    g = r["grpo"]
    g.update(init_from="bootstrap", steps=s["steps"], prompts_per_step=s["prompts"], group_size=s["group"],
             ppo_epochs=1, minibatches=1, sampling=sampling, advantage="dr_grpo", loss_agg="token_mean",
             entropy_coef=0.0, kl_coef=0.0, clip_low=s["clip_low"], clip_high=s["clip_high"], engine=eng,
             keep_sampling_mask=False, keep_routing=False, save_every=s["steps"],
             learner={"lr": s["grpo_lr"], "warmup_steps": 0, "schedule": "constant"},
             resources={"num_cpus": s["threads"]})
    g.pop("per_domain", None)
    g["shaping"]["modes"] = {MODE: {"l_max": s["max_new"], "l_buffer": max(1, s["max_new"] // 4),
                                    "length_cost_per_token": 5.0e-4, "overlong_weight": 1.0}}
    d = r["distill"]
    d.update(student_from="bootstrap", teachers={f"math.{MODE}": [{"stage": GRPO_STAGE, "weight": 1.0}]},
             steps=s["steps"], prompts_per_step=s["prompts"], samples_per_prompt=1, sampling=sampling,
             max_tokens={MODE: s["max_new"]}, engine=eng, save_every=s["steps"],
             learner={"lr": s["distill_lr"], "warmup_steps": 0, "schedule": "constant"},
             resources={"num_cpus": s["threads"]})
    r.pop("controls", None)
    if engine != "vllm":
        r.pop("fleet", None)
    else:
        r["fleet"].update(engines=1, fp4=False)
    r["eval"].update(samples=1, pass_k=[1], greedy=True, max_tokens={MODE: s["max_new"]}, engine=eng,
                     suites={"math500": {"limit": 1}})
    return r


def trl_grpo_args(s: dict, out_dir: str) -> dict:
    """GRPOConfig keyword arguments equal to our GRPO stage's settings: one generation batch of prompts x group per
    optimizer step, DAPO token-mean loss, Dr. GRPO advantages (no std scaling), clip-higher, no KL, fp32."""
    return dict(output_dir=out_dir, max_steps=s["steps"], per_device_train_batch_size=s["prompts"] * s["group"],
                gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
                num_generations=s["group"], max_completion_length=s["max_new"], temperature=s["temperature"],
                top_p=s["top_p"], top_k=s["top_k"], learning_rate=s["grpo_lr"], lr_scheduler_type="constant",
                warmup_steps=0, adam_beta1=s["betas"][0], adam_beta2=s["betas"][1], adam_epsilon=s["eps"],
                weight_decay=s["weight_decay"], max_grad_norm=s["grad_clip"], optim="adamw_torch",
                beta=0.0, epsilon=s["clip_low"], epsilon_high=s["clip_high"], scale_rewards="none",
                loss_type="dapo", use_vllm=False, bf16=False, fp16=False, gradient_checkpointing=False,
                use_cpu=True, report_to=[], logging_steps=1, save_strategy="no", shuffle_dataset=False,
                remove_unused_columns=False, seed=s["seed"], disable_tqdm=True, dataloader_num_workers=0)


def trl_distill_args(s: dict, out_dir: str) -> dict:
    """DistillationConfig keyword arguments equal to our distill stage's: fully on-policy (the student samples one
    completion per prompt), reverse KL (beta = 1), prompts per step, budget, sampler, AdamW, fp32."""
    return dict(output_dir=out_dir, max_steps=s["steps"], per_device_train_batch_size=s["prompts"],
                gradient_accumulation_steps=1, max_completion_length=s["max_new"], temperature=s["temperature"],
                top_p=s["top_p"], top_k=s["top_k"], learning_rate=s["distill_lr"], lr_scheduler_type="constant",
                warmup_steps=0, adam_beta1=s["betas"][0], adam_beta2=s["betas"][1], adam_epsilon=s["eps"],
                weight_decay=s["weight_decay"], max_grad_norm=s["grad_clip"], optim="adamw_torch", beta=1.0,
                use_vllm=False, bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, report_to=[],
                logging_steps=1, save_strategy="no", shuffle_dataset=False, remove_unused_columns=False,
                seed=s["seed"], disable_tqdm=True, dataloader_num_workers=0)


def common_view(recipe: dict, grpo_args: dict, distill_args: dict) -> dict:
    """The shared settings as each side states them: {name: (ours, TRL GRPO, TRL distill)} (for the test and the
    report)."""
    g, d, L = recipe["grpo"], recipe["distill"], recipe["learner"]
    return {
        "steps": (g["steps"], grpo_args["max_steps"], d["steps"], distill_args["max_steps"]),
        "prompts_per_step": (g["prompts_per_step"], grpo_args["per_device_train_batch_size"] // grpo_args[
            "num_generations"], d["prompts_per_step"], distill_args["per_device_train_batch_size"]),
        "group_size": (g["group_size"], grpo_args["num_generations"]),
        "max_new_tokens": (g["shaping"]["modes"][MODE]["l_max"], grpo_args["max_completion_length"],
                           d["max_tokens"][MODE], distill_args["max_completion_length"]),
        "temperature": (g["sampling"]["temperature"], grpo_args["temperature"], d["sampling"]["temperature"],
                        distill_args["temperature"]),
        "top_p": (g["sampling"]["top_p"], grpo_args["top_p"], d["sampling"]["top_p"], distill_args["top_p"]),
        "top_k": (g["sampling"]["top_k"], grpo_args["top_k"], d["sampling"]["top_k"], distill_args["top_k"]),
        "grpo_lr": (g["learner"]["lr"], grpo_args["learning_rate"]),
        "distill_lr": (d["learner"]["lr"], distill_args["learning_rate"]),
        "betas": (tuple(L["betas"]), (grpo_args["adam_beta1"], grpo_args["adam_beta2"]),
                  (distill_args["adam_beta1"], distill_args["adam_beta2"])),
        "weight_decay": (L["weight_decay"], grpo_args["weight_decay"], distill_args["weight_decay"]),
        "grad_clip": (L["grad_clip"], grpo_args["max_grad_norm"], distill_args["max_grad_norm"]),
        "schedule": (g["learner"]["schedule"], grpo_args["lr_scheduler_type"], d["learner"]["schedule"],
                     distill_args["lr_scheduler_type"]),
        "warmup": (g["learner"]["warmup_steps"], grpo_args["warmup_steps"], d["learner"]["warmup_steps"],
                   distill_args["warmup_steps"]),
        "optimizer_steps_per_batch": (g["ppo_epochs"] * g["minibatches"],
                                      grpo_args["num_iterations"] * grpo_args["steps_per_generation"]),
        "clip": ((g["clip_low"], g["clip_high"]), (grpo_args["epsilon"], grpo_args["epsilon_high"])),
        "kl_coef": (g["kl_coef"], grpo_args["beta"]),
        "reverse_kl": (True, distill_args["beta"] == 1.0),
        "fp32": (L["precision"] == "fp32", not grpo_args["bf16"], not distill_args["bf16"]),
        "transformers_generation": (g["engine"]["kind"] == "hf" and d["engine"]["kind"] == "hf",
                                    not grpo_args["use_vllm"], not distill_args["use_vllm"]),
    }


# ----------------------------------------------------------------------------------------------------------------
# prompts: our rows, our template

def math_rows(recipe_path: Path, s: dict) -> list[dict]:
    from pipeline.recipe import load_recipe
    from rewards.tasks import load_tasks

    rc = load_recipe(recipe_path)
    return load_tasks("math", "train", s["n_train"], rc.seed, rc.task_source("math").model_dump())


def grpo_draws(rows: list[dict], s: dict) -> list[int]:
    """The row indices our GRPO stage draws, step after step (specialists/grpo.py's seeded draw)."""
    out = []
    for step in range(s["steps"]):
        rng = random.Random(f"{s['seed']}:{GRPO_STAGE}:{step}")
        out += [rows.index(x) for x in rng.sample(rows, min(s["prompts"], len(rows)))]
    return out


def prompt_texts(tok, rows: list[dict]) -> tuple[list[str], list[int]]:
    """Each row's prompt rendered as our stage encodes it (the non_think template and prefill), as text; and the
    token counts (checked against what TRL's tokenizer call gives back)."""
    from rollout.encoding import encode_prompt
    from train.evaluate import prompt_messages

    ids = [encode_prompt(tok, prompt_messages(r, MODE), MODE) for r in rows]
    return [tok.decode(x, skip_special_tokens=False) for x in ids], [len(x) for x in ids]


# ----------------------------------------------------------------------------------------------------------------
# measuring a subprocess

class TreeMonitor:
    """Peak RSS of a process and its descendants, sampled every ``period`` s: the largest single process and the
    sum over the tree."""

    def __init__(self, pid: int, period: float = 0.2):
        import psutil

        self.proc, self.period = psutil.Process(pid), period
        self.peak_sum = self.peak_one = 0
        self.peak_one_cmd = ""
        self.peak_one_nice = None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.proc] + self.proc.children(recursive=True)
            except psutil.Error:
                break
            total = 0
            for p in procs:
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                total += rss
                if rss > self.peak_one:
                    self.peak_one = rss
                    try:
                        self.peak_one_cmd = " ".join(p.cmdline()[:3])[:120]
                        self.peak_one_nice = p.nice()
                    except psutil.Error:
                        pass
            self.peak_sum = max(self.peak_sum, total)
            self._stop.wait(self.period)

    def stop(self) -> dict:
        self._stop.set()
        self._t.join(timeout=5)
        return {"peak_rss_tree_mb": self.peak_sum / 2**20, "peak_rss_process_mb": self.peak_one / 2**20,
                "peak_process": self.peak_one_cmd, "peak_process_nice": self.peak_one_nice}


def run_measured(cmd: list[str], log: Path, env: dict, timeout: float) -> dict:
    import resource

    t0 = time.time()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
        mon = TreeMonitor(p.pid)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = -9
        mem = mon.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    mem["ru_maxrss_children_mb"] = after / 1024 if after > before else None   # the largest reaped descendant so far
    return {"rc": rc, "wall_s": time.time() - t0, **mem, "cmd": " ".join(cmd), "log": str(log)}


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def step_summary(step_s: list[float], tok_s: list[float]) -> dict:
    later = step_s[1:] or step_s
    later_tok = tok_s[1:] or tok_s
    return {"first_step_s": step_s[0] if step_s else None,
            "steady_step_s": sum(later) / len(later) if later else None,
            "step_s": step_s, "tokens_per_s_steps": tok_s,
            "first_tokens_per_s": tok_s[0] if tok_s else None,
            "steady_tokens_per_s": sum(later_tok) / len(later_tok) if later_tok else None}


def read_metrics(stage_dir: Path) -> list[dict]:
    f = stage_dir / "metrics.jsonl"
    return [json.loads(x) for x in f.read_text().splitlines() if x.strip()] if f.exists() else []


# ----------------------------------------------------------------------------------------------------------------
# TRL workers (run in their own process: python bench/peer_trl.py --worker trl_grpo|trl_distill --spec FILE)

def _threads(n: int):
    import torch

    torch.set_num_threads(n)


def _timed(cls, name: str):
    """A subclass of a TRL trainer that times its generation (``_generate_single_turn``) and reward calls, counts the
    completion tokens, and records each optimizer step's wall time."""
    class Timed(cls):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.bench = {"gen_s": [], "gen_tokens": [], "reward_s": [], "step_s": [], "prompt_lens": []}

        def _generate_single_turn(self, prompt_ids, *a, **kw):
            t = time.perf_counter()
            out = super()._generate_single_turn(prompt_ids, *a, **kw)
            self.bench["gen_s"].append(time.perf_counter() - t)
            comp = out[0] if isinstance(out, tuple) else out
            self.bench["gen_tokens"].append(int(sum(len(c) for c in comp)))
            self.bench["prompt_lens"].append([len(p) for p in prompt_ids])
            return out

        if hasattr(cls, "_calculate_rewards"):
            def _calculate_rewards(self, *a, **kw):
                t = time.perf_counter()
                out = super()._calculate_rewards(*a, **kw)
                self.bench["reward_s"].append(time.perf_counter() - t)
                return out

    Timed.__name__ = f"Timed{name}"
    return Timed


def _step_callback(trainer_ref: list):
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            trainer_ref[0].bench["step_s"].append(time.perf_counter() - self.t)

    return StepTimes()


def worker_trl_grpo(spec: dict) -> dict:
    _threads(spec["s"]["threads"])
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from rewards.base import score_batch

    t_load = time.time()
    s, rows = spec["s"], spec["rows"]
    tok = AutoTokenizer.from_pretrained(spec["model"])
    texts, lens = prompt_texts(tok, rows)
    retok = [len(x) for x in tok(text=texts)["input_ids"]]
    order = spec["order"]
    ds = Dataset.from_list([{"prompt": texts[i], "idx": i} for i in order])

    def math_reward(completions, idx, **kw):
        return [v.score for v in score_batch("math", list(completions), [rows[i] for i in idx], MODE)]

    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    ref: list = [None]
    trainer = _timed(GRPOTrainer, "GRPO")(model=model, reward_funcs=math_reward,
                                         args=GRPOConfig(**trl_grpo_args(s, spec["out_dir"])), train_dataset=ds,
                                         processing_class=tok, callbacks=[_step_callback(ref)])
    ref[0] = trainer
    load_s = time.time() - t_load
    t = time.time()
    trainer.train()
    b = trainer.bench
    rollout_s = [g + r for g, r in zip(b["gen_s"], b["reward_s"] or [0.0] * len(b["gen_s"]))]
    tok_s = [n / max(x, 1e-9) for n, x in zip(b["gen_tokens"], rollout_s)]
    rewards = [h.get("reward") for h in trainer.state.log_history if "reward" in h]
    return {"load_s": load_s, "train_s": time.time() - t, **step_summary(b["step_s"], tok_s),
            "gen_s": b["gen_s"], "reward_s": b["reward_s"], "gen_tokens": b["gen_tokens"],
            "response_length": [n / (s["prompts"] * s["group"]) for n in b["gen_tokens"]], "reward": rewards,
            "prompt_tokens_ours": [lens[i] for i in order[:s["prompts"]]],
            "prompt_tokens_trl": [retok[i] for i in order[:s["prompts"]]],
            "prompts_identical_ids": retok == lens}


def worker_trl_distill(spec: dict) -> dict:
    _threads(spec["s"]["threads"])
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DistillationConfig, DistillationTrainer

    t_load = time.time()
    s, rows = spec["s"], spec["rows"]
    tok = AutoTokenizer.from_pretrained(spec["model"])
    texts, lens = prompt_texts(tok, rows)
    retok = [len(x) for x in tok(text=texts)["input_ids"]]
    order = spec["order"]
    ds = Dataset.from_list([{"prompt": texts[i]} for i in order])
    student = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(spec["teacher"], dtype=torch.float32)
    ref: list = [None]
    trainer = _timed(DistillationTrainer, "Distill")(model=student, teacher_model=teacher,
                                                      args=DistillationConfig(**trl_distill_args(s, spec["out_dir"])),
                                                      train_dataset=ds, processing_class=tok,
                                                      callbacks=[_step_callback(ref)])
    ref[0] = trainer
    load_s = time.time() - t_load
    t = time.time()
    trainer.train()
    b = trainer.bench
    tok_s = [n / max(x, 1e-9) for n, x in zip(b["gen_tokens"], b["gen_s"])]
    losses = [h.get("loss") for h in trainer.state.log_history if "loss" in h]
    return {"load_s": load_s, "train_s": time.time() - t, **step_summary(b["step_s"], tok_s),
            "gen_s": b["gen_s"], "gen_tokens": b["gen_tokens"],
            "response_length": [n / s["prompts"] for n in b["gen_tokens"]], "loss": losses,
            "prompts_identical_ids": retok == lens}


WORKERS = {"trl_grpo": worker_trl_grpo, "trl_distill": worker_trl_distill}


# ----------------------------------------------------------------------------------------------------------------
# the run

def pipeline_cmd(recipe: Path, run_dir: Path, *stages: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "run", str(recipe), "--run-dir", str(run_dir), "--only", *stages]


def ours_result(run_dir: Path, stage: str, measured: dict) -> dict:
    m = read_metrics(run_dir / stage)
    step_s = [x["step_s"] for x in m]
    tok_s = [x["tokens_per_s"] for x in m]
    out = {**measured, **step_summary(step_s, tok_s),
           "response_length": [x.get("response_length", x.get("tokens", 0) / max(1, x.get("sequences", 1)))
                               for x in m]}
    if m and "rollout_s" in m[0]:
        out["rollout_s"] = [x["rollout_s"] for x in m]
        out["reward"] = [x.get("reward") for x in m]
    if m and "gen_s" in m[0]:
        out.update(gen_s=[x["gen_s"] for x in m], teacher_s=[x["teacher_s"] for x in m],
                   train_s=[x["train_s"] for x in m], tokens=[x.get("tokens") for x in m],
                   stage_peak_rss_mb=max(x.get("peak_rss_mb", 0) for x in m),
                   teacher_rss_gb=max(x.get("teacher_rss_gb", 0) or 0 for x in m))
    man = run_dir / stage / "manifest.json"
    if man.exists():
        out["manifest_status"] = json.loads(man.read_text()).get("status")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "peer_trl.md"))
    ap.add_argument("--run-dir", default="/tmp/peer_trl/run")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per side (1: the machine is shared)")
    ap.add_argument("--only", choices=["grpo", "distill", "all"], default="all")
    ap.add_argument("--fleet", action="store_true", help="also our GRPO stage with the vLLM fleet engine")
    ap.add_argument("--timeout", type=float, default=900, help="per measured subprocess")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        spec = json.loads(Path(a.spec).read_text())
        res = WORKERS[a.worker](spec)
        Path(spec["result"]).write_text(json.dumps(res, indent=1))
        return 0

    import yaml

    s = settings(steps=a.steps, prompts=a.prompts, group=a.group, max_new=a.max_new, threads=a.threads)
    run_dir = Path(a.run_dir).resolve()
    work = run_dir.parent
    work.mkdir(parents=True, exist_ok=True)
    recipe = our_recipe(yaml.safe_load(BASE_RECIPE.read_text()), s)
    recipe_path = work / "peer_trl.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}".rstrip(os.pathsep),
           "OMP_NUM_THREADS": str(s["threads"]),
           # Ray starts its workers at nice 15 by default: on a loaded machine our stage would then get a fraction of
           # the CPU that the TRL process (nice 0) gets. Both sides run at nice 0 (the monitor records it).
           "RAY_worker_niceness": os.environ.get("RAY_worker_niceness", "0")}
    res = {"settings": s, "uptime_before": uptime(), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
           "common": {k: list(v) for k, v in
                      common_view(recipe, trl_grpo_args(s, ""), trl_distill_args(s, "")).items()},
           "recipe": str(recipe_path)}
    import trl
    import transformers
    import torch
    res["versions"] = {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__}

    def log(msg):
        print(f"[peer_trl {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def save():
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str))
        out.write_text(markdown(res))

    rows = math_rows(recipe_path, s)
    model_dir = run_dir / "bootstrap" / "final"
    if not (model_dir / "config.json").exists():
        log("bootstrap: adopting the packaged SmolLM2-135M-Instruct (not measured)")
        r = subprocess.run(pipeline_cmd(recipe_path, run_dir, "bootstrap"), env=env, cwd=str(ROOT),
                           capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"bootstrap failed: {(r.stdout + r.stderr)[-2000:]}")

    def trl_side(worker: str, extra: dict) -> dict:
        spec = {"s": s, "rows": rows, "model": str(model_dir), "out_dir": str(work / f"{worker}_out"),
                "result": str(work / f"{worker}.json"), **extra}
        f = work / f"{worker}_spec.json"
        f.write_text(json.dumps(spec))
        Path(spec["result"]).unlink(missing_ok=True)
        m = run_measured([sys.executable, str(Path(__file__).resolve()), "--worker", worker, "--spec", str(f)],
                         work / f"{worker}.log", env, a.timeout)
        r = Path(spec["result"])
        return {**m, **(json.loads(r.read_text()) if r.exists() else {"error": "no result (see log)"})}

    if a.only in ("grpo", "all"):
        log("ours: GRPO (hf engine)")
        m = run_measured(pipeline_cmd(recipe_path, run_dir, GRPO_STAGE) + ["--force", GRPO_STAGE],
                         work / "ours_grpo.log", env, a.timeout)
        res["ours_grpo"] = ours_result(run_dir, GRPO_STAGE, m)
        save()
        log(f"ours GRPO: {summ(res['ours_grpo'])}")
        log("TRL: GRPOTrainer")
        res["trl_grpo"] = trl_side("trl_grpo", {"order": grpo_draws(rows, s)})
        save()
        log(f"TRL GRPO: {summ(res['trl_grpo'])}")
        if a.fleet:
            fr = our_recipe(yaml.safe_load(BASE_RECIPE.read_text()), s, engine="vllm")
            fp = work / "peer_trl_fleet.yaml"
            fp.write_text(yaml.safe_dump(fr, sort_keys=False))
            frun = work / "run_fleet"
            (frun).mkdir(exist_ok=True)
            log("ours: GRPO (vllm fleet engine)")
            m = run_measured(pipeline_cmd(fp, frun, GRPO_STAGE), work / "ours_grpo_fleet.log", env, a.timeout)
            res["ours_grpo_vllm"] = ours_result(frun, GRPO_STAGE, m)
            save()
    if a.only in ("distill", "all"):
        teacher = run_dir / GRPO_STAGE / "final"
        if not (teacher / "config.json").exists():
            raise SystemExit(f"no teacher at {teacher}: run --only grpo first")
        log("ours: distill (hf engine, one teacher)")
        m = run_measured(pipeline_cmd(recipe_path, run_dir, "distill") + ["--force", "distill"],
                         work / "ours_distill.log", env, a.timeout)
        res["ours_distill"] = ours_result(run_dir, "distill", m)
        save()
        log(f"ours distill: {summ(res['ours_distill'])}")
        log("TRL: DistillationTrainer")
        order = [i % len(rows) for i in range(s["steps"] * s["prompts"])]
        res["trl_distill"] = trl_side("trl_distill", {"order": order, "teacher": str(teacher)})
        log(f"TRL distill: {summ(res['trl_distill'])}")
    res["uptime_after"] = uptime()
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    save()
    print(markdown(res))
    return 0


def summ(r: dict) -> str:
    f = lambda v, p=1: "n/a" if v is None else f"{v:.{p}f}"  # noqa: E731
    return (f"rc {r.get('rc')} step {f(r.get('first_step_s'))} s first, {f(r.get('steady_step_s'))} s steady; "
            f"{f(r.get('steady_tokens_per_s'))} tok/s; peak RSS {f(r.get('peak_rss_process_mb'), 0)} MB process, "
            f"{f(r.get('peak_rss_tree_mb'), 0)} MB tree; wall {f(r.get('wall_s'))} s")


def markdown(res: dict) -> str:
    f = lambda v, p=1: "n/a" if v is None else f"{v:.{p}f}"  # noqa: E731
    s = res["settings"]
    lines = [f"# Beside TRL (SmolLM2-135M-Instruct, CPU, {s['threads']} torch threads)", "",
             f"{res.get('started')} .. {res.get('finished', '(running)')}; versions {res.get('versions')}", "",
             f"load before: `{res.get('uptime_before')}`  ", f"load after: `{res.get('uptime_after', '')}`", "",
             f"{s['steps']} steps, {s['prompts']} prompts/step, GRPO group {s['group']}, {s['max_new']} new tokens, "
             f"T={s['temperature']} top_p={s['top_p']} top_k={s['top_k']}, AdamW lr {s['grpo_lr']} (GRPO) / "
             f"{s['distill_lr']} (distill)", "",
             "| run | first step s | steady s/step | steady rollout tok/s | mean completion tokens "
             "| peak RSS process MB | peak RSS tree MB | wall s |", "|---|---|---|---|---|---|---|---|"]
    names = [("ours_grpo", "GRPO: ours (hf engine)"), ("trl_grpo", "GRPO: TRL GRPOTrainer"),
             ("ours_grpo_vllm", "GRPO: ours (vLLM fleet)"), ("ours_distill", "distill: ours (hf engine)"),
             ("trl_distill", "distill: TRL DistillationTrainer")]
    for k, name in names:
        r = res.get(k)
        if not r:
            continue
        rl = r.get("response_length") or []
        lines.append(f"| {name} | {f(r.get('first_step_s'))} | {f(r.get('steady_step_s'))} | "
                     f"{f(r.get('steady_tokens_per_s'))} | {f(sum(rl) / len(rl) if rl else None)} | "
                     f"{f(r.get('peak_rss_process_mb'), 0)} | {f(r.get('peak_rss_tree_mb'), 0)} | "
                     f"{f(r.get('wall_s'), 0)} |")
    lines += ["", "Per-step seconds:", ""]
    for k, name in names:
        if res.get(k):
            lines.append(f"- {name}: {[round(x, 2) for x in res[k].get('step_s', [])]} (rc {res[k].get('rc')})")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
