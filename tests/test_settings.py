from lsp_server.settings import Settings, apply_settings, settings_as_json


def test_defaults_round_trip_through_json():
    settings = Settings()
    update = apply_settings(settings, settings_as_json(settings))
    assert update.settings == settings and not update.errors and not update.changed


def test_valid_values_apply_and_report_changes():
    update = apply_settings(Settings(), {"swiftguard": {"maxNewTokens": 32, "dtype": "float32"}})
    assert update.settings.max_new_tokens == 32
    assert update.settings.dtype == "float32"
    assert update.changed == {"max_new_tokens", "dtype"}
    assert not update.errors


def test_invalid_value_keeps_previous_and_others_still_apply():
    current = Settings(max_new_tokens=64)
    update = apply_settings(current, {"maxNewTokens": "lots", "enable": False, "device": "gpu9"})
    assert update.settings.max_new_tokens == 64
    assert update.settings.device == "auto"
    assert update.settings.enable is False
    assert len(update.errors) == 2
    assert any("maxNewTokens" in e and "keeping 64" in e for e in update.errors)


def test_unknown_key_is_reported():
    update = apply_settings(Settings(), {"maxTokens": 5})
    assert update.settings == Settings()
    assert "unknown setting swiftguard.maxTokens" in update.errors[0]


def test_booleans_are_not_integers_and_ranges_hold():
    update = apply_settings(Settings(), {"maxNewTokens": True, "contextTokens": 10})
    assert update.settings == Settings()
    assert len(update.errors) == 2


def test_non_object_and_null():
    assert apply_settings(Settings(), None).settings == Settings()
    assert apply_settings(Settings(), [1, 2]).errors == ["settings must be a JSON object"]


def test_model_empty_string_means_default():
    assert apply_settings(Settings(model="x"), {"model": ""}).settings.model is None
