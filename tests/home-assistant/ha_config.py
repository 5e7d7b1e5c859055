#!/usr/bin/env python3
"""Writes a Home Assistant 2024.1 config directory that needs no onboarding, for the discovery
test: the MQTT integration pointed at the test's mosquitto, and an admin's long-lived access
token (a JWT signed with the refresh token's key, as Home Assistant makes them) in token.txt.

Standard library only. The directory is wiped first.

Usage: ha_config.py --config DIR --http-port PORT --mqtt-port PORT
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import secrets
import shutil
import time
import uuid
from datetime import datetime, timezone

LLAT_SECONDS = 10 * 365 * 24 * 3600  # HA's default LLAT lifespan (3650 days)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def make_jwt(refresh_token_id: str, jwt_key: str) -> str:
    """Same as hass.auth.async_create_access_token(): HS256, iss=refresh token id."""
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT"}
    payload = {"iss": refresh_token_id, "iat": now, "exp": now + LLAT_SECONDS}
    signing_input = (
        b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(payload, separators=(",", ":")).encode())
    )
    sig = hmac.new(jwt_key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(sig)


def store(key: str, data: dict, version: int = 1, minor_version: int = 1) -> dict:
    return {"version": version, "minor_version": minor_version, "key": key, "data": data}


CONFIGURATION_YAML = """\
# Home Assistant core with what the discovery test reads: the REST API, the registries and
# MQTT. No default_config: it pulls in the frontend, the recorder and onboarding.
homeassistant:
  name: IntegrationTest
  latitude: 52.0
  longitude: 13.0
  elevation: 0
  unit_system: metric
  time_zone: UTC
  currency: EUR
  country: DE

http:
  server_host: 127.0.0.1
  server_port: {http_port}

api:            # REST: /api/, /api/states, ...
websocket_api:  # /api/websocket
config:         # websocket config/entity_registry/list, config/device_registry/list

logger:
  default: warning
  logs:
    homeassistant.components.mqtt: info
    homeassistant.bootstrap: info
    homeassistant.setup: info
"""


def generate(config_dir: str, http_port: int, mqtt_port: int) -> None:
    if os.path.isdir(config_dir):
        shutil.rmtree(config_dir)
    storage = os.path.join(config_dir, ".storage")
    os.makedirs(storage)

    with open(os.path.join(config_dir, "configuration.yaml"), "w") as f:
        f.write(CONFIGURATION_YAML.format(http_port=http_port))

    now_iso = datetime.now(timezone.utc).isoformat()
    user_id = uuid.uuid4().hex
    rt_id = uuid.uuid4().hex
    jwt_key = secrets.token_hex(64)
    auth = store(
        "auth",
        {
            "users": [
                {
                    "id": user_id,
                    "group_ids": ["system-admin"],
                    "is_owner": True,
                    "is_active": True,
                    "name": "tester",
                    "system_generated": False,
                    "local_only": False,
                }
            ],
            "groups": [
                {"id": "system-admin", "name": "Administrators"},
                {"id": "system-users", "name": "Users"},
                {"id": "system-read-only", "name": "Read Only"},
            ],
            "credentials": [],
            "refresh_tokens": [
                {
                    "id": rt_id,
                    "user_id": user_id,
                    "client_id": None,
                    "client_name": "integration-test",
                    "client_icon": None,
                    "token_type": "long_lived_access_token",
                    "created_at": now_iso,
                    "access_token_expiration": float(LLAT_SECONDS),
                    "token": secrets.token_hex(64),
                    "jwt_key": jwt_key,
                    "last_used_at": None,
                    "last_used_ip": None,
                    "credential_id": None,
                    "version": "2024.1.6",
                }
            ],
        },
    )
    entries = store(
        "core.config_entries",
        {
            "entries": [
                {
                    "entry_id": uuid.uuid4().hex,
                    "version": 1,
                    "minor_version": 1,
                    "domain": "mqtt",
                    "title": "127.0.0.1",
                    "data": {
                        "broker": "127.0.0.1",
                        "port": mqtt_port,
                        "discovery": True,
                        "discovery_prefix": "homeassistant",
                    },
                    "options": {},
                    "pref_disable_new_entities": False,
                    "pref_disable_polling": False,
                    "source": "user",
                    "unique_id": None,
                    "disabled_by": None,
                }
            ]
        },
    )
    for key, content in (
        ("auth", auth),
        ("core.config_entries", entries),
    ):
        path = os.path.join(storage, key)
        with open(path, "w") as f:
            json.dump(content, f, indent=2)
        os.chmod(path, 0o600)

    token = make_jwt(rt_id, jwt_key)
    with open(os.path.join(config_dir, "token.txt"), "w") as f:
        f.write(token + "\n")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--mqtt-port", type=int, required=True)
    a = p.parse_args()
    generate(a.config, a.http_port, a.mqtt_port)
    print(f"config written to {a.config} (token in {a.config}/token.txt)")


if __name__ == "__main__":
    main()
