"""Integrations with web frameworks (`durable.contrib.django`). Each is a
surface over `DurableClient`: none imports the engine or the worker."""
