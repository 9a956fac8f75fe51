-- One Postgres for the stack: Dagster's run/event/schedule storage and MLflow's tracking + registry store.
CREATE DATABASE dagster;
CREATE DATABASE mlflow;
