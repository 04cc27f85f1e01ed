"""The A2A adapter: the gateway's inbound A2A face (cards, JSON-RPC, HTTP+JSON; 1.0 and 0.3) and
the outbound connector that runs tasks on remote A2A agents.

Surface (alike in every adapter): ``routes(options)``, ``mount(app, options)``, ``Connector``
(``A2AConnector``, built by the gateway with ``Connector.from_record(record, runtime)``) and
``A2AOptions`` (``A2AOptions.from_env()``: ``INTERLACE_A2A_<FIELD>``).

Modules: ``wire`` (canonical <-> A2A dialects, with the mapping table), ``errors``, ``card``
(cards, signing, caching), ``service`` (the operations, ``A2AOptions``, ``A2ACall``, routing
rule), ``jsonrpc`` and ``rest`` (the bindings), ``push`` (push notifications), ``server``
(routes), ``client`` and ``connector`` (outbound).
"""

from protocols.a2a.connector import A2AConnector as Connector
from protocols.a2a.server import mount, routes
from protocols.a2a.service import A2AOptions

__all__ = ["Connector", "A2AOptions", "mount", "routes"]
