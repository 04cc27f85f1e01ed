"""The ``interlace`` command line.

interlace serve [--host H] [--port P] [--redis URL] [--no-echo] ...
interlace worker echo [--gateway URL | --redis URL] [--concurrency N] [--name NAME]
interlace worker model --model PATH [--device auto|cuda|cpu] [--backend transformers|llamacpp] ...
interlace keys new|show FILE
interlace agent register|list|show|deregister|revoke|unrevoke|revocations ...
interlace mcp stdio --gateway URL [--token-file FILE]
interlace version
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from agents.serve import add_bus_flags
from gateway import __version__, agent_cli
from gateway.core import audit, logs
from gateway.core.config import Config, read_secret
from gateway.core.node_identity import node_identity
from registry.identity import Identity, IdentityError

log = logging.getLogger("interlace.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interlace", description="Agent interoperability gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a gateway node")
    serve.add_argument("--host", help="bind address (default 127.0.0.1; env INTERLACE_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8080; env INTERLACE_PORT)")
    serve.add_argument(
        "--redis", dest="redis_url", metavar="URL", help="Redis URL for the shared bus (env INTERLACE_REDIS_URL)"
    )
    serve.add_argument("--node-id", help="this node's name in logs and metrics")
    serve.add_argument(
        "--no-echo", dest="echo", action="store_const", const=False, help="do not run the in-process echo agent"
    )
    serve.add_argument("--max-body-bytes", type=int, help="largest request body accepted (default 4 MiB)")
    slow = serve.add_argument_group("slow and greedy clients")
    slow.add_argument("--header-timeout-s", type=float, help="a request's head must arrive within this (default 10)")
    slow.add_argument("--max-header-bytes", type=int, help="largest request head accepted (default 32 KiB)")
    slow.add_argument(
        "--body-timeout-s", type=float, help="a request's body must arrive within this of its head (default 30)"
    )
    slow.add_argument(
        "--max-buffered-body-bytes",
        type=int,
        help="request bodies held in memory at once, past 64 KiB each (default 64 MiB)",
    )
    slow.add_argument(
        "--max-connections",
        type=int,
        help="open connections; past it the one idle longest is closed (default 1000)",
    )
    slow.add_argument("--keepalive-timeout-s", type=float, help="idle keep-alive connections close after (default 5)")
    slow.add_argument("--keepalive-max-requests", type=int, help="requests served per connection (default 1000)")
    quotas = serve.add_argument_group("per-caller quotas (429 with Retry-After past them)")
    quotas.add_argument(
        "--no-quotas", dest="quotas", action="store_const", const=False, help="no quotas at all (benchmarks)"
    )
    quotas.add_argument("--quota-tasks-per-s", type=float, help="tasks a caller may start a second (default 50)")
    quotas.add_argument("--quota-task-burst", type=int, help="... in bursts of up to (default 100)")
    quotas.add_argument("--quota-concurrent-tasks", type=int, help="a caller's tasks not yet final (default 100)")
    quotas.add_argument("--quota-mcp-sessions", type=int, help="a caller's open MCP sessions (default 100)")
    quotas.add_argument("--quota-sse-streams", type=int, help="a caller's open event streams (default 100)")
    serve.add_argument(
        "--visibility-timeout-ms", type=int, help="how long a silent worker keeps a task before redelivery"
    )
    serve.add_argument("--max-queue", type=int, help="bound on each agent's queue")
    serve.add_argument(
        "--worker-token",
        help="token workers must present on /bus (env INTERLACE_WORKER_TOKEN; "
        "a flag is visible to every local user: prefer --worker-token-file)",
    )
    serve.add_argument("--worker-token-file", metavar="FILE", help="read the worker token from this file")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--forwarded-allow-ips",
        metavar="IPS",
        help="proxies whose X-Forwarded-For is believed, comma-separated (default: none)",
    )
    serve.add_argument("--network", help="registry network id (default interlace)")
    serve.add_argument(
        "--node-key", metavar="FILE", help="this node's key file (default: node.key in --data-dir, made on first start)"
    )
    serve.add_argument(
        "--data-dir",
        metavar="DIR",
        help="where this node keeps its key, node.key (default $XDG_DATA_HOME/interlace or "
        "~/.local/share/interlace; env INTERLACE_DATA_DIR)",
    )
    serve.add_argument(
        "--max-lease",
        dest="max_lease_s",
        type=int,
        metavar="SECONDS",
        help="longest lease a record may ask (expires_at - issued_at); longer ones are refused (default 86400)",
    )
    serve.add_argument(
        "--admission",
        choices=["open", "token", "allowlist"],
        help="who may register agents (default: open on loopback, else required)",
    )
    serve.add_argument(
        "--registration-token",
        help="token for --admission token (env INTERLACE_REGISTRATION_TOKEN; "
        "a flag is visible to every local user: prefer --registration-token-file)",
    )
    serve.add_argument("--registration-token-file", metavar="FILE", help="read the registration token from this file")
    serve.add_argument("--allowlist", metavar="FILE", help="DIDs allowed to register, one per line")
    serve.add_argument("--join", metavar="HOST:PORT,...", help="seed nodes of the federation to join")
    serve.add_argument(
        "--trust",
        metavar="FILE",
        help="node DIDs allowed to gossip, one per line (required to gossip on a non-loopback bind; "
        "default there: any node of the network)",
    )
    serve.add_argument(
        "--public-url", metavar="URL", help="the address peers reach this node at (default http://host:port)"
    )
    serve.add_argument("--gossip-profile", choices=["lan", "local", "fast"], help="gossip timings (default lan)")
    serve.add_argument(
        "--no-gossip", dest="gossip", action="store_const", const=False, help="do not federate with other nodes"
    )
    auth = serve.add_argument_group("who may call (required on a non-loopback bind)")
    auth.add_argument("--auth-issuer", metavar="URL", help="accept JWTs from this OIDC issuer (keys via discovery)")
    auth.add_argument("--auth-audience", metavar="URL", help="the audience tokens must name (default: --public-url)")
    auth.add_argument(
        "--api-keys", metavar="FILE", help="accept the API keys of this YAML file (hashed; re-read on SIGHUP)"
    )
    auth.add_argument(
        "--allow-anonymous",
        action="store_const",
        const=True,
        help="let callers without credentials in (with nothing else configured: with every right)",
    )
    auth.add_argument("--admin-group", metavar="NAME", help="group whose members manage every task (default admin)")
    auth.add_argument("--audit-log", metavar="FILE", help="append the audit log here (JSON lines; default: the log)")
    auth.add_argument(
        "--policy",
        metavar="FILE",
        help="who may see and do what: a YAML file of allow/deny/require rules, reloaded on change "
        "and on SIGHUP (env INTERLACE_POLICY)",
    )
    serve.add_argument(
        "--egress-allow",
        metavar="CIDR|HOST,...",
        type=lambda text: tuple(x.strip() for x in text.split(",") if x.strip()),
        help="internal destinations the gateway may connect to (agents, upstreams, webhooks, peers): "
        "networks, host names, 'loopback', 'private' or 'none' (default: loopback on a loopback bind, "
        "else only public addresses; env INTERLACE_EGRESS_ALLOW)",
    )
    serve.add_argument(
        "--mcp-upstreams",
        dest="mcp_upstreams_file",
        metavar="FILE",
        help="upstream MCP servers to federate, HTTP ({name, url, headers}) and stdio ({name, command, env, "
        "env_passthrough, cwd, restart}): a YAML file, reloaded on change (env INTERLACE_MCP_UPSTREAMS_FILE)",
    )
    serve.add_argument(
        "--gossip-faults", action="store_const", const=True, help=argparse.SUPPRESS
    )  # tests: POST /gossip/faults

    worker = sub.add_parser("worker", help="run an agent worker")
    kinds = worker.add_subparsers(dest="kind", required=True)
    echo = kinds.add_parser("echo", help="the example echo agent")
    add_bus_flags(echo)
    echo.add_argument("--concurrency", type=int, default=16, help="tasks handled at once")
    echo.add_argument(
        "--name", default="echo", help="the agent's name (default echo; a name belongs to the first DID that takes it)"
    )
    from agents.model.cli import add_parser as add_model_worker  # light: torch loads only when run

    add_model_worker(kinds)

    mcp = sub.add_parser("mcp", help="MCP tools").add_subparsers(dest="kind", required=True)
    bridge = mcp.add_parser("stdio", help="a stdio MCP server relaying to a gateway's /mcp (for desktop hosts)")
    bridge.add_argument("--gateway", required=True, metavar="URL", help="the gateway (its /mcp is used)")
    bridge.add_argument(
        "--token-file", metavar="FILE", help="the caller's bearer token (API key or JWT); default env INTERLACE_TOKEN"
    )

    sub.add_parser("version", help="print the version")
    agent_cli.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "version":
        print(f"interlace {__version__}")
        return 0
    if args.command == "mcp":
        from gateway import mcp_bridge

        logs.setup("info")  # on stderr: stdout is the MCP stream
        try:
            return asyncio.run(mcp_bridge.serve(args.gateway, args.token_file))
        except ValueError as exc:
            print(f"interlace: {exc}", file=sys.stderr)
            return 2
    if args.command in ("keys", "agent"):
        token, token_file = (
            os.environ.get("INTERLACE_REGISTRATION_TOKEN"),
            os.environ.get("INTERLACE_REGISTRATION_TOKEN_FILE"),
        )
        try:
            token = token or (read_secret(token_file) if token_file else None)
        except ValueError as exc:
            print(f"interlace: {exc}", file=sys.stderr)
            return 2
        return agent_cli.run(args, token)
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "kind")}
    try:
        config = Config.load(flags)
        if args.command == "serve":
            auth_mode = config.effective_auth()  # first: a public bind without authentication is the worst
            config.effective_audience()
            if config.api_keys:
                from gateway.core.auth import load_api_keys

                load_api_keys(config.api_keys)
            if config.policy:
                from gateway.core.policy import load_policy

                load_policy(config.policy)
            config.effective_admission()
            if config.mcp_upstreams_file:
                from protocols.mcp.upstreams_file import load_upstreams

                load_upstreams(config.mcp_upstreams_file)  # a broken upstream file is refused here
            from gateway.core.egress import Egress

            Egress.from_config(config)  # a malformed --egress-allow is refused here
            # The node key (made on the first start, so that `interlace keys show` can name this
            # node's DID for the trust files even when the gossip settings are refused next).
            node_identity(config)
            from gateway.cluster import check_config  # gossip settings: fail before starting

            check_config(config)
        elif getattr(args, "key", None):
            # A key file that is missing, malformed or readable by others is refused here, before
            # anything starts (for a model worker: before minutes of model loading).
            Identity.load(args.key)
    except (ValueError, IdentityError) as exc:
        print(f"interlace: {exc}", file=sys.stderr)
        return 2
    logs.setup(config.log_level)
    if args.command == "serve" and config.audit_log:
        audit.to_file(config.audit_log)
    if args.command == "serve":
        warn_about_exposure(args, config, auth_mode)
        return serve(config)
    return asyncio.run(run_worker(args, config))


def warn_about_exposure(args: argparse.Namespace, config: Config, auth_mode) -> None:
    """Warnings at start for what an operator should know: secrets on the command line, anonymous callers."""
    for flag in ("registration_token", "worker_token"):
        if getattr(args, flag, None):
            name = flag.replace("_", "-")
            log.warning(
                f"--{name} puts a secret on the command line, where every local user can read it: "
                f"use --{name}-file or INTERLACE_{flag.upper()}"
            )
    if config.allow_anonymous:
        log.warning(
            "--allow-anonymous: callers without credentials are let in"
            + (" with every right" if auth_mode == "local" else " as 'anonymous'"),
            extra={"host": config.host, "auth": str(auth_mode)},
        )


def serve(config: Config) -> int:
    from gateway.app import create_app

    return serve_app(create_app(config), config)


def serve_app(app, config: Config) -> int:
    """Run ``app`` under uvicorn as ``interlace serve`` does (the benchmarks use it too)."""
    import gc

    from gateway.serving import build_server

    server = build_server(app, config)
    # What start-up built (modules, classes, schemas) lives as long as the process: keep it out
    # of the collector's full passes, which would otherwise re-scan ~70k objects each time.
    gc.collect()
    gc.freeze()
    server.run()
    return 0 if server.started else 1


async def run_worker(args: argparse.Namespace, config: Config) -> int:
    if args.kind == "model":
        from agents.model.cli import run as run_model_worker

        return await run_model_worker(args, config)
    from agents.echo import EchoWorker
    from agents.serve import serve_worker

    worker = EchoWorker()
    worker.agent, worker.concurrency = args.name, args.concurrency
    return await serve_worker(worker, args, config)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
