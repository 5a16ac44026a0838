"""One module per outside party; each turns its wire format into the bridge's own types and back."""
