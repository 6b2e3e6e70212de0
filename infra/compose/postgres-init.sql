-- Run once by the postgres image on an empty data volume: one database per service, owned by the compose user.
create database airflow owner tokenrec;
create database mlflow owner tokenrec;
