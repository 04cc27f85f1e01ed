"""Gateway-to-gateway membership: SWIM + Lifeguard.

* `swim`: the transport-free state machine (`SwimNode`, `SwimConfig`, `Delegate` hooks);
* `messages`: the JSON wire messages and packet encoding;
* `queue`: the retransmit-limited broadcast queue used for piggybacked dissemination;
* `sim`: a deterministic in-process simulator and the experiments the tests and bench share.
"""
