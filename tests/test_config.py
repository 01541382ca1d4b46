"""Tests of :mod:`kdistill.core.config`: TOML round trips, dotted overrides, override
parsing and the error messages of bad configs."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdistill.core.config import (
    DTYPES,
    INITS,
    METHODS,
    PREPROCESS,
    ComponentSpec,
    DistillConfig,
    parse_override,
)
from kdistill.errors import ConfigError

FIELD_NAMES = [f.name for f in attrs.fields(DistillConfig)]


def nontrivial_config() -> DistillConfig:
    return DistillConfig(
        method="label-solve",
        dataset="mnist",
        data_dir="../shared/data/mnist",
        preprocess="none",
        backend="torch",
        kernel={"name": "fc", "kind": "nngp", "depth": 3, "sw2": 1.5, "sb2": 0.0},
        solver="exact",
        loss={"name": "platt", "init_log_tau": -0.25},
        eval_kernel={"name": "rbf", "gamma": 0.125},
        ipc=7,
        steps=0,
        lr=3.5e-4,
        optimizer="sgd",
        target_batch=123,
        ridge=0.0,
        learn_labels=True,
        init="noise",
        dtype="float64",
        seed=12345,
        eval_every=9,
        eval_test_size=2000,
    )


# ------------------------------------------------------------------ TOML round trip


def test_defaults_round_trip_and_match_documented_values():
    cfg = DistillConfig()
    text = cfg.to_toml()
    back = DistillConfig.from_toml(text)
    assert back == cfg
    # the documented defaults, as written to TOML
    data = tomllib.loads(text)
    assert data["method"] == "kip" and data["dataset"] == "digits"
    assert data["kernel"] == {"name": "fc", "kind": "ntk", "depth": 1}
    assert data["solver"] == {"name": "cholesky"} and data["loss"] == {"name": "mse"}
    assert data["ipc"] == 10 and data["steps"] == 200 and data["ridge"] == 1e-6
    # None-valued fields are omitted, not written as empty strings
    assert "data_dir" not in data and "eval_kernel" not in data and "eval_test_size" not in data
    assert back.data_dir is None and back.eval_kernel is None and back.eval_test_size is None


def test_nontrivial_config_round_trips_exactly(tmp_path):
    cfg = nontrivial_config()
    back = DistillConfig.from_toml(cfg.to_toml())
    assert back == cfg
    assert back.eval_kernel == ComponentSpec(name="rbf", params={"gamma": 0.125})
    assert back.kernel.params == {"kind": "nngp", "depth": 3, "sw2": 1.5, "sb2": 0.0}
    assert type(back.kernel.params["depth"]) is int and type(back.lr) is float
    # through a file as well, and via the dict form
    path = tmp_path / "run.toml"
    path.write_text(cfg.to_toml())
    # a file's relative data_dir is relative to the file's directory (made absolute)
    assert DistillConfig.from_file(path) == attrs.evolve(cfg, data_dir=str(tmp_path.parent / "shared/data/mnist"))
    assert DistillConfig.from_dict(cfg.to_dict()) == cfg


def test_component_spec_forms_are_equivalent():
    by_name = DistillConfig(kernel="rbf")
    by_table = DistillConfig(kernel={"name": "rbf"})
    by_spec = DistillConfig(kernel=ComponentSpec(name="rbf"))
    assert by_name == by_table == by_spec
    assert by_name.kernel.params == {}
    # eval_kernel "" and None both mean "use the training kernel"
    assert DistillConfig(eval_kernel="").eval_kernel is None


_floats = st.floats(min_value=1e-12, max_value=1e6, allow_nan=False, allow_infinity=False)
_param_names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).filter(lambda s: s != "name")
_param_values = st.one_of(
    st.integers(-(2**31), 2**31),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.text(max_size=12),
)
_specs = st.builds(
    lambda name, params: {"name": name, **params},
    st.sampled_from(["fc", "rbf", "laplace", "my-kernel"]),
    st.dictionaries(_param_names, _param_values, max_size=4),
)

_valid_fields = st.fixed_dictionaries(
    {
        "method": st.sampled_from(METHODS),
        "dataset": st.sampled_from(["digits", "mnist", "cifar10"]),
        "preprocess": st.sampled_from(PREPROCESS),
        "backend": st.sampled_from(["jax", "torch"]),
        "kernel": _specs,
        "solver": st.sampled_from(["cholesky", "exact"]),
        "loss": st.one_of(st.just("mse"), st.builds(lambda t: {"name": "platt", "init_log_tau": t}, _floats)),
        "ipc": st.integers(1, 10_000),
        "steps": st.integers(0, 10**7),
        "lr": _floats,
        "optimizer": st.sampled_from(["adam", "sgd"]),
        "target_batch": st.integers(1, 10**6),
        "ridge": st.one_of(st.just(0.0), _floats),
        "learn_labels": st.booleans(),
        "init": st.sampled_from(INITS),
        "dtype": st.sampled_from(DTYPES),
        "seed": st.integers(0, 2**32),
        "eval_every": st.integers(0, 1000),
    },
    optional={
        "data_dir": st.text(max_size=30),
        "eval_kernel": _specs,
        "eval_test_size": st.integers(1, 10**5),
    },
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_valid_fields)
def test_toml_round_trip_property(fields):
    cfg = DistillConfig(**fields)
    text = cfg.to_toml()
    back = DistillConfig.from_toml(text)
    assert back == cfg
    assert back.to_toml() == text  # and the text is a fixed point
    for name in ("ipc", "steps", "seed", "target_batch", "eval_every"):
        assert type(getattr(back, name)) is int


# ------------------------------------------------------------------ overrides


def test_override_dotted_component_param():
    base = DistillConfig()
    cfg = base.with_overrides({"kernel.depth": 2})
    assert cfg.kernel == ComponentSpec(name="fc", params={"kind": "ntk", "depth": 2})
    assert base.kernel.params == {"kind": "ntk", "depth": 1}  # the original is untouched
    # the list-of-strings form is the same thing, parsed as TOML values
    assert base.with_overrides(["kernel.depth=2"]) == cfg
    # other fields keep their values
    assert attrs.evolve(cfg, kernel=base.kernel) == base


def test_override_top_level_fields():
    cfg = DistillConfig().with_overrides(["ipc=3", "lr=0.5", "learn_labels=true", "dataset=mnist",
                                          'data_dir="../shared/data/mnist"'])
    assert (cfg.ipc, cfg.lr, cfg.learn_labels, cfg.dataset) == (3, 0.5, True, "mnist")
    assert cfg.data_dir == "../shared/data/mnist"


def test_override_kernel_name_switch_resets_params():
    base = DistillConfig().with_overrides({"kernel.depth": 3})
    switched = base.with_overrides({"kernel.name": "rbf"})
    assert switched.kernel == ComponentSpec(name="rbf", params={})
    # switching and setting a parameter of the new kernel in one go (order matters)
    with_gamma = base.with_overrides(["kernel.name=rbf", "kernel.gamma=0.25"])
    assert with_gamma.kernel == ComponentSpec(name="rbf", params={"gamma": 0.25})
    # "switching" to the same name keeps the parameters
    same = base.with_overrides({"kernel.name": "fc"})
    assert same.kernel == base.kernel
    # the whole table can be replaced too
    table = base.with_overrides({"kernel": {"name": "rbf", "gamma": 2.0}})
    assert table.kernel == ComponentSpec(name="rbf", params={"gamma": 2.0})


def test_override_eval_kernel_starts_as_copy_of_training_kernel():
    base = DistillConfig().with_overrides({"kernel.kind": "nngp"})
    assert base.eval_kernel is None
    cfg = base.with_overrides({"eval_kernel.depth": 2})
    assert cfg.eval_kernel == ComponentSpec(name="fc", params={"kind": "nngp", "depth": 2})
    assert cfg.kernel == ComponentSpec(name="fc", params={"kind": "nngp", "depth": 1})  # untouched
    # an earlier override of the training kernel is what gets copied
    both = DistillConfig().with_overrides(["kernel.depth=3", "eval_kernel.kind=nngp"])
    assert both.kernel.params == {"kind": "ntk", "depth": 3}
    assert both.eval_kernel.params == {"kind": "nngp", "depth": 3}
    # a different eval kernel name starts from that kernel's defaults
    rbf = base.with_overrides({"eval_kernel.name": "rbf"})
    assert rbf.eval_kernel == ComponentSpec(name="rbf", params={})
    # and it round-trips
    assert DistillConfig.from_toml(cfg.to_toml()) == cfg


def test_override_on_non_table_is_an_error():
    with pytest.raises(ConfigError) as info:
        DistillConfig().with_overrides({"ipc.value": 2})
    assert "'ipc' is not a component table" in str(info.value)
    assert "ipc.value" in str(info.value)


def test_override_values_are_validated():
    with pytest.raises(ConfigError, match="ipc must be an integer >= 1, got 0"):
        DistillConfig().with_overrides(["ipc=0"])
    with pytest.raises(ConfigError, match="lr must be a finite number > 0"):
        DistillConfig().with_overrides(["lr=inf"])


# ------------------------------------------------------------------ parse_override


@pytest.mark.parametrize(
    "text, key, value",
    [
        ("ipc=3", "ipc", 3),
        ("seed=-1", "seed", -1),
        ("steps=1_000", "steps", 1000),
        ("kernel.depth=2", "kernel.depth", 2),
        ("lr=0.5", "lr", 0.5),
        ("ridge=1e-4", "ridge", 1e-4),
        ("learn_labels=true", "learn_labels", True),
        ("learn_labels=false", "learn_labels", False),
        ("dataset=mnist", "dataset", "mnist"),
        ("kernel.name=rbf", "kernel.name", "rbf"),
        ("data_dir=../shared/data/mnist", "data_dir", "../shared/data/mnist"),
        ('data_dir="../shared/data/mnist"', "data_dir", "../shared/data/mnist"),
        ("dataset='digits'", "dataset", "digits"),
        ('name="123"', "name", "123"),  # quoting keeps digits a string
        ('name="true"', "name", "true"),
        ("  ipc =  4  ", "ipc", 4),  # whitespace around key and value is ignored
        ("expr=a=b", "expr", "a=b"),  # only the first '=' separates
        ("word=01", "word", "01"),  # not valid TOML (leading zero): a bare string
        ("empty=", "empty", ""),
    ],
)
def test_parse_override_types(text, key, value):
    k, v = parse_override(text)
    assert k == key
    assert v == value and type(v) is type(value)


@pytest.mark.parametrize("text", ["ipc", "=3", "  =x", ""])
def test_parse_override_rejects_malformed(text):
    with pytest.raises(ConfigError) as info:
        parse_override(text)
    assert "key=value" in str(info.value)


# ------------------------------------------------------------------ bad input


def test_unknown_keys_list_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        DistillConfig.from_dict({"ipcs": 2, "ipc": 1, "zeta": 0})
    msg = str(info.value)
    assert "ipcs" in msg and "zeta" in msg
    assert "valid keys" in msg
    for name in FIELD_NAMES:
        assert name in msg
    # the same through TOML text and through overrides
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) stepz; valid keys: method, "):
        DistillConfig.from_toml("stepz = 3\n")
    with pytest.raises(ConfigError, match="unknown config key"):
        DistillConfig().with_overrides(["target-batch=10"])


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"ridge": -1e-3}, "ridge must be a finite number >= 0, got -0.001"),
        ({"ridge": float("nan")}, "ridge must be a finite number >= 0"),
        ({"lr": 0.0}, "lr must be a finite number > 0, got 0.0"),
        ({"lr": -0.1}, "lr must be a finite number > 0, got -0.1"),
        ({"lr": "0.1"}, "lr must be a finite number > 0, got '0.1'"),
        ({"ipc": 0}, "ipc must be an integer >= 1, got 0"),
        ({"ipc": 1.5}, "ipc must be an integer >= 1, got 1.5"),
        ({"ipc": True}, "ipc must be an integer >= 1, got True"),
        ({"steps": -1}, "steps must be an integer >= 0, got -1"),
        ({"target_batch": 0}, "target_batch must be an integer >= 1"),
        ({"seed": -3}, "seed must be an integer >= 0"),
        ({"method": ""}, "method must be a non-empty name, got ''"),
        ({"callbacks": 3}, "callbacks must be a list of names or tables with 'name', got 3"),
        ({"init": "zeros"}, "init must be one of real, noise; got 'zeros'"),
        ({"preprocess": "pca"}, "preprocess must be one of standardize, none, zca; got 'pca'"),
        ({"optimizer": ["adam"]}, "a component is a name or a table with 'name', got ['adam']"),
        ({"dtype": "float16"}, "dtype must be one of float32, float64"),
        ({"kernel": 3}, "a component is a name or a table with 'name', got 3"),
        ({"kernel": {"depth": 2}}, "needs a 'name' key"),
    ],
)
def test_bad_values_raise_config_error(fields, expected):
    with pytest.raises(ConfigError) as info:
        DistillConfig.from_dict(fields)
    assert expected in str(info.value)


def test_bad_value_in_toml_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('method = "kip"\nridge = -1.0\n')
    with pytest.raises(ConfigError, match="ridge must be a finite number >= 0, got -1.0"):
        DistillConfig.from_file(path)


@pytest.mark.parametrize(
    "text",
    [
        "ipc = \n",  # missing value
        "[kernel\nname = 'fc'\n",  # unclosed table header
        "ipc = 1\nipc = 2\n",  # duplicate key
        'dataset = "digits\n',  # unterminated string
    ],
)
def test_malformed_toml(text, tmp_path):
    with pytest.raises(ConfigError) as info:
        DistillConfig.from_toml(text)
    assert str(info.value).startswith("malformed TOML config:")
    assert "line" in str(info.value)  # tomllib's position is passed on
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="malformed TOML config"):
        DistillConfig.from_file(path)


def test_missing_config_file(tmp_path):
    path = tmp_path / "nope" / "run.toml"
    with pytest.raises(ConfigError) as info:
        DistillConfig.from_file(path)
    assert str(path) in str(info.value) and "does not exist" in str(info.value)
    # a directory is not a config file either
    with pytest.raises(ConfigError, match="does not exist"):
        DistillConfig.from_file(tmp_path)


def test_config_error_is_value_error():
    # callers that only know ValueError still catch config problems
    with pytest.raises(ValueError):
        DistillConfig(ipc=-1)
    assert math.isclose(DistillConfig(lr=1).lr, 1.0)


# ---------------------------------------------------- component named by flag (issue 15)


def test_component_name_keeps_the_configs_parameters_when_it_is_the_same_component():
    base = DistillConfig.from_dict({"kernel": {"name": "fc", "depth": 3, "kind": "nngp"},
                                    "solver": {"name": "cholesky"}})
    notices: list[str] = []
    same = base.with_overrides({"kernel": "fc", "solver": "cholesky"}, notices)
    assert same.kernel == ComponentSpec(name="fc", params={"depth": 3, "kind": "nngp"})  # not depth 1
    assert notices == []
    other = base.with_overrides({"kernel": "rbf"}, notices)
    assert other.kernel == ComponentSpec(name="rbf", params={})
    assert len(notices) == 1
    assert "kernel 'rbf' replaces the configured kernel 'fc'" in notices[0]
    assert "depth=3, kind='nngp'" in notices[0] and "-s kernel.PARAM=VALUE" in notices[0]
    # an unset eval kernel means the training kernel: naming it keeps its parameters
    assert base.with_overrides({"eval_kernel": "fc"}).eval_kernel == base.kernel
    # -s kernel.name=... says so too
    notices.clear()
    base.with_overrides(["kernel.name=rbf"], notices)
    assert len(notices) == 1 and "drops its settings (depth=3, kind='nngp')" in notices[0]


# ---------------------------------------------------- files and values (issue 15, §5)


def test_non_utf8_config_file_is_a_config_error(tmp_path):
    from kdistill.api import make_config

    path = tmp_path / "latin1.toml"
    path.write_bytes("ipc = 1\n# caf\xe9\n".encode("latin-1"))
    for load in (DistillConfig.from_file, make_config):
        with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 0xe9 at offset 13\).*re-save it as UTF-8"):
            load(path)
        with pytest.raises(ConfigError, match="is not UTF-8"):
            load(str(path))


def test_over_long_paths_are_config_errors(tmp_path):
    long_name = tmp_path / ("c" * 300 + ".toml")
    with pytest.raises(ConfigError, match=r"has a name of 305 bytes .*use a shorter path"):
        DistillConfig.from_file(long_name)
    with pytest.raises(ConfigError, match=r"data_dir .*has a name of 300 bytes"):
        DistillConfig(dataset="mnist", data_dir=str(tmp_path / ("d" * 300)))
    deep = "/".join(["d" * 200] * 25)  # every name fits, the whole path does not
    with pytest.raises(ConfigError, match=r"data_dir .* bytes long as an absolute path; at most"):
        DistillConfig(dataset="mnist", data_dir=deep)
    assert DistillConfig(data_dir=str(tmp_path / ("d" * 200))).data_dir.endswith("d" * 200)


def test_numpy_numbers_are_accepted_and_shown_as_written():
    import numpy as np

    cfg = DistillConfig(ipc=np.int64(2), lr=np.float32(0.5), seed=np.int32(3))
    assert (cfg.ipc, cfg.seed) == (2, 3) and type(cfg.ipc) is int
    assert DistillConfig.from_toml(cfg.to_toml()) == cfg  # TOML-serializable
    with pytest.raises(ConfigError) as info:
        DistillConfig(ipc=np.int64(0))
    assert str(info.value) == "ipc must be an integer >= 1, got 0"
    with pytest.raises(ConfigError, match=r"got -1\.0$"):
        DistillConfig(lr=np.float64(-1))


@pytest.mark.parametrize("value, shown", [("abc", "'abc'"), ([1], "[1]"), (0, "0"), (1.5, "1.5")])
def test_test_size_override_must_be_a_positive_integer(value, shown):
    with pytest.raises(ConfigError) as info:
        DistillConfig().with_overrides({"test_size": value})
    assert str(info.value) == f"test_size must be an integer >= 1, got {shown}"


def test_config_file_data_dir_is_relative_to_the_file(tmp_path, monkeypatch):
    """A relative data_dir in a TOML file is resolved against the file's directory; an
    absolute one is kept; the repository's configs find ../shared/data from any cwd."""
    (tmp_path / "conf").mkdir()
    rel, absolute = tmp_path / "conf" / "rel.toml", tmp_path / "conf" / "abs.toml"
    rel.write_text('dataset = "mnist"\ndata_dir = "../data/mnist"\n')
    absolute.write_text(f'dataset = "mnist"\ndata_dir = "{tmp_path / "elsewhere"}"\n')
    for cwd in (tmp_path, tmp_path / "conf"):
        monkeypatch.chdir(cwd)
        assert DistillConfig.from_file(rel).data_dir == str(tmp_path / "data" / "mnist")
        assert DistillConfig.from_file(absolute).data_dir == str(tmp_path / "elsewhere")
        assert DistillConfig.from_toml(rel.read_text()).data_dir == "../data/mnist"  # text: as given
    repo = Path(__file__).resolve().parents[1]
    for conf in sorted((repo / "configs").glob("*.toml")):
        data_dir = Path(DistillConfig.from_file(conf).data_dir)
        assert data_dir.parent == repo.parent / "shared" / "data", conf.name
