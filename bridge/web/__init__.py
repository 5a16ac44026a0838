"""HTTP handlers: each authenticates, parses through its connector, hands off and answers."""
