"""One click command per module; `sase_deploy.cli` assembles them explicitly."""
