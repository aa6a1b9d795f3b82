"""pushplan: self-hosted push personalisation. The kernel: settings, domain types, caps, windows, the clock,
the database (docs/architecture.md)."""

__version__ = "0.1.0"
