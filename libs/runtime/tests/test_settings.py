"""Settings come from FLOTILLA_<SERVICE>_* variables and every error names the variable to fix."""

import pytest

from flotilla_runtime.errors import SettingsError
from flotilla_runtime.settings import ServiceSettings, env_prefix, load_settings


class OrchestratorSettings(ServiceSettings, kw_only=True, frozen=True):
    max_rollouts: int = 4


def test_prefix_turns_dashes_into_underscores() -> None:
    assert env_prefix("upgrade-orchestrator") == "FLOTILLA_UPGRADE_ORCHESTRATOR_"


def test_defaults_fill_state_dir_and_instance_id() -> None:
    settings = load_settings(OrchestratorSettings, "upgrade-orchestrator", environ={})
    assert settings.state_dir.endswith("upgrade-orchestrator")
    assert settings.instance_id
    assert settings.max_rollouts == 4


def test_service_variable_is_converted_to_its_type() -> None:
    env = {"FLOTILLA_UPGRADE_ORCHESTRATOR_MAX_ROLLOUTS": "9", "FLOTILLA_UPGRADE_ORCHESTRATOR_HTTP_PORT": "8080"}
    settings = load_settings(OrchestratorSettings, "upgrade-orchestrator", environ=env)
    assert (settings.max_rollouts, settings.http_port) == (9, 8080)


def test_shared_variable_applies_unless_the_service_one_is_set() -> None:
    shared = load_settings(ServiceSettings, "heartbeat", environ={"FLOTILLA_NATS_URL": "nats://a:1"})
    assert shared.nats_url == "nats://a:1"
    own = load_settings(
        ServiceSettings,
        "heartbeat",
        environ={"FLOTILLA_NATS_URL": "nats://a:1", "FLOTILLA_HEARTBEAT_NATS_URL": "nats://b:2"},
    )
    assert own.nats_url == "nats://b:2"


def test_bad_value_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="FLOTILLA_UPGRADE_ORCHESTRATOR_MAX_ROLLOUTS='many'"):
        load_settings(
            OrchestratorSettings, "upgrade-orchestrator", environ={"FLOTILLA_UPGRADE_ORCHESTRATOR_MAX_ROLLOUTS": "many"}
        )


def test_unknown_variable_is_refused_with_the_known_ones() -> None:
    with pytest.raises(SettingsError, match="unknown setting FLOTILLA_HEARTBEAT_INTERVL"):
        load_settings(ServiceSettings, "heartbeat", environ={"FLOTILLA_HEARTBEAT_INTERVL": "3"})


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("FLOTILLA_REGISTRATION_NATS_URL", "localhost:4222", "must start with nats://"),
        ("FLOTILLA_REGISTRATION_LOG_FORMAT", "xml", "json or text"),
        ("FLOTILLA_REGISTRATION_TRACE_SAMPLE_RATIO", "2", "between 0 and 1"),
        ("FLOTILLA_REGISTRATION_HTTP_PORT", "70000", "between 0 and 65535"),
    ],
)
def test_out_of_range_values_are_refused(variable: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(ServiceSettings, "registration", environ={variable: value})


def test_stream_replicas_is_shared_and_checked() -> None:
    assert load_settings(ServiceSettings, "heartbeat", environ={"FLOTILLA_STREAM_REPLICAS": "3"}).stream_replicas == 3
    with pytest.raises(SettingsError, match="STREAM_REPLICAS must be 1, 3 or 5"):
        load_settings(ServiceSettings, "heartbeat", environ={"FLOTILLA_STREAM_REPLICAS": "2"})
