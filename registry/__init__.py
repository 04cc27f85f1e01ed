"""Identities, signed agent records, the registry store, gossip and the capability index."""
