"""Deliveries of outbox items: the worker that claims and settles, the calls, the delivery process."""
