"""sandbox: real PostgreSQL clusters for verification, and the local cluster helper that the
embedded default and the tests also use (`sandbox.pgcluster`)."""
