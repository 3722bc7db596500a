"""``CHAT_CORS_ORIGINS``: validated origins, and its deprecated name."""

from __future__ import annotations

import logging

import pytest

from chat_storage.runtime.settings import Settings, SettingsError


def test_origins_are_stored_as_browsers_send_them() -> None:
    settings = Settings.from_env({"CHAT_CORS_ORIGINS":
                                  " https://App.example/ , http://127.0.0.1:8080,https://a:443"})
    assert settings.cors_origins == ("https://app.example", "http://127.0.0.1:8080",
                                     "https://a")
    assert Settings.from_env({"CHAT_CORS_ORIGINS": "*"}).cors_origins == ("*",)
    assert Settings.from_env({}).cors_origins == ()


@pytest.mark.parametrize("raw", ["https://a.example/app", "a.example", "ftp://a.example",
                                 "https://user@a.example", "https://a.example?x=1",
                                 "https://a.example:99999", "*,https://a.example"])
def test_a_bad_origin_is_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(SettingsError, match="CHAT_CORS_ORIGINS"):
        Settings.from_env({"CHAT_CORS_ORIGINS": raw})


def test_validate_checks_origins_set_in_code() -> None:
    with pytest.raises(SettingsError, match="CHAT_CORS_ORIGINS"):
        Settings(cors_origins=("https://a.example/path",)).validate()


def test_the_deprecated_name_still_works_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        settings = Settings.from_env({"CHAT_ALLOWED_ORIGINS": "https://a.example"})
    assert settings.cors_origins == ("https://a.example",)
    assert "CHAT_ALLOWED_ORIGINS is deprecated" in caplog.text
    with pytest.raises(SettingsError, match=r"CHAT_ALLOWED_ORIGINS=.*not an origin"):
        Settings.from_env({"CHAT_ALLOWED_ORIGINS": "https://a.example/x"})
    with pytest.raises(SettingsError, match="set CHAT_CORS_ORIGINS only"):
        Settings.from_env({"CHAT_ALLOWED_ORIGINS": "https://a.example",
                           "CHAT_CORS_ORIGINS": "https://a.example"})
