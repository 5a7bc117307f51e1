"""`rayorch dev`: the production topology (Ray nodes, S3, MLflow server, PostgreSQL) on one machine."""
