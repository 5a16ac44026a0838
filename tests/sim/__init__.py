"""Simulators of the outside parties, speaking their contracts exactly; used by tests and the demo."""
