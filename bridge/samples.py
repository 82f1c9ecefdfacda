"""`leadbridge send-sample`: sign a mapping's sample payload and POST it, a first webhook.

Signs for Standard Webhooks (the quickstart's `website-contact`) and Meta Lead Ads (whose sample
becomes a lead in sandbox mode through the sandbox's Graph API stand-in); sends `none` as it is.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import httpx

from bridge.errors import ConfigError
from bridge.mapping import load_mappings
from bridge.providers.base import secrets_of
from bridge.settings import Settings


def _sample_path(settings: Settings, name: str) -> Path:
    folder = settings.mappings_path if settings.mappings_path.is_dir() else settings.mappings_path.parent
    return folder / "samples" / f"{name}.json"


def send_sample(
    name: str, settings: Settings, environ: Mapping[str, str], *, url: str | None, payload: Path | None
) -> int:
    mapping = load_mappings(settings.mappings_path, environ).get(name)
    if mapping is None:
        raise ConfigError(f"no mapping named {name!r} in {settings.mappings_path}")
    path = payload or _sample_path(settings, name)
    try:
        body = path.read_bytes()
    except OSError:
        raise ConfigError(f"no sample payload at {path} (give one with --payload FILE)") from None
    headers = {"content-type": "application/json"}
    options = mapping.provider.options
    if mapping.provider_name == "standard-webhooks":
        secret = options.secret[0] if isinstance(options.secret, list) else options.secret
        raw = secret.get_secret_value()
        key = base64.b64decode(raw.removeprefix("whsec_"))
        msg_id, stamp = f"msg_{uuid.uuid4().hex}", int(time.time())
        digest = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
        headers |= {
            "webhook-id": msg_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": "v1," + base64.b64encode(digest).decode(),
        }
    elif mapping.provider_name == "meta-lead-ads":
        app_secret = secrets_of(options.app_secret)[0]
        headers["x-hub-signature-256"] = "sha256=" + hmac.new(app_secret, body, hashlib.sha256).hexdigest()
    elif mapping.provider_name != "none":
        raise ConfigError(
            "send-sample signs standard-webhooks, meta-lead-ads and none mappings, "
            f"not {mapping.provider_name}"
        )
    base = url or f"http://{settings.host}:{settings.port}"
    target = f"{base.rstrip('/')}/hooks/{name}"
    try:
        response = httpx.post(target, content=body, headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        print(f"leadbridge: error: POST {target}: {reason} (is leadbridge running there?)", file=sys.stderr)
        return 1
    print(f"POST {target} -> {response.status_code} {response.text}")
    return 0 if response.is_success else 1
