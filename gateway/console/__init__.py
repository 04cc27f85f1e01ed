"""The operator's console at ``/ui``: server-rendered pages (Jinja2, shipped in the package, no
build step) with one small script for what is live and for actions.

Pages: overview (node, backend, cluster, recent failures), agents (every record the visitor may
call, with lease, replicas, reachability, latency, load, queue depth and MCP tool drift; revoke
a DID, re-pin a drifted tool), tasks (filterable list, refreshed every few seconds; a task's
history, artifacts with file downloads, route reason and its events as they happen over SSE;
cancel, continue), routing (the ``POST /route`` explainer), playground (send text, JSON or a
file to an agent and watch it stream), MCP upstreams (era, tools, prompts, resources, pins)
and metrics (tasks/s, p50/p99 latency and queue depth per agent over the last minutes, sampled
from the node's own metrics by ``series.Sampler``).

Rights are the gateway's: every read goes through ``Runtime.acting_for(visitor)``, so a visitor
sees the agents the policy lets it call and its own tasks (an admin, everything); revoking and
re-pinning need the admin group (and the policy's ``admin`` action). Who the visitor is and how
state changes are protected from forgery: ``session``. State changes are audited.
"""

from gateway.console.views import Console

__all__ = ["Console"]
