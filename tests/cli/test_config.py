"""Config layering (flag > env > file > default) and one-line errors for bad settings."""

import pytest

from llmsim.cli.config import ConfigError, resolve_config


def write(tmp_path, text, name="llmsim.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_defaults():
    cfg = resolve_config({}, env={})
    assert (cfg.host, cfg.port, cfg.generator, cfg.target_tokens, cfg.seed) == ("127.0.0.1", 8080, "lorem", None, None)


def test_precedence_flag_env_file_default(tmp_path):
    path = write(tmp_path, "port: 9001\nseed: 3\ngenerator: echo\ntarget_tokens: 50\n")
    env = {"LLMSIM_PORT": "9002", "LLMSIM_SEED": "4"}
    cfg = resolve_config({"config": path, "port": "9003"}, env=env)
    assert cfg.port == 9003          # flag beats env and file
    assert cfg.seed == 4             # env beats file
    assert cfg.generator == "echo"   # file beats default
    assert cfg.target_tokens == 50
    assert cfg.host == "127.0.0.1"   # default


def test_config_path_from_env_and_flag_not_given_keeps_file_value(tmp_path):
    path = write(tmp_path, "latency_profile: fast\nprofiles_dir: /tmp\n")
    cfg = resolve_config({}, env={"LLMSIM_CONFIG": path})
    assert cfg.latency_profile == "fast" and cfg.profiles_dir == "/tmp"


def test_models_section(tmp_path):
    path = write(tmp_path, "models: {allow_unknown: true, default_profile: fast}\n")
    cfg = resolve_config({"config": path}, env={})
    assert cfg.allow_unknown_models and cfg.default_profile == "fast"


@pytest.mark.parametrize("text,key,reason", [
    ("port: eighty\n", "port", "whole number"),
    ("port: 70000\n", "port", "between 0 and 65535"),
    ("target_tokens: 0\n", "target_tokens", "between 1 and 10000000"),
    ("bogus: 1\n", "bogus", "unknown setting"),
    ("models: {allow_unknown: maybe}\n", "models.allow_unknown", "true or false"),
    ("models: {colour: red}\n", "models.colour", "unknown setting"),
    ("port: [1\n", "line", "invalid YAML"),
    ("- a\n- b\n", "(top level)", "mapping"),
    ("port: .inf\n", "port", "whole number"),
    ("target_tokens: .inf\n", "target_tokens", "whole number"),
    ("target_tokens: 100000000000000000000000\n", "target_tokens", "between 1 and 10000000"),
    ("admin_token: [my-admin-s3cret]\n", "admin_token", "got a list (not shown: it may be a secret)"),
    ("admin_token: 987654321\n", "admin_token", "(not shown: it may be a secret)"),
])
def test_bad_file_values_name_file_key_reason(tmp_path, text, key, reason):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        resolve_config({"config": path}, env={})
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(path + ": ") and key in msg and reason in msg


def test_bad_env_and_flag_values_name_their_source():
    with pytest.raises(ConfigError, match=r"^LLMSIM_PORT: LLMSIM_PORT: must be a whole number"):
        resolve_config({}, env={"LLMSIM_PORT": "x"})
    with pytest.raises(ConfigError, match=r"^command line: --seed: must be a whole number"):
        resolve_config({"seed": "abc"}, env={})


def test_secrets_are_never_echoed_in_config_errors(tmp_path):
    for text in ("admin_token: [my-admin-s3cret]\n", "admin_token: 987654321\n"):
        with pytest.raises(ConfigError) as e:
            resolve_config({"config": write(tmp_path, text)}, env={})
        assert "s3cret" not in str(e.value) and "987654321" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^LLMSIM_ADMIN_TOKEN: LLMSIM_ADMIN_TOKEN: must be a non-empty string, got a "
                                          r"blank string"):
        resolve_config({}, env={"LLMSIM_ADMIN_TOKEN": " "})


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfeport: 1\n")
    with pytest.raises(ConfigError, match=r"binary\.yaml: file: not UTF-8 text \(byte 0xff at offset 0\)$"):
        resolve_config({"config": str(path)}, env={})


def test_error_rates_over_one_are_named_at_the_flag_or_variable_that_set_them(tmp_path):
    with pytest.raises(ConfigError, match=r"^command line: --error-rate: the rates add up to 1.4 \(rate_limit=0.7, "
                                          r"server_error=0.7\)"):
        resolve_config({"error_rate": ["rate_limit=0.7", "server_error=0.7"]}, env={})
    with pytest.raises(ConfigError, match=r"^LLMSIM_ERROR_RATE: LLMSIM_ERROR_RATE: the rates add up to 1.4"):
        resolve_config({}, env={"LLMSIM_ERROR_RATE": "rate_limit=0.7,server_error=0.7"})
    path = write(tmp_path, "errors: {rate_limit: 0.5}\n")
    with pytest.raises(ConfigError, match=r"^command line: --error-rate: the rates add up to 1.2 .*with .*llmsim.yaml's "
                                          r"errors section"):
        resolve_config({"config": path, "error_rate": ["server_error=0.7"]}, env={})
    ok = resolve_config({"config": path, "error_rate": ["server_error=0.3"]}, env={})
    assert ok.sections["errors"] == {"rate_limit": 0.5, "server_error": 0.3}


def test_missing_config_file():
    with pytest.raises(ConfigError, match=r"nope\.yaml: file: cannot read"):
        resolve_config({"config": "nope.yaml"}, env={})
