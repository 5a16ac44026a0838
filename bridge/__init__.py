"""messenger-bridge: a company's own messenger ↔ a live chat, with durable ordered delivery."""
