"""return_routed_experts only for MoE models: vLLM 0.32 refuses it for a dense model ("AuxOutput Connector only
supports MoE models"), and the fleet defaults it on. The engine resolves it from the model's config.json, counting
experts the way vLLM does."""
import json

import pytest
import transformers as T

from rollout.routes import config_num_experts, engine_routes

SMALL = dict(vocab_size=64, hidden_size=32, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=2)
CONFIGS = {   # name -> (config, experts)
    "qwen2_dense": (T.Qwen2Config(**SMALL, intermediate_size=32), 0),
    "qwen3_dense": (T.Qwen3Config(**SMALL, intermediate_size=32, head_dim=16), 0),
    "llama_dense": (T.LlamaConfig(**SMALL, intermediate_size=32), 0),
    "qwen3_moe": (T.Qwen3MoeConfig(**SMALL, moe_intermediate_size=16, num_experts=8, num_experts_per_tok=2), 8),
    "mixtral": (T.MixtralConfig(**SMALL, intermediate_size=16, num_local_experts=4, num_experts_per_tok=2), 4),
    "olmoe": (T.OlmoeConfig(**SMALL, intermediate_size=16, num_experts=16, num_experts_per_tok=2), 16),
    "deepseek_v3": (T.DeepseekV3Config(**SMALL, n_routed_experts=6, num_experts_per_tok=2, n_group=2, topk_group=1,
                                       kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
                                       v_head_dim=16), 6),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_experts_from_config_json(name, tmp_path):
    cfg, experts = CONFIGS[name]
    cfg.save_pretrained(tmp_path)                            # the config.json an engine is started from
    assert config_num_experts(json.loads((tmp_path / "config.json").read_text())) == experts
    assert engine_routes(True, tmp_path) is (experts > 0)    # the fleet's default on: off for dense models
    assert engine_routes(False, tmp_path) is False


@pytest.mark.parametrize("cfg, experts", [
    ({"text_config": {"num_experts": 64}, "vision_config": {}}, 64),                  # multimodal: the text model's
    ({"num_experts": None, "n_routed_experts": 32}, 32),
    ({"num_local_experts": [8, 8]}, 8),
    ({"block_configs": [{"block_type": "mamba"}, {"block_type": "moe", "n_routed_experts": 12}]}, 12),
    ({"num_experts": 0}, 0),
    ({}, 0),
])
def test_experts_table(cfg, experts):
    assert config_num_experts(cfg) == experts


def test_agrees_with_vllm_where_installed():
    pytest.importorskip("vllm.config")              # (imported first: the convertor module alone is circular)
    conv = pytest.importorskip("vllm.transformers_utils.model_arch_config_convertor")
    for name, (cfg, experts) in CONFIGS.items():
        got = conv.ModelArchConfigConvertorBase(cfg, cfg.get_text_config()).get_num_experts()
        assert (got > 0) == (experts > 0) and config_num_experts(cfg.to_dict()) == (got or 0), name


def test_unknown_model_folder_keeps_the_request(tmp_path):
    assert engine_routes(True, tmp_path / "not-there") is True     # no config to read: vLLM decides and says so
