import pytest

from encoder_transformer.config import TransformerConfig


def test_defaults_are_valid_and_resolved():
    config = TransformerConfig()
    assert config.n_kv_heads == config.n_heads
    assert config.source_vocab_size == config.vocab_size
    assert config.head_dim == config.d_model // config.n_heads


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"d_model": 250}, "d_model=250 is not divisible by n_heads=4"),
        ({"n_kv_heads": 3}, "n_heads=4 is not divisible by n_kv_heads=3"),
        ({"n_kv_heads": 0}, "n_kv_heads=0 must be at least 1"),
        ({"positions": "alibi"}, "positions='alibi' is not one of"),
        ({"norm": "batchnorm"}, "norm='batchnorm'"),
        ({"activation": "tanh"}, "activation='tanh'"),
        ({"norm_placement": "middle"}, "norm_placement='middle'"),
        ({"dropout": 1.0}, r"dropout=1.0 must be in \[0, 1\)"),
        ({"attention_dropout": -0.1}, "attention_dropout=-0.1"),
        ({"decoder_layers": 0}, "decoder_layers=0 must be at least 1"),
        ({"d_model": True}, "d_model=True must be of type int"),
        ({"d_model": "256"}, "d_model='256' must be of type int"),
        ({"d_model": 24, "n_heads": 8, "positions": "rope"}, "even head_dim"),
        ({"source_vocab_size": 100}, "source_vocab_size=100 != vocab_size=8000"),
        ({"pad_id": 8000}, "pad_id=8000 is outside the vocabulary"),
    ],
)
def test_impossible_combinations_name_the_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        TransformerConfig(**overrides)


def test_separate_vocabularies_are_allowed_without_sharing():
    config = TransformerConfig(share_embeddings=False, source_vocab_size=100)
    assert (config.source_vocab_size, config.vocab_size) == (100, 8000)


def test_integer_for_float_field_is_converted():
    assert TransformerConfig(dropout=0).dropout == 0.0
    assert isinstance(TransformerConfig(dropout=0).dropout, float)


def test_from_dict_rejects_unknown_key_by_name():
    with pytest.raises(ValueError, match="unknown model config key 'n_layer'"):
        TransformerConfig.from_dict({"n_layer": 6})


def test_round_trip_through_dict():
    config = TransformerConfig(d_model=64, n_heads=8, n_kv_heads=2, positions="rope")
    assert TransformerConfig.from_dict(config.to_dict()) == config


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        TransformerConfig().d_model = 8
