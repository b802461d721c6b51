"""Test support: the kube-apiserver fixture's server, the rendered chart and installed platform
(cluster), the NetworkPolicy evaluator, synthetic A/B data. Nothing here is collected as a test."""
