"""Configuration: every mistake is one clear `path.to.key: problem` line and exit code 2."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from bridge.settings import ConfigError, load_settings, settings_from_dict
from tests.procs import run_cli

ROOT = Path(__file__).resolve().parent.parent


def base() -> dict[str, Any]:
    return {
        "admin": {"token": "t" * 12},
        "livechats": {
            "support": {
                "kind": "chatvisor",
                "api_url": "http://127.0.0.1:8090/rest/v1",
                "api_token": "api-token",
                "hook_token": "hook-token",
            }
        },
        "messengers": {
            "acme": {
                "name": "Support",
                "livechat": "support",
                "webhook": "http://127.0.0.1:8091/hook",
                "confirmation_code": "code",
            }
        },
    }


def problems(config: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(config)
    return info.value.problems


def test_example_config_is_valid() -> None:
    settings = load_settings(ROOT / "config.example.toml")
    assert settings.messengers["acme"].livechat == "support"


def test_unknown_livechat() -> None:
    config = base()
    config["messengers"]["acme"]["livechat"] = "sales"
    assert problems(config) == [
        "messengers.acme.livechat: unknown live chat 'sales' (known: support)"
    ]


def test_unknown_kind() -> None:
    config = base()
    config["livechats"]["support"]["kind"] = "zendesk"
    assert problems(config) == [
        "livechats.support.kind: unknown kind 'zendesk' (known: chatvisor, jivochat)"
    ]


def test_bad_urls() -> None:
    config = base()
    config["messengers"]["acme"]["webhook"] = "ftp://x/hook"
    config["livechats"]["support"]["api_url"] = "not a url"
    config["server"] = {"public_url": "127.0.0.1:8080"}
    found = problems(config)
    assert "messengers.acme.webhook: must be an absolute http:// or https:// URL" in found
    assert (
        "livechats.support.api_url: must be an absolute http:// or https:// URL (it contains white space)"
        in found
    )
    assert "server.public_url: must be an absolute http:// or https:// URL" in found


def test_duplicate_webhook_across_messengers() -> None:
    config = base()
    config["messengers"]["other"] = {**config["messengers"]["acme"], "name": "Other"}
    assert problems(config) == [
        "messengers.other.webhook: same webhook as messengers.acme"
        " (one messenger account can be connected to only one live chat)"
    ]


def test_several_messengers_per_livechat_are_fine() -> None:
    config = base()
    config["messengers"]["other"] = {
        **config["messengers"]["acme"],
        "webhook": "http://127.0.0.1:9/h",
    }
    assert set(settings_from_dict(config).messengers) == {"acme", "other"}


def test_missing_and_empty_tokens() -> None:
    config = base()
    del config["admin"]
    config["livechats"]["support"]["api_token"] = "  "
    del config["livechats"]["support"]["hook_token"]
    del config["messengers"]["acme"]["confirmation_code"]
    assert sorted(problems(config)) == [
        "admin: required key is missing",
        "livechats.support.api_token: must not be empty",
        "livechats.support.hook_token: required key is missing",
        "messengers.acme.confirmation_code: required key is missing",
    ]


def test_empty_confirmation_code_is_allowed() -> None:
    config = base()
    config["messengers"]["acme"]["confirmation_code"] = ""
    assert settings_from_dict(config).messengers["acme"].confirmation_code.get_secret_value() == ""


def test_unknown_keys_and_bad_values() -> None:
    config = base()
    config["server"] = {"prot": 1, "port": 70000}
    config["storage"] = {"synchronous": "sometimes"}
    found = problems(config)
    assert "server.prot: unknown key" in found
    assert "server.port: Input should be less than or equal to 65535" in found
    assert "storage.synchronous: Input should be 'normal' or 'full'" in found


def test_channel_ids_must_fit_in_a_url() -> None:
    config = base()
    config["messengers"]["Bad Id"] = config["messengers"].pop("acme")
    assert problems(config)[0].startswith("messengers.Bad Id: id must be")


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_SERVER__PORT", "9999")
    monkeypatch.setenv("BRIDGE_MESSENGERS__ACME__CONFIRMATION_CODE", "from-env")
    settings = settings_from_dict(base())
    assert settings.server.port == 9999
    assert settings.messengers["acme"].confirmation_code.get_secret_value() == "from-env"
    assert settings.messengers["acme"].name == "Support"


def test_cli_reports_problems_with_exit_code_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[admin]\ntoken = ""\n[messengers.acme]\nname = "x"\nlivechat = "nope"\n'
        'webhook = "http://h/x"\nconfirmation_code = ""\n'
    )
    result = run_cli("--config", str(bad), "check-config")
    assert result.returncode == 2
    # Shape problems come first; cross-checks (the unknown live chat) once the shape is right.
    assert result.stderr.splitlines() == ["admin.token: must not be empty"]

    broken = tmp_path / "broken.toml"
    broken.write_text("[server\nport = 1\n")
    result = run_cli("--config", str(broken), "check-config")
    assert result.returncode == 2 and "invalid TOML" in result.stderr and "line 1" in result.stderr

    result = run_cli("--config", str(tmp_path / "missing.toml"), "serve")
    assert result.returncode == 2 and "file not found" in result.stderr


def test_config_is_taken_before_or_after_the_command(tmp_path: Path) -> None:
    custom = tmp_path / "c.toml"
    custom.write_text((ROOT / "config.example.toml").read_text())
    for args in (
        ("--config", str(custom), "check-config"),
        ("check-config", "--config", str(custom)),
    ):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 0 and result.stdout.startswith(f"{custom}: OK"), args


def test_cli_config_resolution(tmp_path: Path) -> None:
    result = run_cli("check-config", cwd=ROOT)
    assert result.returncode == 0 and "config.example.toml: OK" in result.stdout
    custom = tmp_path / "c.toml"
    custom.write_text((ROOT / "config.example.toml").read_text())
    result = run_cli("check-config", env={"BRIDGE_CONFIG": str(custom)})
    assert result.returncode == 0 and str(custom) in result.stdout
    (tmp_path / "config.toml").write_text((ROOT / "config.example.toml").read_text())
    result = run_cli("check-config", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("config.toml: OK")


def test_an_environment_override_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_SERVER__PORT", "abc")
    monkeypatch.setenv("BRIDGE_MESSENGERS__NEWONE__WEBHOOK", "http://h/x")
    with pytest.raises(ConfigError) as info:
        settings_from_dict(base())
    assert info.value.problems == [
        "server.port: Input should be a valid integer, unable to parse string as an integer"
        " (set by BRIDGE_SERVER__PORT)",
        "messengers.newone.name: required key is missing"
        " (messengers.newone is made by BRIDGE_MESSENGERS__NEWONE__WEBHOOK)",
        "messengers.newone.livechat: required key is missing"
        " (messengers.newone is made by BRIDGE_MESSENGERS__NEWONE__WEBHOOK)",
        "messengers.newone.confirmation_code: required key is missing"
        " (messengers.newone is made by BRIDGE_MESSENGERS__NEWONE__WEBHOOK)",
    ]
    # A key missing from a section the file has is the file's problem, not the variable's.
    monkeypatch.delenv("BRIDGE_SERVER__PORT")
    monkeypatch.delenv("BRIDGE_MESSENGERS__NEWONE__WEBHOOK")
    monkeypatch.setenv("BRIDGE_MESSENGERS__ACME__WEBHOOK", "http://h/y")
    config = base()
    del config["messengers"]["acme"]["name"]
    with pytest.raises(ConfigError) as info:
        settings_from_dict(config)
    assert info.value.problems == ["messengers.acme.name: required key is missing"]


def test_a_storage_path_that_cannot_be_a_database_file(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    for path, expected in (
        (tmp_path, f"storage.path: {tmp_path} is a folder; name a file in it"),
        (a_file / "db.sqlite3", f"storage.path: {a_file} is a file, so"),
        (a_file / "sub" / "db.sqlite3", f"storage.path: {a_file} is a file, so"),
    ):
        config = base() | {"storage": {"path": str(path)}}
        (problem,) = problems(config)
        assert problem.startswith(expected), problem
    config = base() | {"storage": {"path": str(tmp_path / "new" / "db.sqlite3")}}
    assert settings_from_dict(config).storage.path.endswith("db.sqlite3")  # created at start


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in any folder")
def test_a_storage_folder_that_is_not_writable(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    config = base() | {"storage": {"path": str(locked / "db.sqlite3")}}
    assert problems(config) == [f"storage.path: the folder {locked} is not writable by this user"]


def test_check_config_warns_of_empty_codes_and_example_secrets(tmp_path: Path) -> None:
    result = run_cli("--config", str(ROOT / "config.example.toml"), "check-config")
    assert result.returncode == 0, result.stderr
    warnings = result.stderr.splitlines()
    assert "warning: admin.token: still the example's placeholder" in warnings[0]
    assert any(w.startswith("warning: livechats.sales.chat_api_url:") for w in warnings)
    assert "change-me-admin-token" not in result.stderr  # names the key, never the value
    result = run_cli(
        "--config",
        str(ROOT / "config.example.toml"),
        "check-config",
        env={"BRIDGE_MESSENGERS__ACME__CONFIRMATION_CODE": ""},
    )
    assert result.returncode == 0
    assert (
        "warning: messengers.acme.confirmation_code: empty, so any token is accepted"
        in result.stderr
    )


def test_version(tmp_path: Path) -> None:
    result = run_cli("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("messenger-bridge ")


def test_the_example_config_shows_every_setting() -> None:
    """Every key of every section appears in config.example.toml (commented out at least), so a
    new user finds each one there with its unit and default."""
    from bridge.settings import (
        ChatvisorSettings,
        JivochatSettings,
        MessengerSettings,
        Settings,
        SubscriptionSettings,
    )

    text = (ROOT / "config.example.toml").read_text()
    keys = {line.lstrip("# ").split(" ", 1)[0] for line in text.splitlines() if " = " in line}
    models: list[type[Any]] = [ChatvisorSettings, JivochatSettings, MessengerSettings]
    models.append(SubscriptionSettings)
    for name, field in Settings.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and hasattr(section, "model_fields"):
            models.append(section)
        else:
            assert name in ("livechats", "messengers", "subscriptions"), name
    missing = sorted(
        f"{model.__name__}.{key}"
        for model in models
        for key in model.model_fields
        if key not in keys
    )
    assert not missing, f"not in config.example.toml: {missing}"


def test_no_config_anywhere_says_where_it_looked(tmp_path: Path) -> None:
    result = run_cli("channels", cwd=tmp_path)
    assert result.returncode == 2
    assert "neither ./config.toml nor config.example.toml" in result.stderr
    assert "--config" in result.stderr and "BRIDGE_CONFIG" in result.stderr


def test_every_problem_comes_in_one_run() -> None:
    """An unknown key or live-chat kind no longer hides the field errors behind it."""
    config = base()
    config["extra"] = 1
    config["server"] = {"port": "abc"}
    config["livechats"]["lc"] = {"kind": "chatvisr"}
    config["messengers"]["other"] = {**config["messengers"]["acme"], "livechat": "lc"}
    found = problems(config)
    assert found[:2] == [
        "extra: unknown key",
        "livechats.lc.kind: unknown kind 'chatvisr' (known: chatvisor, jivochat)",
    ]
    assert any(p.startswith("server.port: ") for p in found), found
    config["server"] = {}
    del config["extra"]
    # With the shape right, the cross-checks speak too, except of the live chat left out.
    found = problems(config)
    assert found[0].startswith("livechats.lc.kind: unknown kind")
    assert any("same webhook as messengers.acme" in p for p in found), found
    assert not any("unknown live chat 'lc'" in p for p in found), found
