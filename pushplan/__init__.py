"""pushplan: self-hosted push personalisation. The shared kernel: settings, domain types, the CLI."""

__version__ = "0.1.0"
