"""Gateway configuration: CLI flags win over ``INTERLACE_*`` environment variables, which win
over the defaults below. Each field's environment variable is ``INTERLACE_`` + its upper-case name.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from typing import Any

from gateway.core.settings import load_settings


@dataclasses.dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    redis_url: str | None = None
    node_id: str = dataclasses.field(default_factory=lambda: f"node-{uuid.uuid4().hex[:8]}")
    echo: bool = True  # run the example echo agent in-process
    max_body_bytes: int = 4 * 1024 * 1024
    visibility_timeout_ms: int = 30_000
    max_queue: int = 10_000
    max_deliveries: int = 5
    retention_s: int = 24 * 3600
    wait_timeout_s: float = 30.0  # default for POST /tasks?wait=true
    max_wait_timeout_s: float = 300.0
    sse_max_s: float = 3600.0  # an SSE response is closed after this long
    shutdown_grace_s: float = 10.0
    worker_token: str | None = None  # required on /bus from non-loopback clients
    log_level: str = "info"
    # Registry and identity
    network: str = "interlace"  # records and gossip of another network are refused
    node_key: str | None = None  # this node's Ed25519 key file; a fresh key each start when unset
    skew_s: int = 300  # clock-skew window for issued_at
    lease_s: int = 60  # lease of the records of in-process agents
    admission: str | None = None  # open | token | allowlist; open only by default on loopback
    registration_token: str | None = None
    allowlist: str | None = None  # file of DIDs (one per line) allowed to register
    registry_write_rate: float = 5.0  # registry writes per second per client ...
    registry_write_burst: int = 20  # ... with this burst
    max_record_bytes: int = 64 * 1024
    embeddings: bool = False  # rank by MiniLM embeddings too (needs the 'embeddings' extra)
    # Gossip federation (gateway/cluster.py)
    gossip: bool = True  # run SWIM membership and registry anti-entropy with other nodes
    join: str | None = None  # seed nodes, "host:port,host:port"
    trust: str | None = None  # file of node DIDs (one per line) allowed to gossip; unset: any
    public_url: str | None = None  # how peers reach this node; default http://host:port
    gossip_profile: str = "lan"  # lan | local | fast (timings, registry/gossip/transport.py)
    gossip_faults: bool = False  # test-only: POST /gossip/faults drops packets (partitions)

    def effective_admission(self) -> str:
        """The admission policy in force; ``open`` is only a default for a loopback bind."""
        if self.admission:
            if self.admission not in ("open", "token", "allowlist"):
                raise ValueError(f"admission must be open, token or allowlist, not {self.admission!r}")
            if self.admission == "token" and not self.registration_token:
                raise ValueError("admission 'token' needs a registration token (INTERLACE_REGISTRATION_TOKEN)")
            if self.admission == "allowlist" and not self.allowlist:
                raise ValueError("admission 'allowlist' needs an allowlist file (INTERLACE_ALLOWLIST)")
            return self.admission
        if self.registration_token:
            return "token"
        if self.host in ("127.0.0.1", "localhost", "::1"):
            return "open"
        raise ValueError(
            f"binding to {self.host} needs an admission policy for agent registration: "
            "--admission token with --registration-token, or --admission allowlist with --allowlist"
        )

    @classmethod
    def load(cls, flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> Config:
        return load_settings(cls, "INTERLACE_", flags, env)
