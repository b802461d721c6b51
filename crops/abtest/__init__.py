"""The online A/B test and canary decision, from the platform's logs.

Modules by job: `layout` (where logs live and their tables), `logs` (reading them with data
hygiene), `analyze` (one look per complete day through the `ledger`, the sequential decision),
`report` (ab_report.json's markdown and plots), `arms` and `traffic` (simulated users as a log
source for demos and tests), `simulate` (the simulated run: traffic, then `analyze`). Applying a
decision to the InferenceService lives in `crops.k8s.rollout`.
"""
