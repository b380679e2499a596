"""Airflow wiring helpers: the upload trigger and sensor, and operator builders per execution mode.

Nothing here imports heavy modules at import time: DAG files import it on every parse.
"""
