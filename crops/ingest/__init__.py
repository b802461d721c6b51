"""Importers: real search and recommendation logs and graded collections into the contract
tables (`crops ingest FORMAT SRC --out DIR`)."""
