"""Tiny random MoE models for the Keep Routing tests (``test_routing.py``, ``test_routing_engine.py``): a config per
supported router family (``build``), with decisive random routers, and the checks both test modules share -- the
experts each MoE block's experts module actually receives (``ExpertsSeen``), ``assert_same_experts``,
``perturb_routers``, ``logprobs``. A plain module, not a conftest (a second conftest module would shadow
``tests/conftest.py`` for ``from conftest import ...``).
"""
import torch

from specialists import router_families as routing

V, H = 64, 32
COMMON = dict(vocab_size=V, hidden_size=H, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
              pad_token_id=0, bos_token_id=1, eos_token_id=2)

MLA = {**COMMON, "num_key_value_heads": 2}   # MLA models: a padded batch with fewer KV heads trips transformers' sdpa


def _cfg(name):
    import transformers as T
    if name == "qwen3_moe":
        return T.Qwen3MoeConfig(**COMMON, intermediate_size=32, moe_intermediate_size=16, num_hidden_layers=2,
                                num_experts=8, num_experts_per_tok=2, head_dim=16, norm_topk_prob=True)
    if name == "qwen3_moe_nonorm":
        return T.Qwen3MoeConfig(**COMMON, intermediate_size=32, moe_intermediate_size=16, num_hidden_layers=1,
                                num_experts=8, num_experts_per_tok=2, head_dim=16, norm_topk_prob=False)
    if name == "qwen2_moe":
        return T.Qwen2MoeConfig(**COMMON, intermediate_size=32, moe_intermediate_size=16, num_hidden_layers=2,
                                shared_expert_intermediate_size=16, num_experts=8, num_experts_per_tok=2)
    if name == "olmoe":
        return T.OlmoeConfig(**COMMON, intermediate_size=16, num_hidden_layers=2, num_experts=8,
                             num_experts_per_tok=2)
    if name == "mixtral":
        return T.MixtralConfig(**COMMON, intermediate_size=16, num_hidden_layers=2, num_local_experts=8,
                               num_experts_per_tok=2)
    if name == "deepseek_v2":
        return T.DeepseekV2Config(**MLA, intermediate_size=32, moe_intermediate_size=16, num_hidden_layers=2,
                                  n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2,
                                  topk_method="group_limited_greedy", first_k_dense_replace=0, q_lora_rank=None,
                                  routed_scaling_factor=2.0, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
                                  v_head_dim=16)
    if name == "deepseek_v3":   # layer 0 dense, layer 1-2 MoE with group-limited routing (4 groups, 2 kept)
        return T.DeepseekV3Config(**MLA, intermediate_size=32, moe_intermediate_size=16, num_hidden_layers=3,
                                  n_routed_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2,
                                  first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=8,
                                  qk_nope_head_dim=8, v_head_dim=16, routed_scaling_factor=2.5,
                                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    if name == "glm4_moe":
        return T.Glm4MoeConfig(**COMMON, intermediate_size=32, moe_intermediate_size=16, num_hidden_layers=2,
                               n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1,
                               first_k_dense_replace=0, head_dim=16, routed_scaling_factor=1.8)
    if name == "gpt_oss":
        return T.GptOssConfig(**COMMON, intermediate_size=16, num_hidden_layers=2, num_local_experts=8,
                              num_experts_per_tok=2, head_dim=16, sliding_window=8,
                              layer_types=["sliding_attention", "full_attention"])
    if name == "deepseek_v4":   # layer 0: hash router (token-id table), layers 1-2: sqrt-softplus top-k
        return T.DeepseekV4Config(**COMMON, head_dim=16, q_lora_rank=16,
                                  moe_intermediate_size=16, num_hidden_layers=3, n_routed_experts=8,
                                  num_experts_per_tok=2, mlp_layer_types=["hash_moe", "moe", "moe"],
                                  layer_types=["compressed_sparse_attention", "heavily_compressed_attention",
                                               "compressed_sparse_attention"],
                                  hc_mult=2, o_groups=2, o_lora_rank=8, index_n_heads=2, index_head_dim=8,
                                  index_topk=4, sliding_window=8, partial_rotary_factor=0.5)
    raise KeyError(name)


FAMILY_OF = {"qwen3_moe": "softmax_topk", "qwen2_moe": "softmax_topk", "olmoe": "softmax_topk",
             "mixtral": "mixtral", "deepseek_v2": "deepseek_v2", "deepseek_v3": "sigmoid_grouped",
             "glm4_moe": "sigmoid_grouped", "gpt_oss": "gpt_oss", "deepseek_v4": "deepseek_v4"}


def build(name, seed=0):
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_cfg(name), dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():                       # decisive, distinct routing (random init leaves routers near zero)
        for m in routing.routers(model):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.5)
            if hasattr(m, "e_score_correction_bias"):
                m.e_score_correction_bias.copy_(torch.randn(m.num_experts, generator=g) * 0.05)
            if hasattr(m, "tid2eid"):           # a real table: k distinct experts per token id
                m.tid2eid.copy_(torch.stack([torch.randperm(m.num_experts, generator=g)[:m.top_k]
                                             for _ in range(m.tid2eid.shape[0])]))
    return model


def inputs(B=3, T=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, V, (B, T), generator=g)


def logprobs(model, ids, attention_mask=None):
    logits = model(input_ids=ids, attention_mask=attention_mask).logits[:, :-1].float()
    return logits, torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


class ExpertsSeen:
    """The expert indices each MoE block's experts module actually receives (independent of RouteReplay)."""

    def __init__(self, model):
        self.blocks = [m.experts for m in model.modules() if "experts" in dict(m.named_children())]
        self.seen: list[torch.Tensor] = []
        self.handles = []

    def __enter__(self):
        def hook(module, args, kwargs):
            idx = args[1] if len(args) > 1 else kwargs.get("top_k_index", kwargs.get("router_indices"))
            self.seen.append(idx.detach().clone())
        self.handles = [b.register_forward_pre_hook(hook, with_kwargs=True) for b in self.blocks]
        return self.seen

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def assert_same_experts(seen, recorded):
    assert len(seen) == len(recorded)
    for s, r in zip(seen, recorded):
        assert torch.equal(s.sort(-1).values, r.sort(-1).values), "experts used differ from the recorded routes"


def perturb_routers(model, scale=1.0, seed=123):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in routing.routers(model):
            m.weight.add_(torch.randn(m.weight.shape, generator=g) * scale)
            if getattr(m, "bias", None) is not None:
                m.bias.add_(torch.randn(m.bias.shape, generator=g) * scale)


FAMILIES = list(FAMILY_OF)
