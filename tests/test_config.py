import pytest

from avb.config import Config, ConfigError


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"lr": -1e-4}, "lr"),
        ({"adv_lr": 0.0}, "adv_lr"),
        ({"hidden": 0}, "hidden"),
        ({"adv_hidden": 0}, "adv_hidden"),
        ({"objective": "gan"}, "objective"),
        ({"adaptive_contrast": True, "encoder": "blackbox"}, "adaptive_contrast"),
        ({"objective": "vae", "encoder": "blackbox"}, "encoder"),
        ({"beta1": 1.0}, "beta1"),
        ({"adversary_loss": "wasserstein"}, "adversary_loss"),
        ({"batch_size": "512"}, "batch_size"),
        ({"dataset": "cifar"}, "dataset"),
        ({"basis_hidden": 0}, "basis_hidden"),
        ({"basis_depth": 0}, "basis_depth"),
        ({"basis_activation": "relu"}, "basis_activation"),
        ({"split_seed": -1}, "split_seed"),
        ({"encoder": "basis", "batch_size": 1}, "batch_size"),
    ],
)
def test_invalid_values_name_the_field(changes, field):
    with pytest.raises(ConfigError) as err:
        Config(**changes)
    assert str(err.value).startswith(field) or f"{field}=" in str(err.value)


def test_unknown_objective_lists_allowed_values():
    with pytest.raises(ConfigError, match="allowed: avb, vae"):
        Config(objective="gan")


def test_unknown_field_is_rejected():
    with pytest.raises(ConfigError, match="unknown config field.*learning_rate"):
        Config.from_dict({"learning_rate": 1e-3})


def test_round_trip_and_int_to_float():
    cfg = Config(lr=1, adaptive_contrast=True, encoder="basis")
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_values_written_as_text_parse_back():
    from avb.config import parse_value

    assert [parse_value(v) for v in ("64", "1e-05", "True", "false", "blackbox", "/data/celeba")] == [
        64, 1e-05, True, False, "blackbox", "/data/celeba"]
