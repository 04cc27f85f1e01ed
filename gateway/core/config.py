"""Gateway configuration: CLI flags win over ``INTERLACE_*`` environment variables, which win
over the defaults below. Each field's environment variable is ``INTERLACE_`` + its upper-case name.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.core.settings import load_settings

if TYPE_CHECKING:
    from gateway.core.auth import AuthMode


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
    # Slow and greedy clients (gateway/serving.py; request bodies: gateway/core/http.py BodyGuard)
    header_timeout_s: float = 10.0  # a request's head must arrive within this (408, closed)
    max_header_bytes: int = 32 * 1024  # ... and be no larger (431, closed)
    body_timeout_s: float = 30.0  # a request's body must arrive within this of its head (408, closed)
    max_buffered_body_bytes: int = 64 * 1024 * 1024  # bodies held at once, past 64 KiB each (503 past it)
    max_connections: int = 1000  # past it, a new connection closes the one idle longest (503 if none is idle)
    keepalive_timeout_s: float = 5.0  # an idle keep-alive connection is closed after this
    keepalive_max_requests: int = 1000  # requests served on one connection before it is closed
    # Per-principal quotas on this node (gateway/core/quotas.py): 429 with Retry-After past them
    quotas: bool = True  # off: no quotas at all (benchmarks)
    quota_tasks_per_s: float = 50.0  # tasks a caller may submit or continue a second ...
    quota_task_burst: int = 100  # ... in bursts of up to this many
    quota_concurrent_tasks: int = 100  # a caller's tasks not yet final
    quota_mcp_sessions: int = 100  # a caller's open MCP sessions
    quota_sse_streams: int = 100  # a caller's open event streams
    shutdown_grace_s: float = 10.0
    worker_token: str | None = None  # required on /bus from non-loopback clients
    worker_token_file: str | None = None  # ... read from this file instead (a flag is world-readable)
    log_level: str = "info"
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (comma-separated addresses or
    # "*"); unset: none, so no client can choose the address its rate limit is keyed on.
    forwarded_allow_ips: str | None = None
    # Registry and identity
    network: str = "interlace"  # records and gossip of another network are refused
    node_key: str | None = None  # this node's Ed25519 key file; default node.key in data_dir
    data_dir: str | None = None  # holds node.key (gateway/core/node_identity.py); default the user's data home
    skew_s: int = 300  # clock-skew window for issued_at
    lease_s: int = 60  # lease of the records of in-process agents
    max_lease_s: int = 24 * 3600  # a record asking a longer lease (expires_at - issued_at) is refused
    admission: str | None = None  # open | token | allowlist; open only by default on loopback
    registration_token: str | None = None
    registration_token_file: str | None = None  # the token, read from this file
    allowlist: str | None = None  # file of DIDs (one per line) allowed to register
    registry_write_rate: float = 5.0  # registry writes per second per client ...
    registry_write_burst: int = 20  # ... with this burst
    max_record_bytes: int = 64 * 1024
    embeddings: bool = False  # rank by MiniLM embeddings too (needs the 'embeddings' extra)
    # Gossip federation (gateway/cluster.py)
    gossip: bool = True  # run SWIM membership and registry anti-entropy with other nodes
    join: str | None = None  # seed nodes, "host:port,host:port"
    trust: str | None = None  # file of node DIDs (one per line) allowed to gossip; unset: any (loopback only)
    public_url: str | None = None  # how peers reach this node; default http://host:port
    gossip_profile: str = "lan"  # lan | local | fast (timings, registry/gossip/transport.py)
    gossip_faults: bool = False  # test-only: POST /gossip/faults drops packets (partitions)
    # Who is calling (gateway/core/auth.py)
    auth_issuer: str | None = None  # OIDC issuer whose JWTs are accepted (discovery -> jwks_uri)
    auth_audience: str | None = None  # the audience tokens must name; default: the public URL
    api_keys: str | None = None  # YAML file: a list of {principal, key_sha256, groups}
    allow_anonymous: bool = False  # callers without credentials are let in (see effective_auth)
    admin_group: str = "admin"  # members see and manage every task
    audit_log: str | None = None  # JSON-lines file for the audit log (gateway/core/audit.py); unset: the log
    policy: str | None = None  # YAML file of allow/deny/require rules (gateway/core/policy.py); reloaded on change
    # Where the gateway may connect out (gateway/core/egress.py): networks, host names, "loopback",
    # "private" or "none"; unset: loopback on a loopback bind, else only the public internet.
    egress_allow: tuple[str, ...] | None = None
    # YAML file of the upstream MCP servers to federate, HTTP and stdio (protocols/mcp/upstreams_file.py);
    # reloaded on change. Env INTERLACE_MCP_UPSTREAMS_FILE, as MCPOptions.upstreams_file.
    mcp_upstreams_file: str | None = None

    def read_secret_files(self) -> None:
        """Fill the tokens from their ``*_file`` settings (``load`` does this once)."""
        for field in ("registration_token", "worker_token"):
            path = getattr(self, f"{field}_file")
            if path is None:
                continue
            if getattr(self, field) is not None:
                flag = field.replace("_", "-")
                raise ValueError(f"give the {flag} once: as --{flag}-file or as a value, not both")
            setattr(self, field, read_secret(path))

    def effective_auth(self) -> AuthMode:
        """How callers are authenticated; a ValueError for a public bind that lets anyone in unasked.

        Credentials configured (issuer or API keys): ``required``, or ``optional`` with
        ``--allow-anonymous``. Nothing configured: ``local`` (everyone is the local principal with
        every right) on a loopback bind or with ``--allow-anonymous``; refused on any other bind.
        """
        from gateway.core.auth import AuthMode  # here: PyJWT and cryptography load only when needed

        if self.auth_issuer or self.api_keys:
            return AuthMode.OPTIONAL if self.allow_anonymous else AuthMode.REQUIRED
        if self.allow_anonymous or is_loopback(self.host):
            return AuthMode.LOCAL
        raise ValueError(
            f"binding to {self.host} needs authentication: --auth-issuer URL or --api-keys FILE "
            "(or --allow-anonymous to let every caller in with every right)"
        )

    def effective_audience(self) -> str | None:
        """The audience JWTs must name: --auth-audience, else the public URL, else http://host:port."""
        if self.auth_audience or self.public_url:
            return (self.auth_audience or self.public_url or "").rstrip("/")
        if not self.auth_issuer:
            return None
        if not is_loopback(self.host):
            raise ValueError(
                "--auth-issuer on a public bind needs --auth-audience or --public-url: "
                "the URL that tokens are issued for"
            )
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

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
        config = load_settings(cls, "INTERLACE_", flags, env)
        config.read_secret_files()
        return config


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_secret(path: str) -> str:
    """A secret from a file (its first line, stripped); a ValueError that names the file otherwise."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"cannot read the secret file {path}: {exc.strerror}") from None
    secret = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not secret:
        raise ValueError(f"the secret file {path} is empty")
    return secret
