"""Protocol adapters: one package per protocol (mcp, a2a, acp, anp); adapters never import each other."""
