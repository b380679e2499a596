"""The embedded stack: local services (S3 server, MLflow, Airflow, Prometheus) under ``SCLAKE_HOME``."""
