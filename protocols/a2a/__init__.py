"""The A2A adapter: the gateway's inbound A2A face (cards, JSON-RPC, HTTP+JSON; 1.0 and 0.3) and
the outbound connector that runs tasks on remote A2A agents.

Modules: ``wire`` (canonical <-> A2A dialects, with the mapping table), ``errors``, ``card``
(cards, signing, caching), ``service`` (the operations, routing rule), ``jsonrpc`` and ``rest``
(the bindings), ``push`` (push notifications), ``server`` (routes), ``client`` and ``connector``
(outbound).
"""

from protocols.a2a.connector import A2AConnector
from protocols.a2a.push import PushPolicy
from protocols.a2a.server import a2a_routes, mount_a2a
from protocols.a2a.service import A2AOptions

__all__ = ["A2AConnector", "A2AOptions", "PushPolicy", "a2a_routes", "mount_a2a"]
