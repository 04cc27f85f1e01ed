"""The ANP adapter's options (``ANPOptions``) and the host the gateway's did:wba is served at."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gateway.core.runtime import Runtime
from gateway.core.settings import load_settings
from protocols.anp.auth import Resolve


@dataclass
class ANPOptions:
    """Settings of the ANP face and connectors (``routes(options)``/``mount(app, options)``);
    ``from_env`` also reads the scalar ones from ``INTERLACE_ANP_<FIELD>``."""

    public_host: str | None = None  # host[:port] in the gateway's did:wba; default: the request's Host
    public_url: str | None = None  # base URL in ad.json/OpenRPC; default: config.public_url, else the request's
    resolve: Resolve | None = None  # caller DID -> DID document; default: HTTPS (cached either way)
    window_s: int = 300  # a signature's created/timestamp may be this old ...
    skew_s: int = 60  # ... and this far in the future
    token_ttl_s: int = 3600  # lifetime of the bearer token issued after a DIDWba success
    did_cache_ttl_s: float = 300.0
    callers: str | None = None  # file of caller DIDs (one per line) let in on /anp; unset: any did:wba
    wait_s: float | None = None  # send_message waits this long by default (config.wait_timeout_s)
    max_batch: int = 32
    name: str = "Interlace gateway"
    description: str = "Agent interoperability gateway: routes ANP JSON-RPC calls to the agents it knows."

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ANPOptions:
        return load_settings(cls, "INTERLACE_ANP_", overrides, env)


def outbound_host(options: ANPOptions, rt: Runtime) -> str:
    """The host of the did:wba outbound calls are signed as: the public host, else the public
    URL's, else ``localhost:<port>`` (remotes must be able to fetch its document there)."""
    if options.public_host:
        return options.public_host
    configured = options.public_url or rt.config.public_url
    if configured:
        return urlsplit(configured).netloc
    return f"localhost:{rt.config.port}"
