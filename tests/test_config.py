"""pipeline.yaml validation: every mistake is one line naming the file, the key path and the fix."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from modeling.model_config import BUILTIN_TINY_CLIP, DEFAULT_MODEL_ID
from pipeline.errors import ConfigError
from stages.config import load_config

REPO = Path(__file__).resolve().parent.parent


def test_shipped_pipeline_is_the_real_model_with_mac_and_pi_hosts() -> None:
    config = load_config(REPO / "pipeline.yaml")
    assert config.model.id == DEFAULT_MODEL_ID
    assert config.hosts["mac"].kind == "ssh" and config.hosts["pi"].kind == "ssh"
    assert config.stages.export.opset == 14


def test_local_example_uses_the_builtin_tiny_clip() -> None:
    config = load_config(REPO / "examples" / "local.yaml")
    assert config.model.id == BUILTIN_TINY_CLIP
    assert config.stages.verify.images == (REPO / "data" / "images").resolve()
    assert config.artifacts == (REPO / "artifacts" / "local").resolve()


def test_misspelled_key_is_named_with_a_suggestion(write_config) -> None:
    path = write_config({"stages": {"verify": {"min_cosin": 0.9}}})
    expected = "pipeline.yaml: stages.verify.min_cosin: unknown key; did you mean 'min_cosine'?"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(path)


def test_misspelled_host_key_is_named(write_config) -> None:
    path = write_config({"hosts": {"mac": {"kind": "ssh", "adress": "mac.local"}}})
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "hosts.mac.adress: unknown key; did you mean 'address'?" in str(caught.value)


def test_misspelled_key_of_an_optional_section_is_named(write_config) -> None:
    path = write_config({"tagger": {"id": "builtin:tiny-wd-tagger", "treshold": 0.3}})
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "tagger.treshold: unknown key; did you mean 'threshold'?" in str(caught.value)


def test_out_of_range_value_states_the_bound_and_the_value(write_config) -> None:
    path = write_config({"stages": {"verify": {"min_cosine": 1.5}}})
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: stages.verify.min_cosine: must be <= 1 (got 1.5)"


def test_every_error_is_reported_one_per_line(write_config) -> None:
    path = write_config({"stages": {"export": {"opset": 3}, "verify": {"max_images": 0}}})
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    lines = str(caught.value).splitlines()
    assert len(lines) == 2
    assert all(line.startswith(f"{path}: stages.") for line in lines)


def test_ssh_host_needs_an_address(write_config) -> None:
    path = write_config({"hosts": {"pi": {"kind": "ssh", "user": "pi"}}})
    with pytest.raises(ConfigError, match=r"hosts\.pi: an ssh host needs 'address'"):
        load_config(path)


def test_yaml_syntax_error_gives_line_and_column(write_config) -> None:
    path = write_config("model:\n  id: [unclosed\n")
    with pytest.raises(ConfigError, match=r"line \d+, column \d+: not valid YAML"):
        load_config(path)


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_top_level_must_be_a_mapping(write_config) -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write_config("- a\n- b\n"))


def test_relative_paths_resolve_against_the_config_file(write_config, tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    config = load_config(write_config({"artifacts": "out", "stages": {"verify": {"images": "photos"}}}))
    assert config.artifacts == tmp_path / "out"
    assert config.stages.verify.images == tmp_path / "photos"


def test_existing_local_model_dir_is_resolved(write_config, tmp_path: Path) -> None:
    (tmp_path / "my-clip").mkdir()
    config = load_config(write_config({"model": {"id": "my-clip"}}))
    assert config.model.is_local_dir and config.model.id == str(tmp_path / "my-clip")


def test_hugging_face_id_stays_an_id(write_config) -> None:
    config = load_config(write_config({"model": {"id": "openai/clip-vit-base-patch32"}}))
    assert not config.model.is_local_dir


def test_unknown_builtin_model_is_rejected(write_config) -> None:
    with pytest.raises(ConfigError, match="unknown built-in model 'builtin:huge'; built-in: builtin:tiny-clip"):
        load_config(write_config({"model": {"id": "builtin:huge"}}))


def test_config_is_frozen(write_config) -> None:
    config = load_config(write_config({}))
    with pytest.raises(ValueError):
        config.stages.export.opset = 13  # type: ignore[misc]


def test_unknown_host_name_lists_the_known_ones(write_config) -> None:
    config = load_config(REPO / "pipeline.yaml")
    with pytest.raises(ConfigError, match=r"unknown host 'mack'.*local, mac, pi"):
        config.host("mack")


def test_one_device_for_fetch_smoke_test_serve_and_caption(write_config) -> None:
    """`invoke fetch --host pi` then `invoke smoke-test --host pi` once fetched again to the YAML's host:
    `--host` replaced only the targeted stage's setting. Now both name the one device."""
    from stages import ALL_STAGES

    config = load_config(write_config({"hosts": {"pi": {"address": "pi.local"}}, "device": {"host": "local"}}))
    moved = config.with_host("smoke-test", "pi")
    stages = {stage.name: stage for stage in ALL_STAGES}
    assert moved.device.host == "pi"
    assert stages["fetch"].host_name(moved) == stages["smoke-test"].host_name(moved) == "pi"
    assert stages["fetch"].params(moved) != stages["fetch"].params(config)  # another device: fetch again
    assert config.with_host("compile", "pi").device.host == "local"  # the build host is not the device


def test_a_device_set_per_stage_says_where_it_moved(write_config) -> None:
    with pytest.raises(ConfigError, match=r"stages\.fetch: host and models_dir: set in the `device:` section now"):
        load_config(write_config({"stages": {"fetch": {"host": "local", "models_dir": "m"}}}))
    with pytest.raises(ConfigError, match=r"device\.host 'pi' is not in hosts"):
        load_config(write_config({"device": {"host": "pi"}}))


def test_an_alias_bomb_is_refused_at_once_without_expanding(write_config) -> None:
    """Ten levels of ten aliases: once ~70 s into MemoryError when `invoke status` printed a param."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    path = write_config("\n".join(lines) + "\nmodel:\n  id: *a9\n")
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"more than 200,000 values once its aliases"):
        load_config(path)
    assert time.monotonic() - started < 20  # not the ~70 s of expanding it, even on a loaded machine


def test_deep_nesting_is_one_error_not_a_recursion_traceback(write_config) -> None:
    with pytest.raises(ConfigError, match="nested"):
        load_config(write_config("model: " + "[" * 100_000))


def test_a_key_given_twice_is_an_error_naming_both_lines(write_config) -> None:
    path = write_config("device:\n  host: local\n  models_dir: a\n  models_dir: b\n")
    with pytest.raises(ConfigError, match=r"line 4: key 'models_dir' is given twice \(first on line 3\)"):
        load_config(path)


@pytest.mark.parametrize(
    ("value", "message"),
    [("true", "valid integer"), ("'20'", "valid integer"), ("20.5", "valid integer")],
)
def test_a_value_of_another_type_is_not_converted(write_config, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"stages\.smoke-test\.runs: .*{message}"):
        load_config(write_config(f"stages:\n  smoke-test:\n    runs: {value}\n"))


@pytest.mark.parametrize("value", [".inf", "1e300", ".nan"])
def test_timeouts_have_an_upper_bound(write_config, value: str) -> None:
    """`command_timeout: .inf` once failed every SSH command with an OverflowError traceback."""
    path = write_config(f"hosts:\n  pi:\n    address: pi.local\n    command_timeout: {value}\n")
    with pytest.raises(ConfigError, match=r"hosts\.pi\.command_timeout"):
        load_config(path)


def test_an_empty_models_dir_is_refused_before_anything_is_uploaded(write_config) -> None:
    with pytest.raises(ConfigError, match=r"device\.models_dir"):
        load_config(write_config("device:\n  models_dir: ''\n"))


def test_a_config_that_is_not_utf8_is_one_error(write_config, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"model:\n  id: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not UTF-8 text \(byte 16\)"):
        load_config(path)
