"""Measurement: offline retrieval metrics (`offline`, over a world's or a TREC `collection`),
`crops experiment` (`experiment`), the A/B statistics (`abstats`) and the group-sequential
canary decision (`sequential`), and the diagnostics against the simulator's truth (`truth`,
`curves`, `diagnostics`)."""
