"""Seeded token-stream tasks: the controlled lifecycle suite and the 2M-token stress scenarios.

``vocab.Codebook`` (token ids -> unit embeddings), ``stream.StreamBatch`` (lazily generated
streams with labels), ``controlled.generate`` (the six controlled tasks), ``stress.scenario_batch``
(the five stress scenarios) and ``runner.run_method`` (feed a stream to a method and score it).
"""
