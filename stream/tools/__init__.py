"""Operator and developer tools around the processor, not stages of it: the benchmark, the demo, replay,
the local Kafka broker, the worker-process harness, sample post streams, PromQL checks and profiling."""
