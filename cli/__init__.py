"""The entry points on top of every package: the `pushplan` command line (one module per command group,
`cli.main` builds the app) and the demo's tour. They parse arguments, call the packages and print;
the logic lives in the packages below (docs/architecture.md)."""
