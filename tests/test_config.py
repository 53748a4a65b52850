import json

import pytest
import torch

from ember.config import GenerationDefaults, ModelConfig, parse_dtype
from ember.errors import ConfigError
from ember.tools.random_checkpoint import qwen3_config


def test_qwen3_config_parses():
    cfg = ModelConfig.from_dict(qwen3_config())
    assert (cfg.hidden_size, cfg.num_key_value_heads, cfg.head_dim) == (1024, 8, 128)
    assert cfg.tie_word_embeddings and cfg.torch_dtype == torch.bfloat16 and cfg.rope_scaling is None


def test_yarn_and_rope_parameters_forms():
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    assert ModelConfig.from_dict(qwen3_config(rope_scaling=yarn)).rope_scaling["factor"] == 4.0
    v5 = qwen3_config(rope_scaling=None, rope_parameters={"rope_type": "default", "rope_theta": 5e5})
    v5.pop("rope_theta")
    cfg = ModelConfig.from_dict(v5)
    assert cfg.rope_theta == 5e5 and cfg.rope_scaling is None


@pytest.mark.parametrize(
    "override, message",
    [
        ({"architectures": ["LlamaForCausalLM"]}, "LlamaForCausalLM"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"hidden_size": "big"}, "hidden_size"),
        ({"rope_scaling": {"rope_type": "longrope", "factor": 2}}, "longrope"),
    ],
)
def test_bad_configs_name_the_problem(override, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict(qwen3_config(**override))


def test_unsupported_architecture_lists_supported():
    with pytest.raises(ConfigError, match="Qwen3ForCausalLM"):
        ModelConfig.from_dict(qwen3_config(architectures=["MistralForCausalLM"]))


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        ModelConfig.from_folder(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelConfig.from_folder(tmp_path)


def test_generation_defaults(tmp_path):
    assert GenerationDefaults.from_folder(tmp_path) == GenerationDefaults()
    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": 0.6, "top_k": 20, "eos_token_id": [1, 2]}))
    g = GenerationDefaults.from_folder(tmp_path)
    assert (g.temperature, g.top_k, g.top_p, g.eos_token_ids) == (0.6, 20, None, (1, 2))


def test_parse_dtype():
    assert parse_dtype("auto", torch.float16) == torch.float16
    assert parse_dtype("float32") == torch.float32
    with pytest.raises(ConfigError):
        parse_dtype("int4")
