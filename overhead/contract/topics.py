"""Broker topic names of the pipeline: the detector publishes crops, classifier workers publish
results, crops no worker can process are parked in the crops' dead-letter topic."""
from __future__ import annotations

CROPS = "crops"
RESULTS = "results"
DEAD_LETTER_SUFFIX = ".dlq"


def dead_letter_topic(topic: str) -> str:
    return f"{topic}{DEAD_LETTER_SUFFIX}"


CROPS_DLQ = dead_letter_topic(CROPS)
PIPELINE_TOPICS = (CROPS, RESULTS, CROPS_DLQ)   # the gateway reports their depth
